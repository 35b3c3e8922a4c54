"""The entrypoint's job on tiny models: composition, results.json, reproducibility, skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import compose_config, run_job, tiny_overrides
from emoe_lab.errors import ConfigError
from emoe_lab.results import FILE_MODE, RESULTS_FILE


def test_default_config_is_emoe_on_minilm(tmp_path):
    cfg = compose_config([], tmp_path)
    assert cfg.model.name == "minilm_l6"
    assert cfg.task.name == "rotten_tomatoes"
    assert cfg.clusterer.name == "balanced_kmeans"
    assert cfg.gating.name == "avg_k"
    assert cfg.moe.name == "emoe"
    assert cfg.logger.mode == "offline"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("clusterer=spectral", "Could not find 'clusterer/spectral'"),
        ("gating=softmax", "Could not find 'gating/softmax'"),
        ("moe.num_expert=8", "num_expert"),
        ("train.lr=fast", "lr"),
    ],
)
def test_config_typo_fails_at_compose(tmp_path, override, expected):
    with pytest.raises(Exception, match=expected):
        compose_config([override], tmp_path)


def test_tiny_emoe_job_writes_results(tmp_path, tiny_task):
    out = tmp_path / "job"
    results = run_job(tiny_overrides(tiny_task, tmp_path / "cache"), out)

    on_disk = json.loads((out / RESULTS_FILE).read_text())
    assert on_disk["status"] == "completed"
    assert on_disk == json.loads(json.dumps(results))
    for key in ("validation/accuracy", "validation/f1", "test/accuracy", "test/f1"):
        assert 0.0 <= on_disk["metrics"][key] <= 1.0
    assert on_disk["config"]["model"]["name"] == "tiny_bert"
    assert on_disk["cell"]["clusterer"] == "balanced_kmeans"
    assert on_disk["steps"] == 6
    layers = on_disk["moe"]["layers"]
    assert [layer["layer"] for layer in layers] == [3, 1]
    for layer in layers:
        assert sum(layer["expert_sizes"]) == 64
        assert layer["active_fraction"] == pytest.approx(4 / 16)
    assert (out / "config_resolved.yaml").exists()
    assert not (out / "checkpoints").exists()
    # Readable as a plain open() would create it, not owner-only as a temporary file is.
    assert (out / RESULTS_FILE).stat().st_mode & 0o777 == FILE_MODE


def test_dense_job_records_no_experts(tmp_path, tiny_task):
    results = run_job(tiny_overrides(tiny_task, tmp_path / "cache") + ["moe=dense"], tmp_path / "job")
    assert results["cell"]["clusterer"] == "none"
    assert results["moe"] == {"layers": [], "active_fraction": 1.0}


def test_same_seed_gives_same_metrics(tmp_path, tiny_task):
    overrides = tiny_overrides(tiny_task, tmp_path / "cache") + ["seed=1", "gating=random"]
    first = run_job(overrides, tmp_path / "a")
    second = run_job(overrides, tmp_path / "b")
    assert first["metrics"] == second["metrics"]
    assert first["history"] == second["history"]


@pytest.mark.parametrize("clusterer", ["balanced_kmeans", "kmeans", "hierarchical", "dbscan", "random"])
def test_all_experts_equals_dense_without_training(tmp_path, tiny_task, clusterer):
    base = tiny_overrides(tiny_task, tmp_path / "cache") + ["train.max_steps=0"]
    dense = run_job(base + ["moe=dense"], tmp_path / "dense")
    converted = run_job(base + [f"clusterer={clusterer}", "moe.top_k=all"], tmp_path / clusterer)
    assert converted["metrics"] == dense["metrics"]


def test_completed_job_is_skipped(tmp_path, tiny_task):
    overrides = tiny_overrides(tiny_task, tmp_path / "cache")
    first = run_job(overrides, tmp_path / "job")
    second = run_job(overrides, tmp_path / "job")
    assert second["started_at"] == first["started_at"]


@pytest.mark.slow
def test_real_dense_smoke_is_reproducible(tmp_path):
    overrides = ["moe=dense", "train=smoke", "seed=1", "logger=none", f"cache_dir={tmp_path}"]
    first = run_job(overrides, tmp_path / "a")
    second = run_job(overrides, tmp_path / "b")
    assert first["status"] == "completed"
    assert first["metrics"] == second["metrics"]
    assert set(first["metrics"]) >= {"validation/accuracy", "validation/f1", "test/accuracy", "test/f1"}


@pytest.mark.slow
@pytest.mark.parametrize("clusterer", ["balanced_kmeans", "kmeans", "hierarchical", "dbscan", "random"])
def test_real_all_experts_equals_dense(tmp_path_factory, clusterer):
    shared = tmp_path_factory.getbasetemp() / "real_all_experts"
    base = [
        "train.max_steps=0",
        "train.max_eval_examples=256",
        "logger=none",
        f"cache_dir={shared / 'cache'}",
    ]
    dense_dir = shared / "dense"
    dense = run_job(base + ["moe=dense"], dense_dir)
    converted = run_job(base + [f"clusterer={clusterer}", "moe.top_k=all"], shared / clusterer)
    assert converted["metrics"] == dense["metrics"]
    assert Path(dense_dir, RESULTS_FILE).exists()


@pytest.mark.slow
def test_real_dbscan_random_records_experts(tmp_path):
    overrides = ["clusterer=dbscan", "gating=random", "train=smoke", "logger=none", f"cache_dir={tmp_path}"]
    results = run_job(overrides, tmp_path / "job")
    assert results["status"] == "completed"
    for layer in results["moe"]["layers"]:
        assert layer["num_experts"] == len(layer["expert_sizes"])
        assert sum(layer["expert_sizes"]) == 1536
        assert layer["dbscan"]["clusters_found"] >= 1
        assert 0.0 < layer["active_fraction"] <= 1.0


def test_other_config_keeps_old_results(tmp_path, tiny_task):
    overrides = tiny_overrides(tiny_task, tmp_path / "cache")
    run_job(overrides, tmp_path / "job")
    run_job(overrides + ["seed=5"], tmp_path / "job")
    kept = list((tmp_path / "job").glob("results.*.json"))
    assert len(kept) == 1
    assert json.loads(kept[0].read_text())["cell"]["seed"] == 0
    assert json.loads((tmp_path / "job" / RESULTS_FILE).read_text())["cell"]["seed"] == 5


def test_bad_value_keeps_completed_results(tmp_path, tiny_task):
    overrides = tiny_overrides(tiny_task, tmp_path / "cache")
    out = tmp_path / "job"
    completed = run_job(overrides, out)

    with pytest.raises(ConfigError, match="moe.top_k=0"):
        run_job(overrides + ["moe.top_k=0"], out)
    assert json.loads((out / RESULTS_FILE).read_text()) == json.loads(json.dumps(completed))
    assert not list(out.glob("results.*.json"))
