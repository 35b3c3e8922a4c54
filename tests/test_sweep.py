"""The study sweeper: dense cells once per seed, sweep order kept, experiments composed,
failed cells reported with a non-zero exit, and a small matrix through the real entrypoint."""

from __future__ import annotations

import csv
import json
import pickle
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra

from emoe_lab.config import register_configs
from emoe_lab.sweeper import expand_cells, expand_sweep, override_key, register_sweeper

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
CLUSTERERS = ["balanced_kmeans", "kmeans", "hierarchical", "dbscan", "random"]
GATINGS = ["avg_k", "learned", "random"]
EXPERIMENTS = {"clusterer_ablation": 18, "gating_ablation": 12, "full_matrix": 48, "smoke_matrix": 10}


@pytest.fixture(scope="module")
def config_loader() -> ConfigLoaderImpl:
    register_configs()
    register_sweeper()
    return ConfigLoaderImpl(config_search_path=create_config_search_path(f"file://{CONF_DIR}"))


def compose_experiment(name: str):
    register_configs()
    register_sweeper()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)


# ---------------------------------------------------------------------------- expansion


def test_override_key_strips_prefix_and_package():
    assert override_key("+moe.top_k=4") == "moe.top_k"
    assert override_key("~clusterer") == "clusterer"
    assert override_key("model@foo=tiny_bert") == "model"


def test_dense_cells_deduplicated_in_order():
    cells = [
        ["seed=0", "moe=dense", "clusterer=kmeans", "gating=avg_k"],
        ["seed=0", "moe=dense", "clusterer=random", "gating=avg_k"],
        ["seed=0", "moe=emoe", "clusterer=kmeans", "gating=avg_k"],
        ["seed=0", "moe=emoe", "clusterer=random", "gating=avg_k"],
        ["seed=1", "moe=dense", "clusterer=kmeans", "gating=avg_k"],
        ["seed=1", "moe=dense", "clusterer=random", "gating=avg_k"],
        ["seed=1", "moe=emoe", "clusterer=kmeans", "gating=avg_k"],
        ["seed=1", "moe=emoe", "clusterer=random", "gating=avg_k"],
    ]
    assert expand_cells(cells, default_moe="emoe") == [
        ["seed=0", "moe=dense"],
        ["seed=0", "moe=emoe", "clusterer=kmeans", "gating=avg_k"],
        ["seed=0", "moe=emoe", "clusterer=random", "gating=avg_k"],
        ["seed=1", "moe=dense"],
        ["seed=1", "moe=emoe", "clusterer=kmeans", "gating=avg_k"],
        ["seed=1", "moe=emoe", "clusterer=random", "gating=avg_k"],
    ]


def test_dense_cells_drop_moe_and_group_keys():
    cells = [
        ["moe=dense", "moe.num_experts=8", "clusterer.eps=0.3", "gating.noise_std=0.1", "train.lr=1e-4"],
        ["moe=dense", "moe.num_experts=16", "clusterer.eps=0.5", "gating.noise_std=0.0", "train.lr=1e-4"],
        ["moe=dense", "moe.num_experts=16", "clusterer.eps=0.5", "gating.noise_std=0.0", "train.lr=3e-4"],
    ]
    assert expand_cells(cells, default_moe="emoe") == [
        ["moe=dense", "train.lr=1e-4"],
        ["moe=dense", "train.lr=3e-4"],
    ]


def test_default_moe_decides_cells_without_moe_override():
    cells = [["clusterer=kmeans", "seed=0"], ["clusterer=random", "seed=0"]]
    assert expand_cells(cells, default_moe="emoe") == cells
    assert expand_cells(cells, default_moe="dense") == [["seed=0"]]


def test_emoe_cells_untouched(config_loader):
    cells, product = expand_sweep(["clusterer=dbscan", "gating=random"], config_loader, "emoe")
    assert product == 1
    assert cells == [["clusterer=dbscan", "gating=random"]]


def test_glob_sweep_expands_every_option(config_loader):
    overrides = ["clusterer=glob(*)", "gating=glob(*)", "seed=0,1,2"]
    cells, product = expand_sweep(overrides, config_loader, "emoe")

    assert product == 5 * 3 * 3
    assert len(cells) == product
    assert {cell[0] for cell in cells} == {f"clusterer={name}" for name in CLUSTERERS}
    assert {cell[1] for cell in cells} == {f"gating={name}" for name in GATINGS}


def test_glob_sweep_with_dense(config_loader):
    overrides = ["moe=dense,emoe", "clusterer=glob(*)", "gating=glob(*)", "seed=0,1,2"]
    cells, product = expand_sweep(overrides, config_loader, "emoe")

    assert product == 2 * 5 * 3 * 3
    dense = [cell for cell in cells if "moe=dense" in cell]
    assert dense == [["moe=dense", "seed=0"], ["moe=dense", "seed=1"], ["moe=dense", "seed=2"]]
    assert len(cells) == 3 + 45
    assert cells[0] == ["moe=dense", "seed=0"]


# ---------------------------------------------------------------------------- experiments


@pytest.mark.parametrize(("name", "expected_cells"), EXPERIMENTS.items())
def test_experiment_composes_with_sweep(name, expected_cells, config_loader):
    cfg = compose_experiment(name)

    assert cfg.study == name
    assert cfg.hydra.sweep.dir == f"multirun/{name}"
    assert cfg.hydra.sweeper._target_.endswith("EmoeLabSweeper")

    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    cells, _ = expand_sweep(params, config_loader, cfg.moe.name)
    assert len(cells) == expected_cells
    dense = [cell for cell in cells if "moe=dense" in cell]
    seeds = str(cfg.hydra.sweeper.params.seed).split(",")
    assert dense == [[f"seed={seed}", "moe=dense"] for seed in seeds]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_file_names_its_command(name):
    lines = (CONF_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()
    # Hydra reads the package directive only from the first line.
    assert lines[0] == "# @package _global_"
    assert lines[1].split()[:7] == ["#", "Run:", "python", "-m", "emoe_lab", "-m", f"experiment={name}"]


def test_command_line_replaces_experiment_seeds(config_loader):
    cfg = compose_experiment("gating_ablation")
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    cells, _ = expand_sweep([*params, "seed=7"], config_loader, cfg.moe.name)
    assert {cell[0] for cell in cells} == {"seed=7"}
    assert len(cells) == 1 + 3


def test_unknown_experiment_lists_options(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "emoe_lab", "experiment=does_not_exist"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert completed.returncode == 1
    assert "Could not find 'experiment/does_not_exist'" in completed.stderr
    assert "Available options in 'experiment'" in completed.stderr
    for name in EXPERIMENTS:
        assert name in completed.stderr


# ---------------------------------------------------------------------------- failures

# A stand-in task function on the real conf/: seed 13 records a failure in results.json,
# seed 99 raises, every other seed completes.
FAKE_APP = """
import json
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from emoe_lab.config import register_configs

register_configs()


@hydra.main(config_path={conf!r}, config_name="config", version_base="1.3")
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    if cfg.seed == 99:
        raise RuntimeError("seed 99 always raises")
    failed = cfg.seed == 13
    error = {{"type": "ValueError", "message": "seed 13 always fails"}} if failed else None
    data = {{"status": "failed" if failed else "completed", "error": error}}
    (out / "results.json").write_text(json.dumps(data))


if __name__ == "__main__":
    main()
"""


def run_fake_app(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(FAKE_APP.format(conf=str(CONF_DIR))))
    command = [sys.executable, str(app), "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides]
    return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, check=False)


def job_folders(sweep_dir: Path) -> list[str]:
    return sorted(path.parent.name for path in sweep_dir.glob("*/results.json"))


def test_failed_cells_exit_nonzero_after_all_ran(tmp_path):
    completed = run_fake_app(tmp_path, "moe=emoe,dense", "clusterer=kmeans,random", "seed=0,13,99")

    assert completed.returncode == 1
    assert "6 of 9 cells did not complete" in completed.stderr
    assert "ValueError: seed 13 always fails" in completed.stderr
    assert "RuntimeError: seed 99 always raises" in completed.stderr
    assert f"hydra.sweep.dir={tmp_path / 'sweep'}" in completed.stderr
    # Seed 99 wrote no results.json; the other seven cells did, the dense ones once per seed.
    assert job_folders(tmp_path / "sweep") == [
        "clusterer=kmeans,moe=emoe,seed=0",
        "clusterer=kmeans,moe=emoe,seed=13",
        "clusterer=random,moe=emoe,seed=0",
        "clusterer=random,moe=emoe,seed=13",
        "moe=dense,seed=0",
        "moe=dense,seed=13",
    ]


def test_all_completed_exits_zero(tmp_path):
    completed = run_fake_app(tmp_path, "clusterer=dbscan", "gating=random")
    assert completed.returncode == 0, completed.stderr
    assert job_folders(tmp_path / "sweep") == ["clusterer=dbscan,gating=random"]


# ---------------------------------------------------------------------------- real entrypoint


def write_csv_task(path: Path, n: int = 64) -> Path:
    """Write a two-class CSV task whose label follows the words of its text."""
    rng = random.Random(0)
    words = {0: "bad awful poor dull boring".split(), 1: "good great fine nice lovely".split()}
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(n):
            writer.writerow([" ".join(rng.choice(words[i % 2]) for _ in range(6)), i % 2])
    return path


# moe.top_k=0 fails the config check of the job, so each seed has one failed cell.
MATRIX = [
    "model=tiny_bert",
    "task=local",
    "task.path=data.csv",
    "train=smoke",
    "train.max_steps=2",
    "logger=none",
    "moe=dense,emoe",
    "moe.top_k=2,0",
    "seed=0,1",
    "hydra.sweep.dir=sweep",
]


def run_entrypoint(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "emoe_lab", "-m", *MATRIX, *overrides]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, check=False)


def read_results(sweep: Path) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in sweep.glob("*/results.json")}


@pytest.mark.slow
def test_matrix_through_entrypoint(tmp_path):
    from emoe_lab.report import main as report_main

    write_csv_task(tmp_path / "data.csv")
    sweep = tmp_path / "sweep"

    first = run_entrypoint(tmp_path)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "2 of 6 cells did not complete" in first.stderr
    assert "invalid moe.top_k=0" in first.stderr

    results = read_results(sweep)
    assert len(results) == 6
    statuses = sorted(data["status"] for data in results.values())
    assert statuses == ["completed"] * 4 + ["failed"] * 2
    dense = [data for data in results.values() if data["cell"]["moe"] == "dense"]
    assert sorted(data["cell"]["seed"] for data in dense) == [0, 1]
    for data in results.values():
        if data["status"] == "failed":
            assert data["cell"]["top_k"] == 0
            assert data["error"]["type"] == "ConfigError"

    assert report_main([str(sweep), "--no-figures"]) == 0
    summary = (sweep / "summary.md").read_text()
    failed_section = summary.split("## Failed, interrupted and unfinished cells")[1].split("## Missing")[0]
    assert failed_section.count("| failed | tiny_bert | local | emoe |") == 2
    assert "invalid moe.top_k=0" in failed_section

    started = {name: data["started_at"] for name, data in results.items()}
    second = run_entrypoint(tmp_path)
    assert second.returncode == 1
    assert (second.stdout + second.stderr).count("results.json has status completed") == 4
    rerun = read_results(sweep)
    for name, data in rerun.items():
        if data["status"] == "completed":
            assert data["started_at"] == started[name], f"{name} ran again"


def config_error_pickles() -> bool:
    from emoe_lab.errors import ConfigError

    try:
        pickle.loads(pickle.dumps(ConfigError("moe.top_k", 0, "an integer >= 1")))
    except TypeError:
        return False
    return True


@pytest.mark.slow
def test_joblib_launcher_runs_cells(tmp_path):
    write_csv_task(tmp_path / "data.csv")
    command = [
        sys.executable,
        "-m",
        "emoe_lab",
        "-m",
        *MATRIX[:6],
        "moe=dense,emoe",
        "seed=0",
        "hydra.sweep.dir=sweep",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, check=False)

    assert completed.returncode == 0, completed.stderr[-3000:]
    results = read_results(tmp_path / "sweep")
    assert sorted(data["cell"]["moe"] for data in results.values()) == ["dense", "emoe"]
    assert all(data["status"] == "completed" for data in results.values())


@pytest.mark.slow
def test_joblib_launcher_reports_failed_cell(tmp_path):
    if not config_error_pickles():
        pytest.xfail(
            "emoe_lab.errors.ConfigError cannot be unpickled (its __init__ takes four "
            "arguments but args holds one), so joblib cannot return a failed job"
        )
    write_csv_task(tmp_path / "data.csv")

    completed = run_entrypoint(tmp_path, "seed=0", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")

    assert completed.returncode == 1, completed.stderr[-3000:]
    assert "1 of 3 cells did not complete" in completed.stderr
    statuses = sorted(data["status"] for data in read_results(tmp_path / "sweep").values())
    assert statuses == ["completed", "completed", "failed"]
