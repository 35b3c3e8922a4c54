"""Adapters of the supported model families: the location of the FFN weights, the neuron
permutation and the expert layer that replaces the FFN module."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .gating import Gating
from .layers import BertMoEIntermediate, GPT2MoEMLP, LlamaMoEMLP, MoEFeedForward


class Family:
    """Adapter of one model family (keyed by `model.config.model_type`)."""

    model_type: ClassVar[str]

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """Return the transformer blocks, first to last."""
        raise NotImplementedError

    def ffn(self, block: nn.Module) -> nn.Module:
        """Return the module that an expert layer replaces."""
        raise NotImplementedError

    def key_vectors(self, block: nn.Module) -> torch.Tensor:
        """W_in as [d_ff, d]: row i is neuron i's key vector."""
        raise NotImplementedError

    def permute(self, block: nn.Module, order: torch.Tensor) -> None:
        """Reorder the neurons in place: new neuron j is old neuron order[j]."""
        raise NotImplementedError

    def install(self, block: nn.Module, gating: Gating, expert_sizes: list[int], layer: int) -> None:
        """Replace the FFN module with its expert layer, reusing the parameters."""
        raise NotImplementedError

    def is_converted(self, block: nn.Module) -> bool:
        return isinstance(self.ffn(block), MoEFeedForward)


@torch.no_grad()
def _reorder_(param: torch.Tensor | None, order: torch.Tensor, dim: int) -> None:
    # In place, so the Parameter objects (and any optimiser holding them) stay the same.
    if param is not None:
        param.copy_(param.index_select(dim, order.to(param.device)))


class BertFamily(Family):
    model_type = "bert"

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.encoder.layer

    def ffn(self, block: nn.Module) -> nn.Module:
        return block.intermediate

    def key_vectors(self, block: nn.Module) -> torch.Tensor:
        return block.intermediate.dense.weight

    def permute(self, block: nn.Module, order: torch.Tensor) -> None:
        _reorder_(block.intermediate.dense.weight, order, 0)
        _reorder_(block.intermediate.dense.bias, order, 0)
        _reorder_(block.output.dense.weight, order, 1)

    def install(self, block: nn.Module, gating: Gating, expert_sizes: list[int], layer: int) -> None:
        block.intermediate = BertMoEIntermediate(block.intermediate, gating, expert_sizes, layer)


class GPT2Family(Family):
    model_type = "gpt2"

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.h

    def ffn(self, block: nn.Module) -> nn.Module:
        return block.mlp

    def key_vectors(self, block: nn.Module) -> torch.Tensor:
        return block.mlp.c_fc.weight.T  # Conv1D stores [d, d_ff]

    def permute(self, block: nn.Module, order: torch.Tensor) -> None:
        _reorder_(block.mlp.c_fc.weight, order, 1)
        _reorder_(block.mlp.c_fc.bias, order, 0)
        _reorder_(block.mlp.c_proj.weight, order, 0)

    def install(self, block: nn.Module, gating: Gating, expert_sizes: list[int], layer: int) -> None:
        block.mlp = GPT2MoEMLP(block.mlp, gating, expert_sizes, layer)


class LlamaFamily(Family):
    model_type = "llama"

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.base_model.layers

    def ffn(self, block: nn.Module) -> nn.Module:
        return block.mlp

    def key_vectors(self, block: nn.Module) -> torch.Tensor:
        return block.mlp.gate_proj.weight

    def permute(self, block: nn.Module, order: torch.Tensor) -> None:
        mlp = block.mlp
        for proj in (mlp.gate_proj, mlp.up_proj):
            _reorder_(proj.weight, order, 0)
            _reorder_(proj.bias, order, 0)
        _reorder_(mlp.down_proj.weight, order, 1)

    def install(self, block: nn.Module, gating: Gating, expert_sizes: list[int], layer: int) -> None:
        block.mlp = LlamaMoEMLP(block.mlp, gating, expert_sizes, layer)


FAMILIES: dict[str, Family] = {
    family.model_type: family for family in (BertFamily(), GPT2Family(), LlamaFamily())
}
