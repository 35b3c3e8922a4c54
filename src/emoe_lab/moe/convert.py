"""Validation of the MoE settings against a model, and the in-place conversion of its chosen
FFN layers into expert layers."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from .cache import cache_key, load_clustering, save_clustering
from .clusterers import CLUSTERERS, LINKAGES, NOISE_POLICIES, Clustering, build_clusterer, normalise_rows
from .families import FAMILIES, Family
from .gating import BUDGETS, GATINGS, ROUTER_INITS, build_gating

log = logging.getLogger(__name__)

EQUAL_SIZE_CLUSTERERS = ("balanced_kmeans", "random")


def validate_moe_config(model: nn.Module, moe_cfg: Any, clusterer_cfg: Any, gating_cfg: Any) -> None:
    """Raise ConfigError for any MoE, clusterer or gating setting that cannot work on this
    model, before any clustering or training starts. Does nothing when moe is disabled."""
    if not getattr(moe_cfg, "enabled", True):
        return
    family = family_of(model)
    blocks = family.blocks(model)
    d_ff = family.key_vectors(blocks[0]).shape[0]

    num_experts = moe_cfg.num_experts
    if not _is_int(num_experts) or not 1 <= num_experts <= d_ff:
        raise ConfigError(
            "moe.num_experts", num_experts, f"an integer in 1..{d_ff} (d_ff of this model)",
            "Set moe.num_experts to a divisor of d_ff such as 16.",
        )
    _validate_top_k(moe_cfg.top_k, num_experts)
    if moe_cfg.budget not in BUDGETS:
        raise ConfigError("moe.budget", moe_cfg.budget, f"one of {', '.join(BUDGETS)}")
    resolve_layers(moe_cfg.layers, len(blocks))
    _validate_clusterer(clusterer_cfg, num_experts, d_ff)
    _validate_gating(gating_cfg)


def family_of(model: nn.Module) -> Family:
    """Look up the adapter of the model's family; raise ConfigError for a family the
    converter does not support."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise ConfigError(
            "model.config.model_type", model_type,
            f"a family the MoE converter supports: {', '.join(FAMILIES)}",
            "Use a BERT, GPT-2 or Llama model, or set moe=dense for plain fine-tuning.",
        )
    return FAMILIES[model_type]


def resolve_layers(layers: Any, num_layers: int) -> list[int]:
    """Non-negative layer indices in the given order; negative ones count from the end."""
    requested = list(layers) if layers is not None else layers
    if not requested:
        raise ConfigError(
            "moe.layers", requested, "a non-empty list of layer indices",
            "List the layers to convert, e.g. [-1, -3], or set moe=dense.",
        )
    resolved: list[int] = []
    for index in requested:
        if not _is_int(index) or not -num_layers <= index < num_layers:
            raise ConfigError(
                "moe.layers", requested,
                f"indices in {-num_layers}..{num_layers - 1} for a model with {num_layers} layers",
                f"Replace {index!r} with an index in that range.",
            )
        layer = index % num_layers
        if layer in resolved:
            raise ConfigError(
                "moe.layers", requested, "distinct layers",
                f"Entries name layer {layer} twice (negative indices count from the end); "
                "remove one.",
            )
        resolved.append(layer)
    return resolved


def resolve_top_k(top_k: int | str, num_experts: int) -> int:
    """Experts per token: `top_k`, or every expert for top_k="all"."""
    return num_experts if top_k == "all" else int(top_k)


def convert_model(
    model: nn.Module, moe_cfg: Any, clusterer_cfg: Any, gating_cfg: Any, seed: int,
    cache_dir: Path | None,
) -> list[dict]:
    """Convert the FFNs of `moe_cfg.layers` into expert layers, in place.

    For each layer: cluster the L2-normalised key vectors (or load the labels from
    `cache_dir`), permute the neurons so that experts are contiguous, and install the
    expert layer with its gating. `cache_dir=None` or `moe_cfg.cache=False` turns the
    cache off.

    Returns one record per converted layer with `layer`, `d_ff`, `num_experts`, `top_k`,
    `expert_sizes`, `clustering_seconds`, `cache_hit`, `clusterer`, `gating` and the
    clusterer's own record (`dbscan`: eps, clusters found, noise neurons). `num_experts`
    is the count produced, which for DBSCAN may differ from the setting. `top_k` is the
    number of experts per token after resolving "all". On a cache hit,
    `clustering_seconds` is the time recorded when the entry was written.
    """
    validate_moe_config(model, moe_cfg, clusterer_cfg, gating_cfg)
    if not getattr(moe_cfg, "enabled", True):
        return []
    if not _is_int(seed) or seed < 0:
        raise ConfigError("seed", seed, "a non-negative integer", "Set seed to 0 or above.")

    if not getattr(moe_cfg, "cache", True):
        cache_dir = None

    family = family_of(model)
    blocks = family.blocks(model)
    clusterer = build_clusterer(clusterer_cfg)
    init_std = float(getattr(model.config, "initializer_range", 0.02))
    reports = []
    for layer in tqdm(resolve_layers(moe_cfg.layers, len(blocks)), desc="convert", unit="layer",
                      disable=None):
        block = blocks[layer]
        if family.is_converted(block):
            raise ConfigError(
                "moe.layers", list(moe_cfg.layers), "layers that are still dense",
                f"Layer {layer} is already converted; convert a freshly loaded model.",
            )
        keys = family.key_vectors(block)
        clustering, seconds, hit = _cluster_layer(
            keys, layer, clusterer, moe_cfg.num_experts, seed, cache_dir
        )
        sizes = clustering.expert_sizes
        top_k = resolve_top_k(moe_cfg.top_k, len(sizes))
        if top_k > len(sizes) and moe_cfg.budget == "experts":
            raise ConfigError(
                "moe.top_k", moe_cfg.top_k,
                f"at most the {len(sizes)} experts that {clusterer.name} produced on layer {layer}",
                "Use moe.top_k=all, a smaller moe.top_k, moe.budget=neurons, or clusterer "
                "settings that give more clusters.",
            )

        order = torch.from_numpy(np.argsort(clustering.labels, kind="stable"))
        family.permute(block, order)
        gating = build_gating(
            gating_cfg, family.key_vectors(block).detach(), sizes, top_k, moe_cfg.budget,
            layer, seed, init_std,
        )
        family.install(block, gating, sizes, layer)

        report = {
            "layer": layer, "d_ff": int(keys.shape[0]), "num_experts": len(sizes),
            "top_k": top_k, "expert_sizes": sizes, "clustering_seconds": seconds,
            "cache_hit": hit, "clusterer": clusterer.name, "gating": gating_cfg.name,
        }
        reports.append(report | clustering.info)
        log.info(
            "Layer %d: %s -> %d experts (sizes %d..%d) in %.2f s%s, gating %s",
            layer, clusterer.name, len(sizes), min(sizes), max(sizes), seconds,
            " (cached)" if hit else "", gating_cfg.name,
        )
    return reports


def _cluster_layer(
    keys: torch.Tensor, layer: int, clusterer: Any, num_experts: int, seed: int,
    cache_dir: Path | None,
) -> tuple[Clustering, float, bool]:
    """Labels for one layer: from the cache when present, else clustered and cached."""
    key = None
    if cache_dir is not None:
        key = cache_key(keys, layer, clusterer.name, clusterer.settings, num_experts, seed)
        cached = load_clustering(cache_dir, key)
        if cached is not None and _labels_fit(cached[0].labels, keys.shape[0]):
            return cached[0], cached[1], True

    vectors = normalise_rows(keys.detach().float().cpu().numpy())
    start = time.perf_counter()
    clustering = clusterer.cluster(vectors, num_experts, seed)
    seconds = time.perf_counter() - start
    if key is not None:
        save_clustering(cache_dir, key, clustering, seconds)
    return clustering, seconds, False


def _labels_fit(labels: np.ndarray, d_ff: int) -> bool:
    if labels.shape != (d_ff,) or labels.min() < 0:
        return False
    return bool((np.bincount(labels) > 0).all())


def _validate_top_k(top_k: Any, num_experts: int) -> None:
    if top_k == "all":
        return
    if not _is_int(top_k) or not 1 <= top_k <= num_experts:
        raise ConfigError(
            "moe.top_k", top_k, f"an integer in 1..{num_experts} (moe.num_experts) or 'all'",
            "Lower moe.top_k, raise moe.num_experts, or use moe.top_k=all.",
        )


def _validate_clusterer(cfg: Any, num_experts: int, d_ff: int) -> None:
    name = cfg.name
    if name not in CLUSTERERS:
        raise ConfigError(
            "clusterer.name", name, f"one of {', '.join(sorted(CLUSTERERS))}",
            "Pick an option of the clusterer config group.",
        )
    if name in EQUAL_SIZE_CLUSTERERS and d_ff % num_experts:
        divisors = [n for n in range(1, d_ff + 1) if d_ff % n == 0]
        raise ConfigError(
            "moe.num_experts", num_experts,
            f"a divisor of d_ff={d_ff}, because clusterer {name} makes experts of equal size",
            f"Choose one of {', '.join(map(str, divisors))}, or an unbalanced clusterer "
            "such as kmeans.",
        )
    if name in ("balanced_kmeans", "kmeans"):
        for key in ("n_init", "max_iter"):
            value = getattr(cfg, key)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"clusterer.{key}", value, "an integer >= 1")
    if name == "hierarchical" and cfg.linkage not in LINKAGES:
        raise ConfigError("clusterer.linkage", cfg.linkage, f"one of {', '.join(LINKAGES)}")
    if name == "dbscan":
        _validate_dbscan(cfg, d_ff)


def _validate_dbscan(cfg: Any, d_ff: int) -> None:
    eps = cfg.eps
    if eps != "search" and not (_is_number(eps) and eps > 0):
        raise ConfigError(
            "clusterer.eps", eps, "a cosine-distance radius > 0 (at most 2 is meaningful) "
            "or 'search'", "Set clusterer.eps=search to pick it from the target expert count.",
        )
    if not _is_int(cfg.min_samples) or not 1 <= cfg.min_samples <= d_ff:
        raise ConfigError(
            "clusterer.min_samples", cfg.min_samples,
            f"an integer in 1..{d_ff} (the layer's d_ff neurons)",
            "Lower clusterer.min_samples; the default is 5.",
        )
    if cfg.noise not in NOISE_POLICIES:
        raise ConfigError("clusterer.noise", cfg.noise, f"one of {', '.join(NOISE_POLICIES)}")


def _validate_gating(cfg: Any) -> None:
    name = cfg.name
    if name not in GATINGS:
        raise ConfigError(
            "gating.name", name, f"one of {', '.join(sorted(GATINGS))}",
            "Pick an option of the gating config group.",
        )
    router_init = getattr(cfg, "router_init", "centroids")
    if router_init not in ROUTER_INITS:
        raise ConfigError("gating.router_init", router_init, f"one of {', '.join(ROUTER_INITS)}")
    for key in ("aux_loss_weight", "noise_std"):
        value = getattr(cfg, key, 0.0)
        if not _is_number(value) or value < 0:
            raise ConfigError(f"gating.{key}", value, "a finite number >= 0", "Use 0 to turn it off.")
        if name == "random" and value > 0:
            raise ConfigError(
                f"gating.{key}", value, "0 for random gating, which has no scores to perturb "
                "or balance", f"Set gating.{key}=0 or use gating=avg_k or gating=learned.",
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool) and math.isfinite(value)
    )
