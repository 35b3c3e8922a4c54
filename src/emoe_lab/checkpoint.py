"""Training checkpoints in a job's folder: saved atomically, pruned, and loaded to resume
with the same random states, so a resumed CPU run ends with the same metrics."""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d+)\.pt$")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Save with torch.save into a temporary file, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def rng_states() -> dict[str, Any]:
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Return the job's checkpoints, oldest first."""
    folder = output_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [path for _, path in sorted(found)]


def save_checkpoint(output_dir: Path, state: dict[str, Any], keep: int) -> Path:
    """Write `state` as `checkpoints/step-<step>.pt` and keep only the newest `keep`."""
    path = output_dir / CHECKPOINT_DIR / f"step-{state['step']:07d}.pt"
    atomic_torch_save({**state, "rng": rng_states()}, path)
    for old in list_checkpoints(output_dir)[: -max(keep, 1)]:
        old.unlink(missing_ok=True)
    log.info("Saved checkpoint %s", path)
    return path


def load_latest_checkpoint(output_dir: Path) -> dict[str, Any] | None:
    """Load the newest checkpoint that can be read, or return None when there is none.

    A checkpoint that fails to load (a crash during an older torch.save) is skipped with a
    warning and the next older one is tried.
    """
    for path in reversed(list_checkpoints(output_dir)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001 - any unreadable file is skipped
            log.warning("Skipping unreadable checkpoint %s: %s", path, error)
            continue
        log.info("Resuming from checkpoint %s (step %d)", path, state["step"])
        return state
    return None


def remove_checkpoints(output_dir: Path) -> None:
    """Delete the job's checkpoints, and their folder when nothing else is in it."""
    for path in list_checkpoints(output_dir):
        path.unlink(missing_ok=True)
    folder = output_dir / CHECKPOINT_DIR
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
