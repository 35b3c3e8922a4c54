"""W&B offline runs: one per job, inside the job's folder, readable back without a server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_job, tiny_overrides


def _inspect_summary(run_dir: Path) -> dict:
    wandb_cli = Path(sys.executable).with_name("wandb")
    output = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(run_dir)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return json.loads(output)


def _find(mapping, key):
    """Return the value stored under `key` anywhere in a nested JSON object."""
    if isinstance(mapping, dict):
        if key in mapping:
            return mapping[key]
        for value in mapping.values():
            found = _find(value, key)
            if found is not None:
                return found
    return None


def test_offline_run_summary_matches_results(tmp_path, tiny_task):
    overrides = tiny_overrides(tiny_task, tmp_path / "cache")
    overrides[overrides.index("logger=none")] = "logger=wandb"
    out = tmp_path / "job"
    results = run_job(overrides, out)

    run_dirs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    summary = _inspect_summary(run_dirs[0])
    for key, value in results["metrics"].items():
        stored = _find(summary, key)
        assert stored is not None, f"{key} missing from the W&B summary: {summary}"
        assert float(stored) == pytest.approx(value, abs=1e-12)
    assert _find(summary, "clusterer") in ("balanced_kmeans", '"balanced_kmeans"')
