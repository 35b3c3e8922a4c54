"""The study sweeper's logic: expand a sweep so that the dense baseline runs once per seed,
and check each job's `results.json` so that a multirun with a failed cell exits non-zero.

The Hydra plugin class itself lives in `hydra_plugins.emoe_lab_sweeper`, because Hydra
only instantiates plugins defined under the `hydra_plugins` package.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_loader import ConfigLoader
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException

log = logging.getLogger(__name__)

SWEEPER_NAME = "emoe_lab"
RESULTS_FILE = "results.json"

# Dense fine-tuning ignores these config keys, so cells that differ only in them are one
# cell: a key equal to one of DENSE_IGNORED_GROUPS or starting with a DENSE_IGNORED_PREFIXES.
DENSE_IGNORED_GROUPS = ("clusterer", "gating")
DENSE_IGNORED_PREFIXES = ("clusterer.", "gating.", "moe.")


@dataclass
class EmoeLabSweeperConf:
    """Config of the study sweeper, with the fields of Hydra's basic sweeper."""

    _target_: str = "hydra_plugins.emoe_lab_sweeper.emoe_lab_sweeper.EmoeLabSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None


def register_sweeper() -> None:
    """Register the sweeper's config as `hydra/sweeper=emoe_lab` in Hydra's ConfigStore."""
    ConfigStore.instance().store(
        group="hydra/sweeper", name=SWEEPER_NAME, node=EmoeLabSweeperConf, provider="emoe_lab"
    )


def override_key(override: str) -> str:
    """Return the config key of a command-line override: `+moe.top_k=4` -> `moe.top_k`,
    `model@x=tiny_bert` -> `model`."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split("@", 1)[0]


def override_value(cell: Sequence[str], key: str) -> str | None:
    """Return the value that `cell` gives `key`, or None when it does not override it."""
    for override in cell:
        if "=" in override and override_key(override) == key:
            return override.split("=", 1)[1]
    return None


def is_dense_cell(cell: Sequence[str], default_moe: str) -> bool:
    """Return True when a cell runs plain dense fine-tuning, that is when its `moe`
    override (or, without one, the composed config's `moe` option) is `dense`."""
    value = override_value(cell, "moe")
    return (value if value is not None else default_moe) == "dense"


def drop_dense_ignored(cell: Sequence[str]) -> list[str]:
    """Remove the overrides that dense fine-tuning ignores (clusterer, gating, moe.*)."""
    remaining = []
    for override in cell:
        key = override_key(override)
        if key in DENSE_IGNORED_GROUPS or key.startswith(DENSE_IGNORED_PREFIXES):
            continue
        remaining.append(override)
    return remaining


def expand_cells(cells: Sequence[Sequence[str]], default_moe: str) -> list[list[str]]:
    """Normalise every dense cell (drop clusterer, gating and moe.* overrides) and remove
    duplicate cells, keeping the first occurrence of each so the sweep order is unchanged.

    `cells` is the cartesian product of the sweep, one list of `key=value` overrides per
    job. `default_moe` is the `moe` option of the composed config, used for cells that
    do not override `moe`.
    """
    expanded: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for cell in cells:
        normalised = drop_dense_ignored(cell) if is_dense_cell(cell, default_moe) else list(cell)
        identity = tuple(normalised)
        if identity in seen:
            continue
        seen.add(identity)
        expanded.append(normalised)
    return expanded


def expand_sweep(
    overrides: Sequence[str], config_loader: ConfigLoader | None, default_moe: str
) -> tuple[list[list[str]], int]:
    """Expand sweep overrides (`seed=0,1,2`, `clusterer=glob(*)`, ...) into cells as Hydra's
    basic sweeper does, then apply `expand_cells`. Return the cells and the size of the
    cartesian product. `config_loader` lists the options of a group for `glob(...)`."""
    parser = OverridesParser.create(config_loader=config_loader)
    (product,) = BasicSweeper.split_arguments(parser.parse_overrides(list(overrides)), None)
    return expand_cells(product, default_moe), len(product)


def split_into_batches(cells: list[list[str]], max_batch_size: int | None) -> list[list[list[str]]]:
    """Cut the cells into launcher batches of at most `max_batch_size` (None or -1: one batch)."""
    if not cells:
        return []
    if max_batch_size is None or max_batch_size == -1:
        return [cells]
    if max_batch_size < 1:
        raise ValueError(
            f"invalid hydra.sweeper.max_batch_size={max_batch_size}: expected a positive integer, -1 or null."
        )
    return [cells[i : i + max_batch_size] for i in range(0, len(cells), max_batch_size)]


@dataclass
class CellOutcome:
    """Outcome of one job of a multirun, from its JobReturn and its results.json."""

    overrides: list[str]
    output_dir: str
    status: str
    error: str

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def describe(self) -> str:
        cell = ",".join(self.overrides) or "(no overrides)"
        line = f"{self.status}: {cell}"
        if self.error:
            line += f" -- {self.error}"
        return line + f" [{self.output_dir}]"


def _read_results(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe_error(error: Any) -> str:
    if isinstance(error, dict):
        return f"{error.get('type', 'Error')}: {error.get('message', '')}".strip()
    return ""


def inspect_job(job: JobReturn) -> CellOutcome:
    """Classify a finished job. An exception that reached Hydra marks it failed, and so
    does a missing or unreadable results.json. Otherwise the file's `status` decides:
    completed, failed, interrupted or running."""
    overrides = list(job.overrides or [])
    output_dir = ""
    if job.hydra_cfg is not None:
        output_dir = str(job.hydra_cfg.hydra.runtime.output_dir)

    if job.status == JobStatus.FAILED:
        # Hydra's launchers store the exception instead of raising it, and nothing else
        # records its traceback, so log it here.
        error = job._return_value
        log.error("Cell %s raised", ",".join(overrides), exc_info=error)
        return CellOutcome(overrides, output_dir, "failed", f"{type(error).__name__}: {error}")

    results = _read_results(Path(output_dir) / RESULTS_FILE) if output_dir else None
    if results is None:
        message = f"no readable {RESULTS_FILE} in the job folder"
        return CellOutcome(overrides, output_dir, "failed", message)

    status = str(results.get("status", "unknown"))
    return CellOutcome(overrides, output_dir, status, _describe_error(results.get("error")))


class FailedCellsError(CompactHydraException):
    """Raised at the end of a multirun in which some cells did not complete, so that the
    multirun exits with status 1 after every other cell has run."""

    def __init__(self, failed: list[CellOutcome], total: int, sweep_dir: str) -> None:
        self.failed = failed
        lines = [f"{len(failed)} of {total} cells did not complete:"]
        lines += [f"  {outcome.describe()}" for outcome in failed]
        lines.append(
            "The traceback of each is in its job folder's results.json, or in the log above "
            "when the job wrote none. Fix the cause and rerun the same command with "
            f"hydra.sweep.dir={sweep_dir}: completed cells are skipped and the others run again."
        )
        super().__init__("\n".join(lines))


def report_outcomes(outcomes: list[CellOutcome], sweep_dir: str) -> None:
    """Log a summary line of the sweep and raise FailedCellsError when a cell did not
    complete."""
    failed = [outcome for outcome in outcomes if not outcome.completed]
    completed = len(outcomes) - len(failed)
    log.info("Sweep finished: %d of %d cells completed", completed, len(outcomes))
    if failed:
        raise FailedCellsError(failed, len(outcomes), sweep_dir)
