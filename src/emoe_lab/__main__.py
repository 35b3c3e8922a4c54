"""Entrypoint: `python -m emoe_lab [overrides]` runs one job; add `-m` for a multirun."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .config import register_configs

# NOTE: the configs live in the repository's conf/ folder, which an editable install
# (`pip install -e .`, as the Makefile does) finds here; EMOE_LAB_CONF points elsewhere.
CONFIG_DIR = os.environ.get("EMOE_LAB_CONF", str(Path(__file__).resolve().parents[2] / "conf"))

register_configs()


# Exit status of a single job stopped by invalid config or input.
EXIT_BAD_INPUT = 2


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .errors import ConfigError, MissingPackageError
    from .run import run

    try:
        results = run(cfg)
    except (ConfigError, MissingPackageError) as error:
        # Print a single job's bad input as one line without a traceback, because run() has
        # already written the error to results.json and the log. A multirun's sweeper records
        # it as a failed cell instead.
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        print(f"emoe_lab: {error}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    return results.get("metrics", {}).get(f"validation/{cfg.task.main_metric}")


if __name__ == "__main__":
    main()
