"""The study report on results files written here: statistics checked by hand, every
problem listed, bad input rejected with exit status 2, figures written."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from emoe_lab.report import main as report_main
from emoe_lab.report import write_report
from emoe_lab.report_data import ReportInputError, load_results, paired_difference, summarise

# Seeds 0, 1, 2 of dense fine-tuning and of EMoE (balanced k-means + avg-k).
DENSE_ACCURACY = [0.80, 0.82, 0.78]
EMOE_ACCURACY = [0.83, 0.84, 0.80]
# The 97.5% quantile of Student's t with 2 degrees of freedom has the closed form
# (2p - 1) / sqrt(2p(1 - p)); t tables print 4.303.
T_975_DF2 = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025)


def write_result(
    root: Path,
    *,
    seed: int,
    moe: str = "emoe",
    clusterer: str = "balanced_kmeans",
    gating: str = "avg_k",
    accuracy: float = 0.8,
    status: str = "completed",
    sizes: list[int] | None = None,
    model: str = "tiny_bert",
    task: str = "local",
    finished_at: str = "2026-01-01T00:00:00+00:00",
    folder: str | None = None,
    config: dict | None = None,
) -> Path:
    """Write one results.json of schema version 1 and return its path."""
    dense = moe == "dense"
    cell = {
        "model": model,
        "task": task,
        "moe": moe,
        "clusterer": "none" if dense else clusterer,
        "gating": "none" if dense else gating,
        "seed": seed,
        "num_experts": None if dense else 4,
        "top_k": None if dense else 2,
        "budget": None if dense else "experts",
    }
    layers = []
    if not dense:
        layer_sizes = sizes or [16, 16, 16, 16]
        layers = [
            {
                "layer": layer,
                "num_experts": len(layer_sizes),
                "expert_sizes": layer_sizes,
                "clustering_seconds": 0.1,
                "cache_hit": False,
                "active_fraction": 0.5,
                "expert_load": [0.25] * len(layer_sizes),
            }
            for layer in (3, 1)
        ]
    completed = status == "completed"
    data = {
        "schema_version": 1,
        "status": status,
        "error": None if completed else {"type": "ValueError", "message": "bad value", "traceback": "..."},
        "metrics": {
            "validation/accuracy": accuracy,
            "validation/f1": accuracy - 0.1,
            "test/accuracy": accuracy + 0.01,
            "test/f1": accuracy - 0.09,
        }
        if completed
        else {},
        "best_epoch": 0,
        "steps": 2,
        "cell": cell,
        "moe": {"layers": layers, "active_fraction": 1.0 if dense else 0.5},
        "config": config or {},
        "overrides": [],
        "timings": {},
        "output_dir": "",
        "started_at": finished_at,
        "finished_at": finished_at,
    }
    name = folder or f"moe={moe},clusterer={cell['clusterer']},gating={cell['gating']},seed={seed}"
    path = root / name / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """A study with dense and EMoE on seeds 0-2, a random clusterer whose seed 2 failed,
    a k-means group without seed 2, and kmeans's uneven expert sizes."""
    root = tmp_path / "study"
    for seed in range(3):
        write_result(root, seed=seed, moe="dense", accuracy=DENSE_ACCURACY[seed])
        write_result(root, seed=seed, accuracy=EMOE_ACCURACY[seed])
    write_result(root, seed=0, clusterer="random", accuracy=0.75)
    write_result(root, seed=1, clusterer="random", accuracy=0.77)
    write_result(root, seed=2, clusterer="random", status="failed")
    for seed in range(2):
        write_result(root, seed=seed, clusterer="kmeans", accuracy=0.81, sizes=[8, 24, 16, 16])
    return root


def row_of(summary: pd.DataFrame, **cell: str) -> pd.Series:
    mask = pd.Series(True, index=summary.index)
    for key, value in cell.items():
        mask &= summary[key] == value
    assert mask.sum() == 1, f"expected one row for {cell}, found {mask.sum()}"
    return summary[mask].iloc[0]


def test_summary_mean_and_std(study):
    summary = summarise(load_results(study).records)

    dense = row_of(summary, moe="dense")
    assert dense["n_seeds"] == 3
    assert dense["validation/accuracy_mean"] == pytest.approx(0.80)
    # std with ddof=1 of 0.80, 0.82, 0.78: sqrt((0 + 0.0004 + 0.0004) / 2) = 0.02.
    assert dense["validation/accuracy_std"] == pytest.approx(0.02)
    assert dense["validation/accuracy_n"] == 3
    assert dense["num_experts"] == "-"
    assert math.isnan(dense["validation/accuracy_diff"])

    emoe = row_of(summary, clusterer="balanced_kmeans")
    assert emoe["validation/accuracy_mean"] == pytest.approx(sum(EMOE_ACCURACY) / 3)
    assert emoe["test/accuracy_mean"] == pytest.approx(sum(EMOE_ACCURACY) / 3 + 0.01)


def test_paired_difference_by_hand(study):
    summary = summarise(load_results(study).records)
    emoe = row_of(summary, clusterer="balanced_kmeans")

    # Differences 0.03, 0.02, 0.02: mean 0.07 / 3, std (ddof=1) sqrt(1/3) * 0.01.
    mean = 0.07 / 3
    half_width = T_975_DF2 * (math.sqrt(1 / 3) * 0.01) / math.sqrt(3)
    assert emoe["validation/accuracy_diff"] == pytest.approx(mean)
    assert emoe["validation/accuracy_diff_low"] == pytest.approx(mean - half_width)
    assert emoe["validation/accuracy_diff_high"] == pytest.approx(mean + half_width)
    assert emoe["validation/accuracy_pairs"] == 3


def test_paired_difference_uses_common_seeds_only(study):
    summary = summarise(load_results(study).records)
    random = row_of(summary, clusterer="random")

    # Random has seeds 0 and 1: differences 0.75 - 0.80 and 0.77 - 0.82 are both -0.05.
    assert random["n_seeds"] == 2
    assert random["validation/accuracy_pairs"] == 2
    assert random["validation/accuracy_diff"] == pytest.approx(-0.05)
    assert random["validation/accuracy_diff_low"] == pytest.approx(-0.05)
    assert random["validation/accuracy_diff_high"] == pytest.approx(-0.05)


def test_paired_difference_one_pair_has_no_interval():
    difference = paired_difference({"0": 0.9, "1": 0.8}, {"0": 0.85})
    assert difference.pairs == 1
    assert difference.mean == pytest.approx(0.05)
    assert math.isnan(difference.low)
    assert math.isnan(difference.high)


def test_active_fraction_and_expert_sizes(study):
    summary = summarise(load_results(study).records)

    balanced = row_of(summary, clusterer="balanced_kmeans")
    assert balanced["active_fraction"] == pytest.approx(0.5)
    assert balanced["expert_size_cv"] == pytest.approx(0.0)
    assert balanced["experts_per_layer"] == pytest.approx(4)

    kmeans = row_of(summary, clusterer="kmeans")
    assert kmeans["expert_size_min"] == 8
    assert kmeans["expert_size_max"] == 24
    # Sizes 8, 24, 16, 16: mean 16, population std sqrt((64 + 64) / 4) = sqrt(32).
    assert kmeans["expert_size_cv"] == pytest.approx(math.sqrt(32) / 16)

    assert row_of(summary, moe="dense")["active_fraction"] == pytest.approx(1.0)


def test_summary_rows_in_display_order(study):
    summary = summarise(load_results(study).records)
    assert list(summary["clusterer"]) == ["none", "balanced_kmeans", "kmeans", "random"]


def test_report_lists_failed_and_missing(study):
    files = write_report(study, figures=False)
    text = files.markdown.read_text()

    failed_section = text.split("## Failed, interrupted and unfinished cells")[1].split("## Missing")[0]
    assert "| failed | tiny_bert | local | emoe | random | avg_k | 4 | 2 | experts | 2 |" in failed_section
    assert "ValueError: bad value" in failed_section

    missing_section = text.split("## Missing cells")[1].split("## Unreadable")[0]
    assert "| tiny_bert | local | emoe | kmeans | avg_k | 4 | 2 | experts | 2 |" in missing_section
    assert "balanced_kmeans" not in missing_section


def test_report_writes_csv_and_markdown(study, tmp_path):
    out = tmp_path / "out"
    files = write_report(study, out, figures=False)

    assert files.csv == out / "summary.csv"
    table = pd.read_csv(files.csv)
    assert len(table) == 4
    assert {"validation/accuracy_mean", "test/f1_diff_low", "expert_size_cv"} <= set(table.columns)

    text = files.markdown.read_text()
    assert "## tiny_bert on local" in text
    assert "| 0 1 2 | 0.8000 ± 0.0200 |" in text
    assert "+0.0233 [+0.0090, +0.0377] (3 pairs)" in text


def test_unreadable_and_old_schema_listed(study, tmp_path):
    truncated = study / "truncated" / "results.json"
    truncated.parent.mkdir()
    truncated.write_text('{"schema_version": 1, "status": "compl')
    old = write_result(study, seed=0, folder="old")
    old.write_text(json.dumps(json.loads(old.read_text()) | {"schema_version": 0}))
    not_object = study / "list" / "results.json"
    not_object.parent.mkdir()
    not_object.write_text("[1, 2]")

    collection = load_results(study)
    assert {p.path for p in collection.unreadable} == {truncated, not_object}
    assert "invalid JSON" in next(p.reason for p in collection.unreadable if p.path == truncated)
    assert [p.path for p in collection.unsupported] == [old]
    assert "schema_version 0" in collection.unsupported[0].reason
    assert "reads schema_version 1" in collection.unsupported[0].reason

    files = write_report(study, figures=False)
    text = files.markdown.read_text()
    assert str(truncated) in text.split("## Unreadable results files")[1]
    assert str(old) in text.split("## Results files of another schema version")[1]
    assert len(files.summary) == 4


def test_duplicate_prefers_completed(study):
    write_result(
        study, seed=0, status="failed", finished_at="2026-02-01T00:00:00+00:00", folder="rerun/seed0"
    )
    collection = load_results(study)

    assert len(collection.duplicates) == 1
    ignored, used = collection.duplicates[0]
    assert ignored.status == "failed"
    assert used.status == "completed"
    assert all(
        r.status == "completed" for r in collection.records if r.cell["clusterer"] == "balanced_kmeans"
    )


def lr_study(root: Path, emoe_lrs: dict[int, float], dense_lr: float = 1e-4) -> Path:
    """Dense on seeds 0-1 at `dense_lr`, and EMoE runs at the learning rate of each
    (folder index -> lr) with seed index % 2, in one folder."""
    for seed in range(2):
        write_result(root, seed=seed, moe="dense", config={"train": {"lr": dense_lr}, "seed": seed})
    for index, lr in emoe_lrs.items():
        write_result(
            root, seed=index % 2, accuracy=0.8 + index / 100, folder=f"run{index}",
            config={"train": {"lr": lr, "log_every": index}, "seed": index % 2},
        )
    return root


def test_mixed_configs_rejected(tmp_path, caplog):
    root = lr_study(tmp_path / "mixed", {0: 1e-4, 1: 1e-4, 2: 5e-5, 3: 5e-5})

    with pytest.raises(ReportInputError, match=r"train\.lr: 0\.0001 in 4 run\(s\).*5e-05 in 2 run") as error:
        load_results(root)
    assert "--where train.lr=" in str(error.value)
    # The inert key that differs (train.log_every) is not named.
    assert "log_every" not in str(error.value)

    assert report_main([str(root), "--no-figures"]) == 2
    assert "differ in these config keys" in caplog.text
    assert not (root / "summary.md").exists()


def test_where_selects_one_setting(tmp_path):
    root = lr_study(tmp_path / "mixed", {0: 1e-4, 1: 1e-4, 2: 5e-5, 3: 5e-5})

    collection = load_results(root, where=["train.lr=1e-4"])
    emoe = row_of(summarise(collection.records), moe="emoe")
    assert emoe["n_seeds"] == 2
    assert emoe["test/accuracy_mean"] == pytest.approx(0.81 + 0.005)
    assert emoe["test/accuracy_pairs"] == 2
    assert report_main([str(root), "--no-figures", "--where", "train.lr=0.0001"]) == 0


def test_dense_baseline_other_budget_rejected(tmp_path):
    root = lr_study(tmp_path / "mixed", {0: 5e-5, 1: 5e-5}, dense_lr=1e-4)
    with pytest.raises(ReportInputError, match="train.lr"):
        load_results(root)


def test_failed_runs_of_other_configs_listed(tmp_path):
    root = lr_study(tmp_path / "mixed", {0: 1e-4, 1: 1e-4})
    write_result(root, seed=2, status="failed", folder="typo", config={"train": {"lr": 3.0}})

    collection = load_results(root)
    assert [record.status for record in collection.records].count("failed") == 1
    assert row_of(summarise(collection.records), moe="emoe")["n_seeds"] == 2


def test_dense_runs_ignore_expert_sections(tmp_path):
    root = tmp_path / "dense"
    for seed, clusterer in enumerate(["balanced_kmeans", "kmeans"]):
        write_result(root, seed=seed, moe="dense", config={"clusterer": {"name": clusterer}})
    assert len(load_results(root).records) == 2


@pytest.mark.parametrize(
    ("term", "message"),
    [
        ("train.lr", "is not KEY=VALUE"),
        ("train.rate=1e-4", "no results file has this config key"),
        ("train.lr=3e-4", "no run matches --where train.lr=3e-4"),
        ("seed=0 --where seed=1", "--where names seed twice"),
    ],
)
def test_bad_where_term(tmp_path, caplog, term, message):
    root = lr_study(tmp_path / "mixed", {0: 1e-4, 1: 1e-4})
    where = [arg for part in term.split(" --where ") for arg in ("--where", part)]
    assert report_main([str(root), "--no-figures", *where]) == 2
    assert message in caplog.text


def test_unknown_metric_rejected(study, caplog):
    assert report_main([str(study), "--metric", "test/acuracy"]) == 2
    assert "--metric test/acuracy: not a metric of these results" in caplog.text
    assert "test/accuracy" in caplog.text
    assert not (study / "summary.md").exists()


def test_figures_written(study):
    files = write_report(study)

    names = sorted(path.name for path in files.figures)
    assert names == [
        "clusterers__tiny_bert__local__N4_k2_experts.png",
        "expert_sizes__tiny_bert__local__N4_k2_experts.png",
    ]
    for path in files.figures:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({path.name})" in files.markdown.read_text()


def test_gating_figure_when_gatings_vary(tmp_path):
    root = tmp_path / "gatings"
    for seed in range(2):
        write_result(root, seed=seed, moe="dense")
        for gating in ("avg_k", "learned", "random"):
            write_result(root, seed=seed, gating=gating)

    names = sorted(path.name for path in write_report(root).figures)
    assert "gatings__tiny_bert__local__N4_k2_experts.png" in names
    assert not any(name.startswith("clusterers") for name in names)


def test_cli_missing_folder(tmp_path, caplog):
    assert report_main([str(tmp_path / "absent")]) == 2
    assert "folder not found" in caplog.text
    assert str(tmp_path / "absent") in caplog.text


def test_cli_folder_without_results(tmp_path, caplog):
    (tmp_path / "empty" / "job").mkdir(parents=True)
    assert report_main([str(tmp_path / "empty")]) == 2
    assert "no results.json under" in caplog.text


def test_cli_only_unusable_files(tmp_path, caplog):
    bad = tmp_path / "bad" / "results.json"
    bad.parent.mkdir()
    bad.write_text("{")
    assert report_main([str(tmp_path / "bad")]) == 2
    assert "None of the results files" in caplog.text
    assert str(bad) in (tmp_path / "bad" / "summary.md").read_text()


def test_cli_subprocess_writes_outputs(study, tmp_path):
    out = tmp_path / "report"
    completed = subprocess.run(
        [sys.executable, "-m", "emoe_lab.report", str(study), "--out", str(out), "--metric", "test/f1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert (out / "summary.csv").exists()
    assert (out / "summary.md").exists()
    assert len(list(out.glob("*.png"))) == 2
    assert "1 cells did not complete" in completed.stderr


NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "compare.ipynb"


def test_notebook_runs_on_study(study, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    from ipykernel.kernelspec import install as install_kernel

    # A python3 kernel spec for this interpreter, found first through JUPYTER_PATH, so the
    # notebook runs in this virtual environment whatever kernels the user has installed.
    install_kernel(kernel_name="python3", prefix=str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter" / "share" / "jupyter"))

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1
    assert 'RESULTS_DIR = "multirun/clusterer_ablation"' in parameters[0].source
    parameters[0].source = f"RESULTS_DIR = {str(study)!r}\nMETRIC = 'validation/accuracy'"

    client = nbclient.NotebookClient(
        notebook, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    # The difference plot and the clusterer ablation chart.
    assert len(images) == 2
    text = "\n".join(
        output.get("text", "") + output.get("data", {}).get("text/markdown", "") for output in outputs
    )
    assert "4 groups under" in text
    assert "failed: " in text
    assert "missing seeds 2" in text
