"""Shared fixtures: an offline environment and a way to run the real entrypoint's job
function in-process on a composed config."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("WANDB_MODE", None)

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    import torch

    torch.set_num_threads(1)


def compose_config(overrides: list[str], output_dir: Path):
    """Compose conf/config.yaml with `overrides` as Hydra would for a single run in
    `output_dir`, and make it the current HydraConfig."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from emoe_lab.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.overrides.task = list(overrides)
        cfg.hydra.job.override_dirname = output_dir.name
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_job(overrides: list[str], output_dir: Path) -> dict:
    """Run one job of `python -m emoe_lab` in this process and return its results."""
    from emoe_lab.run import run

    output_dir.mkdir(parents=True, exist_ok=True)
    return run(compose_config(overrides, output_dir))


def tiny_overrides(task_path: Path, cache_dir: Path, family: str = "bert") -> list[str]:
    """Overrides for a fast job: a tiny random model on a small local CSV task."""
    return [
        f"model=tiny_{family}",
        "task=local",
        f"task.path={task_path}",
        "train=smoke",
        "train.max_steps=6",
        "train.batch_size=8",
        "logger=none",
        f"cache_dir={cache_dir}",
    ]


@pytest.fixture
def tiny_task(tmp_path: Path) -> Path:
    from helpers import write_csv_task

    return write_csv_task(tmp_path / "task", n=80, num_labels=2, seed=0)
