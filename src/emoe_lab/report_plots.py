"""Figures of a study report: one bar chart per ablation (clusterers, gatings) against the
dense baseline, and the distribution of expert sizes per clusterer.

The figures are `matplotlib.figure.Figure` objects, not pyplot ones, so drawing them
needs no display and leaves pyplot's backend alone; `savefig` renders PNG with Agg.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .report_data import (
    CLUSTERER_ORDER,
    GATING_ORDER,
    RunRecord,
    metric_sort_key,
    number_sort_key,
    rank_in_order,
)

log = logging.getLogger(__name__)

# Cell keys that fix one comparison: a figure never mixes runs that differ in these.
SLICE_KEYS = ("model", "task", "num_experts", "top_k", "budget")
FIGURE_DPI = 120
FACTORS = {"clusterer": ("gating", CLUSTERER_ORDER), "gating": ("clusterer", GATING_ORDER)}


def _slug(*parts: str) -> str:
    text = "__".join(parts)
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text)


def default_metrics(records: Sequence[RunRecord]) -> list[str]:
    """Return every test/ metric of the completed runs, or every validation/ metric when
    no run has a test split."""
    names = {name for r in records if r.status == "completed" for name in r.metrics}
    for split in ("test/", "validation/"):
        chosen = sorted((n for n in names if n.startswith(split)), key=metric_sort_key)
        if chosen:
            return chosen
    return sorted(names, key=metric_sort_key)


def _values(records: Sequence[RunRecord], metric: str) -> np.ndarray:
    values = [r.metrics.get(metric, math.nan) for r in records]
    array = np.asarray(values, dtype=float)
    return array[np.isfinite(array)]


def _draw_dense(axis: Axes, dense: Sequence[RunRecord], metric: str) -> list[float]:
    """Draw the dense baseline as a line at its mean and a band of ± one std."""
    values = _values(dense, metric)
    if not len(values):
        return []
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    axis.axhspan(mean - std, mean + std, color="grey", alpha=0.2, lw=0)
    axis.axhline(mean, color="black", ls="--", lw=1, label=f"dense, mean ± std (n={len(values)})")
    return [mean - std, mean + std]


def _draw_panel(
    axis: Axes,
    runs: Sequence[RunRecord],
    dense: Sequence[RunRecord],
    factor: str,
    series_key: str,
    levels: list[str],
    series: list[str],
    metric: str,
) -> None:
    """Draw grouped bars (mean, error bar = std with ddof=1) with the per-seed points."""
    width = 0.8 / len(series)
    rng = np.random.default_rng(0)
    extent = _draw_dense(axis, dense, metric)

    for index, name in enumerate(series):
        offsets = np.arange(len(levels)) - 0.4 + width * (index + 0.5)
        means, stds = [], []
        for position, level in zip(offsets, levels, strict=True):
            members = [r for r in runs if r.cell[factor] == level and r.cell[series_key] == name]
            values = _values(members, metric)
            means.append(values.mean() if len(values) else math.nan)
            stds.append(values.std(ddof=1) if len(values) > 1 else 0.0)
            jitter = rng.uniform(-width / 4, width / 4, len(values))
            axis.scatter(position + jitter, values, s=12, color="black", zorder=3)
            extent += list(values)
        label = name if len(series) > 1 else None
        axis.bar(offsets, means, width=width * 0.9, yerr=stds, capsize=3, label=label, alpha=0.8)

    # NOTE: the y axis covers the data, not zero, because differences of about one point
    # between clusterers would not be visible on a 0 to 1 axis.
    finite = [v for v in extent if math.isfinite(v)]
    if finite:
        low, high = min(finite), max(finite)
        margin = max((high - low) * 0.15, 0.005)
        axis.set_ylim(low - margin, high + margin)
    axis.set_xticks(np.arange(len(levels)), levels, rotation=30, ha="right")
    axis.set_title(metric)


def ablation_figure(
    runs: Sequence[RunRecord],
    dense: Sequence[RunRecord],
    factor: str,
    metrics: Sequence[str],
    title: str,
) -> Figure:
    """Draw one panel per metric: bars per value of `factor` (clusterer or gating), one
    bar series per value of the other factor, the dense baseline as a line with a band."""
    series_key, order = FACTORS[factor]
    levels = sorted({r.cell[factor] for r in runs}, key=lambda v: rank_in_order(v, order))
    other_order = FACTORS[series_key][1]
    series = sorted({r.cell[series_key] for r in runs}, key=lambda v: rank_in_order(v, other_order))

    figure = Figure(figsize=(4.2 * len(metrics), 4.4), layout="constrained")
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    for axis, metric in zip(axes, metrics, strict=True):
        _draw_panel(axis, runs, dense, factor, series_key, levels, series, metric)
    # Below the panels, where the legend cannot cover bars or points.
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(
        handles, labels, loc="outside lower center", ncols=max(len(labels), 1), fontsize="small",
        title=series_key if len(series) > 1 else None,
    )
    figure.suptitle(title)
    return figure


def expert_size_figure(runs: Sequence[RunRecord], title: str) -> Figure:
    """Draw a box plot of expert sizes per clusterer, pooled over layers and seeds, with
    a dashed line at the size of an equal split (d_ff / number of experts)."""
    sizes_by_clusterer: dict[str, list[int]] = {}
    seen: set[tuple[str, str, int]] = set()
    equal_sizes = []
    for record in runs:
        for index, sizes in enumerate(record.layer_sizes):
            # Gatings of one seed share the clustering, so count each (seed, layer) once.
            key = (record.cell["clusterer"], record.cell["seed"], index)
            if not sizes or key in seen:
                continue
            seen.add(key)
            sizes_by_clusterer.setdefault(record.cell["clusterer"], []).extend(sizes)
            if record.cell["num_experts"].isdigit():
                equal_sizes.append(sum(sizes) / int(record.cell["num_experts"]))

    clusterers = sorted(sizes_by_clusterer, key=lambda v: rank_in_order(v, CLUSTERER_ORDER))
    data = [sizes_by_clusterer[name] for name in clusterers]
    figure = Figure(figsize=(1.3 * len(clusterers) + 2.5, 4), layout="tight")
    axis = figure.subplots()
    axis.boxplot(data, showfliers=False)
    rng = np.random.default_rng(0)
    for position, values in enumerate(data, start=1):
        jitter = rng.uniform(-0.15, 0.15, len(values))
        axis.scatter(position + jitter, values, s=8, alpha=0.5, color="black", zorder=3)
    if equal_sizes:
        axis.axhline(float(np.median(equal_sizes)), color="grey", ls="--", lw=1, label="d_ff / N")
        axis.legend(fontsize="small")
    axis.set_xticks(np.arange(1, len(clusterers) + 1), clusterers, rotation=30, ha="right")
    axis.set_ylabel("neurons per expert")
    axis.set_title(title)
    return figure


def comparison_slices(
    records: Sequence[RunRecord],
) -> list[tuple[tuple[str, ...], list[RunRecord], list[RunRecord]]]:
    """Group the completed EMoE runs by slice (model, task, N, k, budget) and return, per
    slice, its key, its runs and the completed dense runs of the same model and task."""
    completed = [r for r in records if r.status == "completed"]
    slices: dict[tuple[str, ...], list[RunRecord]] = {}
    for record in completed:
        if record.cell["moe"] != "dense":
            slices.setdefault(tuple(record.cell[k] for k in SLICE_KEYS), []).append(record)

    result = []
    for key in sorted(slices, key=lambda k: tuple(number_sort_key(v) for v in k)):
        model, task = key[0], key[1]
        dense = [
            r
            for r in completed
            if r.cell["moe"] == "dense" and r.cell["model"] == model and r.cell["task"] == task
        ]
        result.append((key, slices[key], dense))
    return result


def write_figures(records: Sequence[RunRecord], out_dir: Path, metrics: Sequence[str] = ()) -> list[Path]:
    """Write every figure that the completed runs support and return their paths: an
    ablation chart per factor with at least two values in a slice (model, task, N, k,
    budget), and an expert-size chart per slice."""
    metrics = list(metrics) or default_metrics(records)
    if not metrics:
        return []

    paths = []
    for key, runs, dense in comparison_slices(records):
        model, task, num_experts, top_k, budget = key
        setting = f"N={num_experts}, k={top_k}, budget={budget}"
        suffix = f"N{num_experts}_k{top_k}_{budget}"

        for factor in FACTORS:
            if len({r.cell[factor] for r in runs}) < 2:
                continue
            path = out_dir / (_slug(f"{factor}s", model, task, suffix) + ".png")
            title = f"{factor.capitalize()}s on {model} / {task} ({setting})"
            ablation_figure(runs, dense, factor, metrics, title).savefig(path, dpi=FIGURE_DPI)
            paths.append(path)

        if any(r.layer_sizes for r in runs):
            path = out_dir / (_slug("expert_sizes", model, task, suffix) + ".png")
            title = f"Expert sizes on {model} ({setting})"
            expert_size_figure(runs, title).savefig(path, dpi=FIGURE_DPI)
            paths.append(path)

    log.info("Wrote %d figures to %s", len(paths), out_dir)
    return paths
