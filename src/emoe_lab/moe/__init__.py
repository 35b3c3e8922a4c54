"""Dense-to-experts conversion: clusterers, gatings, the expert layers and their statistics."""

from .clusterers import CLUSTERERS, Clusterer, Clustering, build_clusterer
from .convert import convert_model, resolve_layers, validate_moe_config
from .gating import GATINGS, Gating, Routing, build_gating, select_experts
from .layers import BertMoEIntermediate, GPT2MoEMLP, LlamaMoEMLP, MoEFeedForward
from .statistics import (
    moe_aux_loss,
    moe_layers,
    moe_statistics,
    reset_moe_statistics,
    set_token_mask,
)

__all__ = [
    "CLUSTERERS",
    "GATINGS",
    "BertMoEIntermediate",
    "Clusterer",
    "Clustering",
    "GPT2MoEMLP",
    "Gating",
    "LlamaMoEMLP",
    "MoEFeedForward",
    "Routing",
    "build_clusterer",
    "build_gating",
    "convert_model",
    "moe_aux_loss",
    "moe_layers",
    "moe_statistics",
    "reset_moe_statistics",
    "resolve_layers",
    "select_experts",
    "set_token_mask",
    "validate_moe_config",
]
