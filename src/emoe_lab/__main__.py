"""Entrypoint: `python -m emoe_lab [overrides]` runs one job; add `-m` for a multirun."""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .config import register_configs

# NOTE: the configs live in the repository's conf/ folder, which an editable install
# (`pip install -e .`, as the Makefile does) finds here; EMOE_LAB_CONF points elsewhere.
CONFIG_DIR = os.environ.get("EMOE_LAB_CONF", str(Path(__file__).resolve().parents[2] / "conf"))

register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from .run import run

    results = run(cfg)
    return results.get("metrics", {}).get(f"validation/{cfg.task.main_metric}")


if __name__ == "__main__":
    main()
