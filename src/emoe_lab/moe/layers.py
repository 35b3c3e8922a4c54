"""Expert layers: the FFN of a converted block in mask form, one class per model family.

The neurons are permuted at conversion so that expert e owns the contiguous block
`[offset_e, offset_e + size_e)`. A forward computes the intermediate activations h
[..., d_ff] as the dense layer does, multiplies them by the weight of each neuron's expert
(0 for experts the gate did not select) and applies W_out and b_out once. With every expert
selected at weight 1 this is the dense FFN.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .gating import Gating

log = logging.getLogger(__name__)


class MoEFeedForward(nn.Module):
    """Base class: gating, the per-neuron expert weights and the routing statistics."""

    def __init__(self, gating: Gating, expert_sizes: list[int], layer: int) -> None:
        super().__init__()
        self.gating = gating
        self.layer = layer
        self.expert_sizes = list(expert_sizes)
        self.d_ff = sum(expert_sizes)
        self.equal_sizes = len(set(expert_sizes)) == 1
        self.register_buffer(
            "neuron_expert",
            torch.repeat_interleave(torch.arange(len(expert_sizes)), torch.tensor(expert_sizes)),
            persistent=False,
        )
        self.token_mask: torch.Tensor | None = None
        self.aux_loss: torch.Tensor | None = None
        self.track_statistics = True
        self._warned_mask_shape = False
        self.reset_statistics()

    @property
    def num_experts(self) -> int:
        return len(self.expert_sizes)

    def keys(self) -> torch.Tensor:
        """Return the current key vectors [d_ff, d] (rows of W_in) as a view."""
        raise NotImplementedError

    def mask_experts(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Route the tokens x [..., d] and scale their activations h [..., d_ff] by the
        weight of each neuron's expert."""
        token_mask = self._token_mask_for(x)
        routing = self.gating(x, self.keys(), token_mask)
        self.aux_loss = routing.aux_loss
        if self.track_statistics:
            self._record(routing.selected, token_mask)

        weights = routing.weights.to(h.dtype)
        if self.equal_sizes:
            # [..., E, d_ff/E] * [..., E, 1] broadcasts without building a [..., d_ff] mask.
            scaled = h.unflatten(-1, (self.num_experts, -1)) * weights.unsqueeze(-1)
            return scaled.flatten(-2)
        # gather with a stride-0 index is several times faster on CPU than index_select
        # or advanced indexing along the last dim (torch 2.13).
        index = self.neuron_expert.expand(*weights.shape[:-1], self.d_ff)
        return h * weights.gather(-1, index)

    def reset_statistics(self) -> None:
        # Plain tensor attributes, not buffers, so they stay out of state dicts.
        device = self.neuron_expert.device
        self._tokens = torch.zeros((), dtype=torch.float64, device=device)
        self._active_neurons = torch.zeros((), dtype=torch.float64, device=device)
        self._expert_tokens = torch.zeros(self.num_experts, dtype=torch.float64, device=device)

    def statistics(self) -> dict:
        """Summarise the routing since the last reset: the mean fraction of neurons active
        per counted token and the fraction of counted tokens that selected each expert.
        Both are None before any token is counted, which keeps results JSON-safe."""
        tokens = float(self._tokens)
        if tokens == 0:
            return {
                "layer": self.layer, "tokens": 0, "active_fraction": None, "expert_load": None,
            }
        return {
            "layer": self.layer,
            "tokens": int(tokens),
            "active_fraction": float(self._active_neurons) / (tokens * self.d_ff),
            "expert_load": (self._expert_tokens / tokens).tolist(),
        }

    @torch.no_grad()
    def _record(self, selected: torch.Tensor, token_mask: torch.Tensor | None) -> None:
        if self._tokens.device != selected.device:
            self._move_statistics(selected.device)
        selected = selected.reshape(-1, self.num_experts).to(torch.float64)
        if token_mask is not None:
            selected = selected * token_mask.reshape(-1, 1).to(torch.float64)
            tokens = token_mask.sum()
        else:
            tokens = selected.shape[0]
        sizes = self.gating.sizes.to(torch.float64)

        # Out-of-place updates: counters made under torch.inference_mode() are inference
        # tensors, which reject in-place updates once inference mode is left.
        self._tokens = self._tokens + tokens
        self._active_neurons = self._active_neurons + (selected @ sizes).sum()
        self._expert_tokens = self._expert_tokens + selected.sum(dim=0)

    def _move_statistics(self, device: torch.device) -> None:
        self._tokens = self._tokens.to(device)
        self._active_neurons = self._active_neurons.to(device)
        self._expert_tokens = self._expert_tokens.to(device)

    def _token_mask_for(self, x: torch.Tensor) -> torch.Tensor | None:
        """Return the stored attention mask as bool, shaped like x's token dims; None when
        no mask is stored or it does not fit x."""
        mask = self.token_mask
        if mask is None:
            return None
        if mask.shape != x.shape[:-1]:
            if mask.numel() != x.shape[:-1].numel():
                if not self._warned_mask_shape:
                    log.warning(
                        "Layer %d: token mask of shape %s does not fit input %s; "
                        "counting every token.", self.layer, tuple(mask.shape), tuple(x.shape),
                    )
                    self._warned_mask_shape = True
                return None
            mask = mask.reshape(x.shape[:-1])
        return mask.to(device=x.device, dtype=torch.bool)


class BertMoEIntermediate(MoEFeedForward):
    """Replaces BertIntermediate: act(W_in x + b_in) * expert weights. BertOutput then
    applies W_out, b_out, dropout and the residual LayerNorm unchanged."""

    def __init__(self, intermediate: nn.Module, gating: Gating, expert_sizes: list[int], layer: int):
        super().__init__(gating, expert_sizes, layer)
        self.dense = intermediate.dense
        self.intermediate_act_fn = intermediate.intermediate_act_fn

    def keys(self) -> torch.Tensor:
        return self.dense.weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h = self.intermediate_act_fn(self.dense(hidden_states))  # [batch, seq, d_ff]
        return self.mask_experts(h, hidden_states)


class GPT2MoEMLP(MoEFeedForward):
    """Replaces GPT2MLP. Its Conv1D weights are stored [in, out], so W_in is c_fc.weight.T."""

    def __init__(self, mlp: nn.Module, gating: Gating, expert_sizes: list[int], layer: int):
        super().__init__(gating, expert_sizes, layer)
        self.c_fc = mlp.c_fc
        self.c_proj = mlp.c_proj
        self.act = mlp.act
        self.dropout = mlp.dropout

    def keys(self) -> torch.Tensor:
        return self.c_fc.weight.T

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h = self.act(self.c_fc(hidden_states))  # [batch, seq, d_ff]
        h = self.mask_experts(h, hidden_states)
        return self.dropout(self.c_proj(h))


class LlamaMoEMLP(MoEFeedForward):
    """Replaces LlamaMLP (SwiGLU): down(act(gate(x)) * up(x) * expert weights). The keys
    are the rows of gate_proj."""

    def __init__(self, mlp: nn.Module, gating: Gating, expert_sizes: list[int], layer: int):
        super().__init__(gating, expert_sizes, layer)
        self.gate_proj = mlp.gate_proj
        self.up_proj = mlp.up_proj
        self.down_proj = mlp.down_proj
        self.act_fn = mlp.act_fn

    def keys(self) -> torch.Tensor:
        return self.gate_proj.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act_fn(self.gate_proj(x)) * self.up_proj(x)  # [batch, seq, d_ff]
        return self.down_proj(self.mask_experts(h, x))
