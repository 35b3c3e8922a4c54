"""Model-level access to the expert layers: token masks, auxiliary losses and routing
statistics."""

from __future__ import annotations

import torch
from torch import nn

from .layers import MoEFeedForward


def moe_layers(model: nn.Module) -> list[nn.Module]:
    """Return the expert layers of a converted model, first to last (empty for a dense
    model)."""
    return [module for module in model.modules() if isinstance(module, MoEFeedForward)]


def set_token_mask(model: nn.Module, mask: torch.Tensor | None) -> None:
    """Store the attention mask [batch, seq] of the next forward on every expert layer, so
    that statistics and the auxiliary loss skip padding; None counts every token."""
    for layer in moe_layers(model):
        layer.token_mask = mask


def moe_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum over expert layers of aux_loss_weight * load-balancing loss from the last
    forward; None when no layer computed one."""
    total = None
    for layer in moe_layers(model):
        if layer.aux_loss is not None:
            term = layer.gating.aux_loss_weight * layer.aux_loss
            total = term if total is None else total + term
    return total


def reset_moe_statistics(model: nn.Module) -> None:
    """Zero the routing counters of every expert layer."""
    for layer in moe_layers(model):
        layer.reset_statistics()


def moe_statistics(model: nn.Module) -> list[dict]:
    """Routing of each expert layer since the last reset: `layer`, `tokens` counted,
    `active_fraction` (mean fraction of FFN neurons active per token) and `expert_load`
    (fraction of tokens that selected each expert)."""
    return [layer.statistics() for layer in moe_layers(model)]
