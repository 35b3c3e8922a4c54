"""Shared parts of the benchmark scripts: the command-line options, config composition through
Hydra, the machine record, interleaved timing with paired ratios and the results JSON."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
RESULTS_DIR = REPO / "benchmarks" / "results"

# Measure the package of this checkout, also when the virtual environment's editable install
# points at another one.
sys.path.insert(0, str(REPO / "src"))

# The package and hub code paths must never reach a network here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")

CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")


def base_parser(description: str) -> argparse.ArgumentParser:
    """Options every benchmark script takes: the model and task, the cache, threads and output."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="minilm_l6", help="Option of the model config group.")
    parser.add_argument(
        "--tiny", action="store_true",
        help="Shortcut for --model tiny_bert (random weights), for tests and for timing the "
        "training loop's own work with a model whose steps take milliseconds.",
    )
    parser.add_argument(
        "--task", default="rotten_tomatoes",
        help="Option of the task config group; --task-path switches to task=local.",
    )
    parser.add_argument("--task-path", default=None, help="CSV or JSONL file for task=local.")
    parser.add_argument(
        "--cache-dir", default=os.environ.get("EMOE_LAB_CACHE_DIR", str(REPO / ".cache")),
        help="Cache folder for tokenised data and cluster labels (the run's cache_dir).",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the batch order and the models.")
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE",
        help="Extra Hydra override applied to every variant; repeat for more.",
    )
    parser.add_argument(
        "--output", default=None, help="Results JSON path; default benchmarks/results/<name>.json."
    )
    return parser


def base_overrides(args: argparse.Namespace) -> list[str]:
    """Hydra overrides for the model and task chosen on the command line."""
    model = "tiny_bert" if args.tiny else args.model
    overrides = [f"model={model}", "logger=none", f"cache_dir={args.cache_dir}", f"seed={args.seed}"]
    if args.task_path:
        overrides += ["task=local", f"task.path={Path(args.task_path).resolve()}"]
    else:
        overrides.append(f"task={args.task}")
    return overrides + list(args.override)


def compose(overrides: Sequence[str]) -> Any:
    """Compose conf/config.yaml with `overrides`, as `python -m emoe_lab` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from emoe_lab.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def setup_torch(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# --- the machine record --------------------------------------------------------------------


def machine_record() -> dict[str, Any]:
    """Cores, CPU model and SIMD flags, memory, load average and library versions."""
    import torch

    model_name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model_name:
                model_name = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        model_name = platform.processor()
    record: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model_name,
        "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags],
        "memory_gib": _memory_gib(),
        "load_average_at_start": list(os.getloadavg()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }
    return record


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("torch", "transformers", "accelerate", "datasets", "tokenizers",
                    "scikit-learn", "k-means-constrained", "numpy", "joblib"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty-src" if dirty else "")


def run_record(args: argparse.Namespace) -> dict[str, Any]:
    """Return what every results JSON starts with: command, date, commit, machine and
    versions."""
    import torch

    import emoe_lab

    return {
        "command": " ".join(shlex.quote(part) for part in [Path(sys.executable).name, *sys.argv]),
        "package_path": str(Path(emoe_lab.__file__).parent),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": machine_record(),
        "versions": versions(),
        "torch_threads": torch.get_num_threads(),
        "arguments": vars(args),
    }


# --- timing --------------------------------------------------------------------------------


def interleave(
    variants: dict[str, Callable[[int], Stopwatch]], rounds: int, warmup: int, desc: str = "rounds",
) -> dict[str, dict[str, list[float]]]:
    """Call every variant once per round, in the same order (A B C A B C ...), and return the
    wall and CPU seconds of each call, warm-up rounds dropped. A variant takes the round index,
    so that all variants of one round can work on the same input, and returns the Stopwatch
    that timed its work."""
    from tqdm.auto import tqdm

    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in variants}
    for round_index in tqdm(range(warmup + rounds), desc=desc, leave=False):
        for name, call in variants.items():
            watch = call(round_index)
            if round_index >= warmup:
                times[name]["wall"].append(watch.seconds)
                times[name]["cpu"].append(watch.cpu_seconds)
    return times


def summarise(times: dict[str, dict[str, list[float]]], baseline: str | None = None) -> dict[str, dict]:
    """Median, minimum and count of each variant's wall seconds (and `cpu_` the same for CPU
    seconds), and against `baseline` the median of the per-round ratios, each comparing two
    calls made moments apart, and the ratio of the minimums."""
    summary = {}
    for name, clocks in times.items():
        entry: dict[str, Any] = {"n": len(clocks["wall"])}
        for clock, prefix in (("wall", ""), ("cpu", "cpu_")):
            values = clocks[clock]
            entry[f"{prefix}median_s"] = statistics.median(values)
            entry[f"{prefix}min_s"] = min(values)
            entry[f"{prefix}times_s"] = values
            if baseline is not None:
                base = times[baseline][clock]
                paired = [value / reference for value, reference in zip(values, base, strict=True)]
                entry[f"{prefix}ratio_median"] = statistics.median(paired)
                entry[f"{prefix}ratio_min"] = min(values) / min(base)
        summary[name] = entry
    return summary


class Stopwatch:
    """Context manager that stores the wall seconds of its block in `.seconds` and the CPU
    seconds of the whole process (all threads) in `.cpu_seconds`. On a shared machine the
    CPU seconds leave out the time the process waited for a core."""

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        self.cpu_seconds = time.process_time() - self.cpu_started


# --- output --------------------------------------------------------------------------------


def write_results(
    name: str, args: argparse.Namespace, payload: dict[str, Any], render: Callable[[dict], str]
) -> Path:
    """Write `payload` (the run record first) to --output, by default
    benchmarks/results/<name>.json, print its tables and write them next to it as <name>.md."""
    path = Path(args.output) if args.output else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload["machine"]["load_average_at_end"] = list(os.getloadavg())
    path.write_text(json.dumps({"benchmark": name, **payload}, indent=2, default=str) + "\n")

    machine = payload["machine"]
    tables = render(payload)
    header = (
        f"Command: `{payload['command']}`  \n"
        f"Date: {payload['date']}, commit {payload['git_commit']}, {machine['cores']} cores "
        f"{machine['cpu_model']} ({' '.join(machine['cpu_flags'])}), load average "
        f"{machine['load_average_at_start'][0]:.2f} at start and "
        f"{machine['load_average_at_end'][0]:.2f} at end  \n"
        f"torch {payload['versions']['torch']}, transformers {payload['versions']['transformers']}, "
        f"python {payload['versions']['python']}, {payload['torch_threads']} torch thread(s)"
    )
    path.with_suffix(".md").write_text(f"{header}\n\n{tables}\n")
    print(tables)
    print(f"\nwritten to {path} and {path.with_suffix('.md').name}")
    return path


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Format a Markdown table; floats below 100 get three decimals, larger ones one."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
