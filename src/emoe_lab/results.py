"""The `results.json` file of a job: its schema, atomic writes, and reading it back."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import tempfile
import traceback
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"


def _read_umask() -> int:
    # Reading the umask means setting it, so it is set back at once, here at import time
    # rather than while other threads may create files.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# The mode that a plain open() gives a new file in this process, e.g. 0o644.
FILE_MODE = 0o666 & ~_read_umask()


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename, so that a crash
    leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file readable by its owner only. Results are shared files, so
        # give them the mode a plain open() would, under the process umask.
        os.chmod(tmp, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_results(path: Path) -> dict[str, Any] | None:
    """Return the parsed results file, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def describe_cell(cfg: Any) -> dict[str, Any]:
    """Return the ablation cell of a config: the keys that reports and W&B group by."""
    enabled = bool(cfg.moe.enabled)
    return {
        "model": cfg.model.name,
        "task": cfg.task.name,
        "moe": cfg.moe.name,
        "clusterer": cfg.clusterer.name if enabled else "none",
        "gating": cfg.gating.name if enabled else "none",
        "seed": int(cfg.seed),
        "num_experts": int(cfg.moe.num_experts) if enabled else None,
        "top_k": cfg.moe.top_k if enabled else None,
        "budget": cfg.moe.budget if enabled else None,
    }


class ResultsRecorder:
    """Keeps the job's results in memory and rewrites `results.json` atomically at every
    change of status, so the file on disk always says how far the job got."""

    def __init__(self, output_dir: Path, config: dict, overrides: list[str], cell: dict) -> None:
        self.path = output_dir / RESULTS_FILE
        self.data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "status": "running",
            "error": None,
            "metrics": {},
            "best_epoch": None,
            "steps": 0,
            "cell": cell,
            "moe": {"layers": [], "active_fraction": None},
            "config": config,
            "overrides": overrides,
            "timings": {},
            "history": [],
            "output_dir": str(output_dir),
            "host": platform.node(),
            "started_at": now_iso(),
            "finished_at": None,
        }
        self.write()

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def finish(self, status: str, error: BaseException | None = None) -> None:
        self.data["status"] = status
        self.data["finished_at"] = now_iso()
        if error is not None:
            self.data["error"] = {
                "type": type(error).__name__,
                "message": str(error),
                "traceback": "".join(
                    traceback.format_exception(type(error), error, error.__traceback__)
                ),
            }
        self.write()

    def write(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=2, default=_to_json))


def _to_json(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to results.json")
