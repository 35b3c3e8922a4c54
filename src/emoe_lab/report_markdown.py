"""Render a study summary as Markdown: scores, differences from dense fine-tuning, active
neurons and expert sizes per model and task, the figures, then every problem found."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .report_data import (
    CONFIDENCE,
    GROUP_KEYS,
    Collection,
    metric_names,
    missing_cells,
    unfinished_cells,
)


def _fmt(value: float, digits: int = 4, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(cell).replace("|", "\\|").replace("\n", " ") for cell in row]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


GROUP_HEADER = ("moe", "clusterer", "gating", "N", "k", "budget")


def _group_cells(row: Any) -> list[str]:
    return [row["moe"], row["clusterer"], row["gating"], row["num_experts"], row["top_k"], row["budget"]]


def _score_lines(rows: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    body = []
    for _, row in rows.iterrows():
        scores = []
        for m in metrics:
            score = f"{_fmt(row[f'{m}_mean'])} ± {_fmt(row[f'{m}_std'])}"
            if row[f"{m}_n"] != row["n_seeds"]:
                score += f" (n={row[f'{m}_n']})"
            scores.append(score)
        body.append([*_group_cells(row), row["seeds"], *scores])
    return _table([*GROUP_HEADER, "seeds", *metrics], body)


def _difference_lines(rows: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    body = []
    for _, row in rows[rows["moe"] != "dense"].iterrows():
        cells = []
        for m in metrics:
            low, high = _fmt(row[f"{m}_diff_low"], sign=True), _fmt(row[f"{m}_diff_high"], sign=True)
            pairs = row[f"{m}_pairs"]
            cells.append(f"{_fmt(row[f'{m}_diff'], sign=True)} [{low}, {high}] ({pairs} pairs)")
        body.append([*_group_cells(row), *cells])
    if not body:
        return ["No EMoE groups to compare."]
    return _table([*GROUP_HEADER, *metrics], body)


def _compute_lines(rows: pd.DataFrame) -> list[str]:
    body = []
    for _, row in rows.iterrows():
        if math.isfinite(row["expert_size_min"]):
            sizes = f"{row['expert_size_min']:.0f} to {row['expert_size_max']:.0f}"
        else:
            sizes = "n/a"
        body.append(
            [
                *_group_cells(row),
                _fmt(row["active_fraction"], 3),
                _fmt(row["experts_per_layer"], 1),
                sizes,
                _fmt(row["expert_size_cv"], 3),
            ]
        )
    header = [*GROUP_HEADER, "active fraction", "experts per layer", "expert size", "size CV"]
    return _table(header, body)


def _problem_lines(collection: Collection) -> list[str]:
    lines = ["## Failed, interrupted and unfinished cells", ""]
    unfinished = unfinished_cells(collection.records)
    if unfinished:
        lines += _table(
            ["status", "model", "task", *GROUP_HEADER, "seed", "error", "results file"],
            (
                [r.status, *(r.cell[k] for k in GROUP_KEYS), r.cell["seed"], r.error or "-", r.path]
                for r in unfinished
            ),
        )
    else:
        lines.append("None.")

    lines += ["", "## Missing cells", ""]
    lines.append("A seed that other groups of the same model and task have, with no results file here.")
    lines.append("")
    missing = missing_cells(collection.records)
    if missing:
        lines += _table(
            ["model", "task", *GROUP_HEADER, "missing seeds"],
            ([*group, " ".join(seeds)] for group, seeds in missing),
        )
    else:
        lines.append("None.")

    lines += ["", "## Unreadable results files", ""]
    if collection.unreadable:
        lines += _table(["results file", "reason"], ([p.path, p.reason] for p in collection.unreadable))
    else:
        lines.append("None.")

    lines += ["", "## Results files of another schema version", ""]
    if collection.unsupported:
        lines += _table(["results file", "reason"], ([p.path, p.reason] for p in collection.unsupported))
    else:
        lines.append("None.")

    lines += ["", "## Duplicate results", ""]
    if collection.duplicates:
        lines.append(
            "More than one results file for the same cell; the report uses a completed one, "
            "the newest if several. Pass a narrower folder to choose another."
        )
        lines.append("")
        lines += _table(
            ["ignored", "status", "used instead"],
            ([ignored.path, ignored.status, used.path] for ignored, used in collection.duplicates),
        )
    else:
        lines.append("None.")
    return lines


def render_markdown(
    root: Path, collection: Collection, summary: pd.DataFrame, figures: Sequence[Path], out_dir: Path
) -> str:
    """Return summary.md: per model and task the scores, the differences from dense and
    the compute table, then the figures and every problem found."""
    statuses = pd.Series([r.status for r in collection.records], dtype=object).value_counts()
    counts = ", ".join(f"{n} {status}" for status, n in statuses.items()) or "none usable"
    lines = [
        f"# Study summary: {root}",
        "",
        f"Results files: {counts}; {len(collection.unreadable)} unreadable, "
        f"{len(collection.unsupported)} of another schema version.",
        "",
        "Scores are mean ± std (ddof=1) over seeds. Differences are paired by seed against "
        f"dense fine-tuning of the same model and task, with a {CONFIDENCE:.0%} t-interval.",
    ]

    metrics = metric_names(summary) if not summary.empty else []
    if not summary.empty:
        for (model, task), rows in summary.groupby(["model", "task"], sort=False):
            lines += ["", f"## {model} on {task}", "", "### Scores", ""]
            lines += _score_lines(rows, metrics)
            lines += ["", "### Difference from dense fine-tuning", ""]
            lines += _difference_lines(rows, metrics)
            lines += ["", "### Active neurons and expert sizes", ""]
            lines += _compute_lines(rows)

    if figures:
        lines += ["", "## Figures", ""]
        for figure in figures:
            relative = figure.relative_to(out_dir) if figure.is_relative_to(out_dir) else figure
            lines += [f"![{figure.stem}]({relative.as_posix()})", ""]

    lines += [""] + _problem_lines(collection)
    return "\n".join(lines) + "\n"
