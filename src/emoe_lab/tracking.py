"""Experiment trackers: W&B (offline by default) or none. A tracker that fails warns once
and turns itself off, so a broken W&B setup never costs a run."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Tracker:
    """The no-op tracker, also the interface every tracker keeps."""

    run_dir: Path | None = None

    def log(self, values: dict[str, float], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbTracker(Tracker):
    """One W&B run per Hydra job, written inside the job's output folder."""

    def __init__(
        self,
        logger_cfg: Any,
        output_dir: Path,
        config: dict,
        cell: dict,
        group: str | None,
        name: str,
    ) -> None:
        self._wandb = None
        self._run = None
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            tags = [f"{key}={cell[key]}" for key in ("clusterer", "gating", "model", "task")]
            tags += [f"moe={cell['moe']}", f"seed={cell['seed']}"]
            self._run = wandb.init(
                project=logger_cfg.project,
                entity=logger_cfg.entity,
                mode=logger_cfg.mode,
                dir=str(output_dir),
                group=group,
                name=name,
                tags=tags,
                config={**cell, "config": config},
                reinit="finish_previous",
                settings=wandb.Settings(
                    quiet=True, x_disable_stats=True, console="off"
                ),
            )
            self._wandb = wandb
            self.run_dir = Path(self._run.dir).parent
            log.info("W&B run %s (%s) in %s", self._run.id, logger_cfg.mode, self.run_dir)
        except Exception as error:  # noqa: BLE001 - any W&B failure must not stop the run
            self._warn("start", error)

    def log(self, values: dict[str, float], step: int) -> None:
        if self._run is None:
            return
        try:
            self._run.log(values, step=step)
        except Exception as error:  # noqa: BLE001
            self._warn("log", error)

    def summary(self, values: dict[str, Any]) -> None:
        if self._run is None:
            return
        try:
            self._run.summary.update(values)
        except Exception as error:  # noqa: BLE001
            self._warn("write the summary", error)

    def finish(self, exit_code: int = 0) -> None:
        if self._run is None:
            return
        run, self._run = self._run, None
        try:
            run.finish(exit_code=exit_code)
        except Exception as error:  # noqa: BLE001
            log.warning("W&B failed to finish the run: %s", error)

    def _warn(self, action: str, error: Exception) -> None:
        log.warning(
            "W&B failed to %s (%s: %s); the run continues without W&B. results.json and "
            "the job log are still written. Check logger.mode and the folder's permissions, "
            "or pass logger=none.",
            action,
            type(error).__name__,
            error,
        )
        run, self._run = self._run, None
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:  # noqa: BLE001 - already warned once
                pass


def make_tracker(
    logger_cfg: Any, output_dir: Path, config: dict, cell: dict, group: str | None, name: str
) -> Tracker:
    if logger_cfg.name == "none" or logger_cfg.mode == "disabled":
        return Tracker()
    if logger_cfg.name != "wandb":
        from .errors import ConfigError

        raise ConfigError("logger", logger_cfg.name, "'wandb' or 'none'", "Pass logger=none.")
    return WandbTracker(logger_cfg, output_dir, config, cell, group, name)
