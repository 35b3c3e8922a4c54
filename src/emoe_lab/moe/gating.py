"""Gatings that pick the experts of each token, registered under their `gating` option name.

A gating scores the experts of every token and selects them: the top-k experts, or
experts in score order up to a neuron budget. It returns one weight per expert, which is 1
for the selected experts of avg-k and random gating and the renormalised softmax of the
learned router.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError

GATINGS: dict[str, type[Gating]] = {}

BUDGETS = ("experts", "neurons")
ROUTER_INITS = ("centroids", "random")


@dataclass
class Routing:
    selected: torch.Tensor  # [..., E] bool, experts active for each token
    weights: torch.Tensor  # [..., E] weight of each expert's neurons, 0 where not selected
    aux_loss: torch.Tensor | None  # unweighted load-balancing loss, or None when off


def register(cls: type[Gating]) -> type[Gating]:
    GATINGS[cls.name] = cls
    return cls


def build_gating(
    cfg: Any, keys: torch.Tensor, expert_sizes: list[int], top_k: int, budget: str,
    layer: int, seed: int, init_std: float = 0.02,
) -> Gating:
    """Build the gating named by `cfg.name` for one layer whose neurons are already sorted
    into contiguous experts of `expert_sizes`. `keys` [d_ff, d] is that layer's W_in."""
    if cfg.name not in GATINGS:
        raise ConfigError(
            "gating.name", cfg.name, f"one of {', '.join(sorted(GATINGS))}",
            "Pick an option of the gating config group.",
        )
    return GATINGS[cfg.name](cfg, keys, expert_sizes, top_k, budget, layer, seed, init_std)


def select_experts(
    scores: torch.Tensor, top_k: int, budget: str, expert_sizes: torch.Tensor
) -> torch.Tensor:
    """Select experts per token from scores [..., E]; returns a bool mask [..., E].

    budget="experts" takes the `top_k` best experts. budget="neurons" takes experts in score
    order while they fit a budget of top_k * d_ff / E neurons. The expert that crosses the
    budget is taken when that leaves the neuron count closer to the budget (ties: taken),
    and the best expert is always taken, so no token is left without experts.
    """
    num_experts = scores.shape[-1]
    if top_k >= num_experts:
        return torch.ones_like(scores, dtype=torch.bool)
    if budget == "experts":
        chosen = scores.topk(top_k, dim=-1).indices
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, chosen, True)

    limit = top_k * float(expert_sizes.sum()) / num_experts
    order = scores.argsort(dim=-1, descending=True)
    sizes = expert_sizes.to(scores.device, torch.float64)[order]
    after = sizes.cumsum(dim=-1)
    before = after - sizes
    take = (before == 0) | ((before < limit) & (after - limit <= limit - before))
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order, take)


def segment_mean(
    keys: torch.Tensor, expert_sizes: list[int], averaging: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of each expert's key vectors: keys [d_ff, d] -> [E, d]. Equal experts use a
    reshape; unequal ones need `averaging`, the [E, d_ff] matrix of `averaging_matrix`."""
    if len(set(expert_sizes)) == 1:
        return keys.unflatten(0, (len(expert_sizes), expert_sizes[0])).mean(dim=1)
    if averaging is None:
        averaging = averaging_matrix(expert_sizes).to(keys.device)
    return averaging.to(keys.dtype) @ keys


def averaging_matrix(expert_sizes: list[int]) -> torch.Tensor:
    """[E, d_ff] matrix whose row e contains 1/size_e on expert e's (contiguous) neurons."""
    sizes = torch.tensor(expert_sizes)
    expert_of_neuron = torch.repeat_interleave(torch.arange(len(expert_sizes)), sizes)
    matrix = torch.zeros(len(expert_sizes), int(sizes.sum()))
    matrix[expert_of_neuron, torch.arange(matrix.shape[1])] = 1.0 / sizes[expert_of_neuron]
    return matrix


def cv_squared(values: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation; 0 for a single expert or all-zero values."""
    if values.numel() < 2:
        return values.new_zeros(())
    return values.var(unbiased=False) / (values.mean() ** 2 + 1e-10)


class Gating(nn.Module):
    """Base class: scores experts, selects them and weights them.

    Subclasses define `scores`; `unit_weights` is True when selected experts get weight 1
    (avg-k, random) and False for the renormalised softmax of the scores (learned).
    """

    name: ClassVar[str]
    unit_weights: ClassVar[bool] = True

    def __init__(
        self, cfg: Any, keys: torch.Tensor, expert_sizes: list[int], top_k: int, budget: str,
        layer: int, seed: int, init_std: float,
    ) -> None:
        super().__init__()
        self.num_experts = len(expert_sizes)
        self.top_k = top_k
        self.budget = budget
        self.layer = layer
        self.seed = seed
        self.noise_std = float(getattr(cfg, "noise_std", 0.0))
        self.aux_loss_weight = float(getattr(cfg, "aux_loss_weight", 0.0))
        self.expert_sizes = list(expert_sizes)
        self.register_buffer(
            "sizes", torch.tensor(expert_sizes, dtype=torch.long), persistent=False
        )

    def scores(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Score of every expert for every token: x [..., d] -> [..., E]."""
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, keys: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> Routing:
        clean = self.scores(x, keys)
        noisy = clean
        if self.training and self.noise_std > 0:
            noisy = clean + torch.randn_like(clean) * self.noise_std

        selected = select_experts(noisy.detach(), self.top_k, self.budget, self.sizes)
        if self.unit_weights:
            weights = selected.to(x.dtype)
        else:
            weights = noisy.masked_fill(~selected, float("-inf")).softmax(dim=-1)

        aux_loss = None
        if self.aux_loss_weight > 0:
            aux_loss = self.load_balancing_loss(clean, noisy, selected, token_mask)
        return Routing(selected, weights, aux_loss)

    def load_balancing_loss(
        self, clean: torch.Tensor, noisy: torch.Tensor, selected: torch.Tensor,
        token_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Compute the importance + load loss of Shazeer et al. 2017 (arXiv 1701.06538,
        eqs. 6-10): CV^2 of the summed gate values per expert plus CV^2 of the expected
        load per expert. The gate values are the softmax over the selected experts' scores.
        Unlike the paper, the gate noise has a fixed std (noise_std), not a learned one."""
        gates = noisy.masked_fill(~selected, float("-inf")).softmax(dim=-1).float()
        weight = torch.ones_like(gates[..., :1]) if token_mask is None else (
            token_mask.unsqueeze(-1).to(gates.dtype)
        )
        importance = (gates * weight).flatten(0, -2).sum(dim=0)

        smooth = (
            self.training and self.noise_std > 0 and self.budget == "experts"
            and self.top_k < self.num_experts
        )
        if smooth:
            # P(expert e stays selected when only its own noise is redrawn): the clean
            # score must beat the k-th best noisy score among the other experts.
            top = noisy.topk(self.top_k + 1, dim=-1).values
            kth, next_best = top[..., self.top_k - 1, None], top[..., self.top_k, None]
            threshold = torch.where(selected, next_best, kth)
            load_per_token = torch.special.ndtr((clean - threshold).float() / self.noise_std)
        else:
            # NOTE: without gate noise (or with the neuron budget) the load is the hard
            # selection count, which carries no gradient; only the importance term trains.
            load_per_token = selected.float()
        load = (load_per_token * weight).flatten(0, -2).sum(dim=0)
        return cv_squared(importance) + cv_squared(load)


@register
class AvgK(Gating):
    """EMoE's parameter-free gate. The score of expert e is x . mean(keys of e), the mean
    pre-activation of its neurons without bias, computed from the current W_in at every
    forward so it follows each optimiser step. That costs one pass over W_in (d_ff * d
    adds), which is small next to the layer's matmuls over all tokens."""

    name = "avg_k"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # Equal experts average by a reshape and need no matrix.
        equal = len(set(self.expert_sizes)) == 1
        matrix = None if equal else averaging_matrix(self.expert_sizes)
        self.register_buffer("averaging", matrix, persistent=False)

    def gate_vectors(self, keys: torch.Tensor) -> torch.Tensor:
        """Mean key vector of each expert [E, d], from the current W_in."""
        return segment_mean(keys, self.expert_sizes, self.averaging)

    def scores(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return x @ self.gate_vectors(keys).T


@register
class Learned(Gating):
    """A trainable linear router (no bias). router_init="centroids" starts it at the mean
    of each expert's raw key vectors, which is the avg-k gate; "random" draws it from
    N(0, init_std^2), seeded by seed and layer."""

    name = "learned"
    unit_weights = False

    def __init__(
        self, cfg: Any, keys: torch.Tensor, expert_sizes: list[int], top_k: int, budget: str,
        layer: int, seed: int, init_std: float,
    ) -> None:
        super().__init__(cfg, keys, expert_sizes, top_k, budget, layer, seed, init_std)
        d_model = keys.shape[1]
        self.router = nn.Linear(d_model, self.num_experts, bias=False)
        self.router.to(device=keys.device, dtype=keys.dtype)
        with torch.no_grad():
            if getattr(cfg, "router_init", "centroids") == "centroids":
                self.router.weight.copy_(segment_mean(keys.detach(), expert_sizes))
            else:
                generator = torch.Generator().manual_seed(_layer_seed(seed, layer))
                weight = torch.empty(self.router.weight.shape).normal_(0.0, init_std, generator=generator)
                self.router.weight.copy_(weight)

    def scores(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return self.router(x)


@register
class RandomRouting(Gating):
    """Control: k distinct experts per token, uniformly at random. Training draws from
    torch's global generator, so every forward is fresh. Evaluation draws from a generator
    reseeded from (seed, layer) whenever the module enters eval mode, so repeating an
    evaluation after `model.eval()` gives identical selections."""

    name = "random"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._eval_generators: dict[torch.device, torch.Generator] = {}

    def train(self, mode: bool = True) -> RandomRouting:
        if not mode:
            self._eval_generators.clear()
        return super().train(mode)

    def scores(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], self.num_experts)
        if self.training:
            return torch.rand(shape, device=x.device)
        generator = self._eval_generators.get(x.device)
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(_layer_seed(self.seed, self.layer))
            self._eval_generators[x.device] = generator
        return torch.rand(shape, device=x.device, generator=generator)


def _layer_seed(seed: int, layer: int) -> int:
    return (seed * 1_000_003 + layer) % (2**63 - 1)
