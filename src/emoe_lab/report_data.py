"""Read the `results.json` files of a study and compute its statistics: per-group means
over seeds, paired differences from dense fine-tuning with t-intervals, expert-size
spread, and the failed, interrupted and missing cells."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from .results import RESULTS_FILE, SCHEMA_VERSION

log = logging.getLogger(__name__)

# One summary row per combination of these cell keys. `seed` varies inside a group.
GROUP_KEYS = ("model", "task", "moe", "clusterer", "gating", "num_experts", "top_k", "budget")
CELL_KEYS = (*GROUP_KEYS, "seed")

# Shown in place of a cell key that does not apply, e.g. num_experts of a dense run.
NOT_APPLICABLE = "-"

# Display order of known options. Unknown ones follow in alphabetical order.
CLUSTERER_ORDER = ("balanced_kmeans", "kmeans", "hierarchical", "dbscan", "random")
GATING_ORDER = ("avg_k", "learned", "random")
SPLIT_ORDER = ("validation", "test")
METRIC_ORDER = ("accuracy", "f1", "f1_binary", "mcc", "pearson", "spearman")

CONFIDENCE = 0.95

# Config keys that do not change what a run computes. Runs that differ only in these (or
# in the seed) share a summary row.
INERT_KEYS = frozenset({
    "seed", "study", "cache_dir",
    "train.device", "train.num_workers", "train.eval_batch_size", "train.log_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.keep_checkpoints_on_success",
    "train.save_model", "train.torch_threads",
})
INERT_SECTIONS = ("logger",)
# Sections that every run of one model and task must share, since the paired difference
# compares each row with dense fine-tuning at the same budget.
SHARED_SECTIONS = ("model", "task", "train")
# Sections that a dense run carries but does not use.
EXPERT_SECTIONS = ("moe", "clusterer", "gating")


@dataclass
class RunRecord:
    """One readable results file of the current schema."""

    path: Path
    status: str
    cell: dict[str, Any]
    metrics: dict[str, float]
    active_fraction: float | None
    layer_sizes: list[list[int]]
    error: str
    finished_at: str
    # The run's resolved config as flat dotted keys, e.g. {"train.lr": 0.0001}.
    config: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        """Return the config keys that decide what the run computes: all of them but the
        seed and the inert ones, and for dense runs none of the expert sections."""
        skip = INERT_SECTIONS + (EXPERT_SECTIONS if self.cell["moe"] == "dense" else ())
        return {
            key: value
            for key, value in self.config.items()
            if key not in INERT_KEYS and key.split(".", 1)[0] not in skip
        }

    def group(self) -> tuple[str, ...]:
        return tuple(self.cell[key] for key in GROUP_KEYS)


@dataclass
class Problem:
    """A results file that the report could not use, and why."""

    path: Path
    reason: str


@dataclass
class Collection:
    """Everything found under a folder: usable records and the files that were not."""

    records: list[RunRecord] = field(default_factory=list)
    unreadable: list[Problem] = field(default_factory=list)
    unsupported: list[Problem] = field(default_factory=list)
    duplicates: list[tuple[RunRecord, RunRecord]] = field(default_factory=list)


class ReportInputError(Exception):
    """The folder given to the report cannot be summarised at all."""


# ---------------------------------------------------------------------------- reading


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _cell_value(value: Any) -> str:
    if value is None:
        return NOT_APPLICABLE
    return str(value)


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def parse_record(path: Path, data: Any) -> RunRecord:
    """Turn the parsed content of a results file into a RunRecord. Raise ValueError
    naming the first key that is missing or of the wrong type."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, found {type(data).__name__}")
    status = data.get("status")
    if not isinstance(status, str):
        raise ValueError("missing key 'status'")
    cell = data.get("cell")
    if not isinstance(cell, dict):
        raise ValueError("missing key 'cell'")
    absent = [key for key in CELL_KEYS if key not in cell]
    if absent:
        raise ValueError(f"'cell' is missing the keys {absent}")

    metrics = data.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise ValueError("'metrics' is not an object")
    moe = data.get("moe") or {}
    layers = moe.get("layers") or []
    error = data.get("error") or {}

    return RunRecord(
        path=path,
        status=status,
        cell={key: _cell_value(cell[key]) for key in CELL_KEYS},
        metrics={name: _as_float(value) for name, value in metrics.items()},
        active_fraction=None if moe.get("active_fraction") is None else _as_float(moe["active_fraction"]),
        layer_sizes=[list(layer.get("expert_sizes") or []) for layer in layers],
        error=f"{error.get('type', '')}: {error.get('message', '')}" if error else "",
        finished_at=str(data.get("finished_at") or data.get("started_at") or ""),
        config=flatten(data.get("config") or {}),
    )


def read_one(path: Path, collection: Collection) -> None:
    """Read one results file into `collection`, as a record or as a listed problem."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        collection.unreadable.append(Problem(path, f"cannot read the file: {error}"))
        return
    except json.JSONDecodeError as error:
        collection.unreadable.append(Problem(path, f"invalid JSON (truncated?): {error}"))
        return

    version = data.get("schema_version") if isinstance(data, dict) else None
    if isinstance(data, dict) and version != SCHEMA_VERSION:
        collection.unsupported.append(
            Problem(path, f"schema_version {version!r}; this report reads schema_version {SCHEMA_VERSION}")
        )
        return

    try:
        collection.records.append(parse_record(path, data))
    except ValueError as error:
        collection.unreadable.append(Problem(path, f"not a results file: {error}"))


def _preference(record: RunRecord) -> tuple[bool, str]:
    return (record.status == "completed", record.finished_at)


def drop_duplicates(collection: Collection) -> None:
    """Keep one record per cell (group and seed): a completed one before any other, then
    the one that finished last. The others go to `collection.duplicates`."""
    best: dict[tuple[str, ...], RunRecord] = {}
    for record in collection.records:
        key = tuple(record.cell[name] for name in CELL_KEYS)
        current = best.get(key)
        if current is None:
            best[key] = record
        elif _preference(record) > _preference(current):
            collection.duplicates.append((current, record))
            best[key] = record
        else:
            collection.duplicates.append((record, current))
    collection.records = list(best.values())


def matches(value: Any, expected: str) -> bool:
    """Return whether a config value equals `expected`, a value as written on a command
    line: `1e-4` matches 0.0001, `true` matches True, `[-1,-3]` matches [-1, -3]."""
    parsed = yaml.safe_load(expected)
    if parsed == value or str(value) == expected:
        return True
    if isinstance(value, bool) or isinstance(parsed, bool):
        return False
    try:
        return float(parsed) == float(value)
    except (TypeError, ValueError):
        return False


def parse_where(terms: Sequence[str]) -> dict[str, str]:
    """Parse `KEY=VALUE` terms; raise ReportInputError naming a term without `=`."""
    where = {}
    for term in terms:
        key, sep, value = term.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ReportInputError(f"--where {term!r} is not KEY=VALUE, e.g. --where train.lr=1e-4")
        if key in where:
            raise ReportInputError(
                f"--where names {key} twice ({where[key]} and {value.strip()}); a run has one "
                "value per key, so give each key once and report each value separately."
            )
        where[key] = value.strip()
    return where


def select(records: list[RunRecord], where: dict[str, str]) -> list[RunRecord]:
    """Keep the records whose config matches every `where` term. Raise ReportInputError
    for a key that no record has, or when no record matches."""
    for key in where:
        if not any(key in record.config for record in records):
            raise ReportInputError(
                f"--where {key}: no results file has this config key. Keys are dotted paths of "
                "the run config, e.g. train.lr or moe.layers."
            )
    selected = [
        record for record in records
        if all(key in record.config and matches(record.config[key], value) for key, value in where.items())
    ]
    if not selected:
        terms = " ".join(f"{key}={value}" for key, value in where.items())
        raise ReportInputError(f"no run matches --where {terms}")
    return selected


@dataclass
class Conflict:
    """A config key whose value differs between runs that would share a summary row or
    be compared with the same dense baseline."""

    key: str
    # Each value, as JSON text, with the runs that have it.
    runs: dict[str, list[Path]]


def find_conflicts(records: Sequence[RunRecord]) -> list[Conflict]:
    """Return the config keys that differ within a summary row (any key but the seed and
    the inert ones) or between runs of one model and task (the model, task and train
    sections), with the runs holding each value."""
    scopes: dict[tuple, list[tuple[RunRecord, dict[str, Any]]]] = {}
    for record in records:
        settings = record.settings()
        shared = {k: v for k, v in settings.items() if k.split(".", 1)[0] in SHARED_SECTIONS}
        scopes.setdefault(("row", *record.group()), []).append((record, settings))
        scopes.setdefault(("task", *record.group()[:2]), []).append((record, shared))

    runs_by_key: dict[str, dict[str, set[Path]]] = {}
    for members in scopes.values():
        keys = set().union(*(settings for _, settings in members))
        for key in keys:
            values: dict[str, set[Path]] = {}
            for record, settings in members:
                text = json.dumps(settings[key]) if key in settings else "(absent)"
                values.setdefault(text, set()).add(record.path)
            if len(values) > 1:
                merged = runs_by_key.setdefault(key, {})
                for text, paths in values.items():
                    merged.setdefault(text, set()).update(paths)
    return [
        Conflict(key, {text: sorted(paths) for text, paths in sorted(values.items())})
        for key, values in sorted(runs_by_key.items())
    ]


def conflict_message(conflicts: Sequence[Conflict], limit: int = 8) -> str:
    lines = ["runs that would share a summary row, or a dense baseline, differ in these config keys:"]
    for conflict in conflicts[:limit]:
        parts = [
            f"{text} in {len(paths)} run(s), e.g. {paths[0].parent.name}"
            for text, paths in conflict.runs.items()
        ]
        lines.append(f"  {conflict.key}: " + "; ".join(parts))
    if len(conflicts) > limit:
        lines.append(f"  ... and {len(conflicts) - limit} more keys")
    example = conflicts[0]
    value = next(iter(example.runs))
    lines.append(
        "A row averages over seeds only, so these runs cannot be summarised together. Report one "
        f"setting at a time with --where KEY=VALUE (e.g. --where {example.key}={value}), or pass "
        "a folder that holds runs of one setting."
    )
    return "\n".join(lines)


def load_results(root: Path, where: Sequence[str] = ()) -> Collection:
    """Read every results.json under `root`, recursively, keeping the runs whose config
    matches every `KEY=VALUE` term of `where`. Raise ReportInputError when `root` is not a
    folder or contains no results file, or when runs of different configs would share a
    summary row or a dense baseline."""
    root = Path(root)
    if not root.exists():
        raise ReportInputError(
            f"folder not found: {root}. Pass a multirun folder, e.g. multirun/clusterer_ablation."
        )
    if not root.is_dir():
        raise ReportInputError(f"not a folder: {root}. Pass the folder that contains the job folders.")

    paths = sorted(root.rglob(RESULTS_FILE))
    if not paths:
        raise ReportInputError(
            f"no {RESULTS_FILE} under {root}. Each job of python -m emoe_lab writes one in its "
            "output folder; pass the multirun folder of a study (e.g. multirun/clusterer_ablation)."
        )

    collection = Collection()
    for path in paths:
        read_one(path, collection)
    if where and collection.records:
        collection.records = select(collection.records, parse_where(where))
    # Only completed runs enter a row's statistics; the others are listed as they are.
    conflicts = find_conflicts([record for record in collection.records if record.status == "completed"])
    if conflicts:
        raise ReportInputError(conflict_message(conflicts))
    drop_duplicates(collection)
    return collection


# ---------------------------------------------------------------------------- ordering


def rank_in_order(value: str, order: Sequence[str]) -> tuple[int, str]:
    return (order.index(value), "") if value in order else (len(order), value)


def metric_sort_key(name: str) -> tuple:
    """Order metrics as validation/* then test/* then other splits, known metrics first."""
    split, _, metric = name.partition("/")
    return (rank_in_order(split, SPLIT_ORDER), rank_in_order(metric, METRIC_ORDER))


def number_sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def group_sort_key(group: Sequence[str]) -> tuple:
    """Order groups by model and task, dense first, then clusterer, gating and sizes."""
    cell = dict(zip(GROUP_KEYS, group, strict=True))
    return (
        cell["model"],
        cell["task"],
        cell["moe"] != "dense",
        rank_in_order(cell["clusterer"], CLUSTERER_ORDER),
        rank_in_order(cell["gating"], GATING_ORDER),
        number_sort_key(cell["num_experts"]),
        number_sort_key(cell["top_k"]),
        cell["budget"],
    )


# ---------------------------------------------------------------------------- statistics


@dataclass
class PairedDifference:
    """Mean of (group - dense) over the seeds both have, with a t-interval."""

    mean: float
    low: float
    high: float
    pairs: int


def paired_difference(
    values: dict[str, float], baseline: dict[str, float], confidence: float = CONFIDENCE
) -> PairedDifference:
    """Pair `values` with `baseline` by seed and return the mean difference with its
    two-sided t-interval (scipy.stats.t, n - 1 degrees of freedom). With fewer than two
    pairs the interval is NaN."""
    seeds = sorted(set(values) & set(baseline), key=number_sort_key)
    diffs = np.array([values[s] - baseline[s] for s in seeds], dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    n = len(diffs)
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0)

    mean = float(diffs.mean())
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, n)

    half_width = stats.t.ppf(0.5 + confidence / 2, n - 1) * diffs.std(ddof=1) / math.sqrt(n)
    return PairedDifference(mean, mean - float(half_width), mean + float(half_width), n)


def _size_spread(records: Iterable[RunRecord]) -> dict[str, float]:
    """Experts per layer, smallest and largest expert, and the mean coefficient of
    variation (population std / mean) of expert sizes within a layer."""
    counts, smallest, largest, cvs = [], [], [], []
    for record in records:
        for sizes in record.layer_sizes:
            if not sizes:
                continue
            array = np.asarray(sizes, dtype=float)
            counts.append(len(array))
            smallest.append(array.min())
            largest.append(array.max())
            cvs.append(array.std() / array.mean() if array.mean() > 0 else math.nan)
    if not counts:
        return {
            "experts_per_layer": math.nan,
            "expert_size_min": math.nan,
            "expert_size_max": math.nan,
            "expert_size_cv": math.nan,
        }
    return {
        "experts_per_layer": float(np.mean(counts)),
        "expert_size_min": float(np.min(smallest)),
        "expert_size_max": float(np.max(largest)),
        "expert_size_cv": float(np.nanmean(cvs)) if np.isfinite(cvs).any() else math.nan,
    }


def _metric_values(records: Iterable[RunRecord], metric: str) -> dict[str, float]:
    values = {}
    for record in records:
        value = record.metrics.get(metric, math.nan)
        if math.isfinite(value):
            values[record.cell["seed"]] = value
    return values


def summarise(records: Sequence[RunRecord]) -> pd.DataFrame:
    """Return one row per group of completed runs: n seeds, then per metric the mean, the
    std (ddof=1), n, and the paired difference from the dense group of the same model and
    task. Then the mean active fraction and the expert-size spread."""
    completed = [record for record in records if record.status == "completed"]
    metrics = sorted({name for record in completed for name in record.metrics}, key=metric_sort_key)

    groups: dict[tuple[str, ...], list[RunRecord]] = {}
    for record in completed:
        groups.setdefault(record.group(), []).append(record)

    dense = {(group[0], group[1]): members for group, members in groups.items() if group[2] == "dense"}

    rows = []
    for group in sorted(groups, key=group_sort_key):
        members = sorted(groups[group], key=lambda r: number_sort_key(r.cell["seed"]))
        baseline = dense.get((group[0], group[1]), [])
        is_dense = group[2] == "dense"
        row: dict[str, Any] = dict(zip(GROUP_KEYS, group, strict=True))
        row["n_seeds"] = len(members)
        row["seeds"] = " ".join(r.cell["seed"] for r in members)

        for metric in metrics:
            values = _metric_values(members, metric)
            array = np.array(list(values.values()), dtype=float)
            row[f"{metric}_mean"] = float(array.mean()) if len(array) else math.nan
            row[f"{metric}_std"] = float(array.std(ddof=1)) if len(array) > 1 else math.nan
            row[f"{metric}_n"] = len(array)

            difference = PairedDifference(math.nan, math.nan, math.nan, 0)
            if not is_dense:
                difference = paired_difference(values, _metric_values(baseline, metric))
            row[f"{metric}_diff"] = difference.mean
            row[f"{metric}_diff_low"] = difference.low
            row[f"{metric}_diff_high"] = difference.high
            row[f"{metric}_pairs"] = difference.pairs

        fractions = [r.active_fraction for r in members if r.active_fraction is not None]
        fractions = [f for f in fractions if math.isfinite(f)]
        row["active_fraction"] = float(np.mean(fractions)) if fractions else math.nan
        row |= _size_spread(members)
        rows.append(row)

    return pd.DataFrame(rows)


def metric_names(summary: pd.DataFrame) -> list[str]:
    """Return the metrics that a summary frame has columns for, in display order."""
    names = [column[: -len("_mean")] for column in summary.columns if column.endswith("_mean")]
    return sorted(names, key=metric_sort_key)


# ---------------------------------------------------------------------------- problems


def unfinished_cells(records: Sequence[RunRecord]) -> list[RunRecord]:
    """Return the records whose status is not completed: failed, interrupted, or still
    marked running (a live job, or one killed before it could write its status)."""
    unfinished = [record for record in records if record.status != "completed"]
    return sorted(unfinished, key=lambda r: (group_sort_key(r.group()), number_sort_key(r.cell["seed"])))


def missing_cells(records: Sequence[RunRecord]) -> list[tuple[tuple[str, ...], list[str]]]:
    """Return (group, seeds) for each group that has no results file for a seed that
    another group of the same model and task has, whatever that file's status."""
    seeds_by_task: dict[tuple[str, str], set[str]] = {}
    seeds_by_group: dict[tuple[str, ...], set[str]] = {}
    for record in records:
        group = record.group()
        seeds_by_task.setdefault(group[:2], set()).add(record.cell["seed"])
        seeds_by_group.setdefault(group, set()).add(record.cell["seed"])

    missing = []
    for group in sorted(seeds_by_group, key=group_sort_key):
        absent = seeds_by_task[group[:2]] - seeds_by_group[group]
        if absent:
            missing.append((group, sorted(absent, key=number_sort_key)))
    return missing
