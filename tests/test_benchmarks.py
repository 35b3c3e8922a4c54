"""The benchmark scripts under benchmarks/ run end to end on a tiny random model and a local
CSV task and write their results JSON. Timings are recorded but never asserted."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from conftest import REPO
from helpers import write_csv_task

BENCHMARKS = REPO / "benchmarks"
RECORD_KEYS = {
    "benchmark", "command", "package_path", "date", "git_commit", "machine", "versions",
    "torch_threads", "arguments",
}
MACHINE_KEYS = {"cores", "cpu_model", "cpu_flags", "load_average_at_start", "load_average_at_end"}
TIMING_KEYS = {"median_s", "min_s", "n", "times_s", "cpu_median_s", "cpu_min_s", "cpu_times_s"}
RATIO_KEYS = {"ratio_median", "ratio_min", "cpu_ratio_median", "cpu_ratio_min"}


def load_script(name: str) -> ModuleType:
    """Import benchmarks/<name>.py as a module, so that its main() runs in this process."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_args(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("bench")
    task = write_csv_task(folder / "task", n=80, num_labels=2, seed=0)
    return ["--tiny", "--task-path", str(task), "--cache-dir", str(folder / "cache")]


def run_script(name: str, arguments: list[str], output: Path) -> dict:
    results = load_script(name).main([*arguments, "--output", str(output)])
    on_disk = json.loads(output.read_text())
    assert on_disk["benchmark"] == name
    assert RECORD_KEYS <= on_disk.keys()
    assert MACHINE_KEYS <= on_disk["machine"].keys()
    assert on_disk["versions"]["torch"]
    assert set(on_disk) - {"benchmark"} == set(results)
    assert output.with_suffix(".md").read_text().startswith("Command: ")
    return on_disk


def test_step_time_records_every_variant(tiny_args, tmp_path):
    data = run_script("step_time", [*tiny_args, "--steps", "2", "--layer-rounds", "2"],
                      tmp_path / "step_time.json")

    expected = {"dense", "balanced_kmeans+avg_k", "balanced_kmeans+learned",
                "balanced_kmeans+random", "kmeans+avg_k", "balanced_kmeans+avg_k, no statistics"}
    assert set(data["step"]) == expected
    assert set(data["layer"]) == expected
    for entry in data["step"].values():
        assert TIMING_KEYS | RATIO_KEYS <= entry.keys()
        assert entry["n"] == 2
    for entry in data["layer"].values():
        assert {"extra_ms_per_layer", "predicted_step_ratio", "cpu_predicted_step_ratio"} <= entry.keys()
    assert set(data["layer_profile"]) == expected
    assert data["layer_profile"]["dense"][0]["self_ms_per_pass"] >= 0
    assert data["step"]["dense"]["ratio_median"] == 1.0
    assert data["settings"]["converted_layers"] == [3, 1]
    assert set(data["goal"]["met_wall"]) == expected
    assert len(data["batch_shapes"]) == 3


def test_trainer_vs_loop_uses_same_batches(tiny_args, tmp_path):
    loops = ["emoe_lab fit", "Trainer", "Trainer, optim=adamw_torch", "emoe_lab fit, AdamW unfused"]
    data = run_script("trainer_vs_loop", [*tiny_args, "--steps", "2", "--rounds", "1",
                                          "--warmup-steps", "0", "--overhead-repeats", "2",
                                          "--variants", *loops],
                      tmp_path / "trainer_vs_loop.json")

    assert list(data["loops"]) == loops
    assert data["same_batches"] is True
    for entry in data["loops"].values():
        assert TIMING_KEYS | RATIO_KEYS <= entry.keys()
        assert {"examples_per_s_median", "examples_per_cpu_s_median"} <= entry.keys()
        assert len(entry["runs"][0]["batches"]) == 2
    assert "AdamW step (fused)" in data["per_step_overheads_ms"]
    assert "load and pad a batch (dataset rows + collator)" in data["per_step_overheads_ms"]


def test_clustering_records_cells_and_cache(tiny_args, tmp_path):
    data = run_script("clustering", [*tiny_args, "--experts", "4", "--random-shape", "48", "16"],
                      tmp_path / "clustering.json")

    cells = data["cells"]
    assert {cell["clusterer"] for cell in cells} == {
        "balanced_kmeans", "kmeans", "hierarchical", "dbscan", "random"}
    assert {cell["layer"] for cell in cells} == {"model_layer", "random_weights"}
    for cell in cells:
        assert cell["seconds"] >= 0
        assert cell["experts_made"] >= 1
    assert data["cache"]["miss"]["cache_hits"] == [False, False]
    assert data["cache"]["hit"]["cache_hits"] == [True, True]
    assert data["settings"]["layers"]["random_weights"]["shape"] == [48, 16]


def test_clustering_quick_skips_slowest_cell(tiny_args, tmp_path):
    module = load_script("clustering")
    args = module.parse_args([*tiny_args])

    assert args.quick is True
    assert module.parse_args([*tiny_args, "--full"]).quick is False
    assert ("random_weights", "balanced_kmeans", 64) in module.QUICK_SKIPS


def test_evaluation_compares_grad_modes(tiny_args, tmp_path):
    data = run_script("evaluation", [*tiny_args, "--steps", "2", "--warmup", "0"],
                      tmp_path / "evaluation.json")

    names = set(data["evaluations"])
    assert "emoe: evaluate (inference_mode)" in names
    assert "emoe: same loop, gradients on" in names
    assert "emoe: evaluate, avg-k gate cached" in names
    assert "dense: evaluate, avg-k gate cached" not in names
    for entry in data["evaluations"].values():
        assert {"examples_per_s_median", "peak_rss_increase_mib", "time_ratio_vs_inference_mode",
                "metrics"} <= entry.keys()
        assert 0.0 <= entry["metrics"]["accuracy"] <= 1.0
    evaluations = data["evaluations"]
    assert evaluations["emoe: same loop, gradients on"]["metrics"] == (
        evaluations["emoe: evaluate (inference_mode)"]["metrics"])
    assert data["process_max_rss_mib"] > 0


def test_data_pipeline_counts_padding(tiny_args, tmp_path):
    data = run_script("data_pipeline", [*tiny_args, "--rounds", "1", "--steps", "1"],
                      tmp_path / "data_pipeline.json")

    padding = data["padding"]
    assert padding["real_tokens"] <= padding["tokens_padded_length_grouped"]
    assert padding["tokens_padded_length_grouped"] <= padding["tokens_padded_per_batch"]
    assert padding["real_tokens"] <= padding["tokens_padded_per_batch"]
    assert padding["tokens_padded_per_batch"] <= padding["tokens_padded_to_max_length"]
    assert set(padding["steps"]) == {"per batch", "to max_length"}
    assert set(data["task_cache"]) == {"cold (read, split, tokenise, save)", "warm (cache hit)"}


@pytest.mark.slow  # starts loky worker processes, each importing torch (10 s or more here)
def test_threads_probes_loky_workers(tiny_args, tmp_path):
    data = run_script("threads", [*tiny_args, "--n-jobs", "2"], tmp_path / "threads.json")

    worker = data["contexts"]["loky worker, n_jobs=2"]
    assert worker["pid"] != data["contexts"]["main process"]["pid"]
    assert worker["torch_threads"] >= 1


def test_training_optimizer_is_fused_adamw():
    from omegaconf import OmegaConf

    from emoe_lab.models import build_tiny_model
    from emoe_lab.train import _optimizer
    from helpers import TINY_SIZES

    model = build_tiny_model("bert", 2, dict(TINY_SIZES), seed=0)
    optimizer = _optimizer(model, OmegaConf.create({"lr": 1e-4, "weight_decay": 0.01}))

    # The loop's per-step cost measured by benchmarks/trainer_vs_loop.py assumes the fused
    # kernel, which torch has for CPU since 2.4.
    assert optimizer.defaults["fused"] is True
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.01, 0.0]
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))


def test_task_cache_hits_after_tokenising(tmp_path, caplog):
    import logging

    from emoe_lab.data import load_task
    from emoe_lab.models import build_tiny_tokenizer
    from helpers import task_config

    # A fresh tokenizer: tokenising stores truncation settings in its backend, which must not
    # change the cache key (benchmarks/data_pipeline.py times the cold and the warm load).
    tokenizer = build_tiny_tokenizer(1000)
    cfg = task_config(path=str(write_csv_task(tmp_path, n=40)))
    first = load_task(cfg, tokenizer, 32, tmp_path / "cache")

    with caplog.at_level(logging.INFO, logger="emoe_lab.data.tasks"):
        second = load_task(cfg, tokenizer, 32, tmp_path / "cache")

    assert "cache hit" in caplog.text
    assert len(list((tmp_path / "cache" / "tokenized").iterdir())) == 1
    assert first.train["input_ids"] == second.train["input_ids"]
