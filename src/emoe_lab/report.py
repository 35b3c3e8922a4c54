"""Summarise a study from the `results.json` files under a folder into summary.csv,
summary.md and PNG figures. Run: python -m emoe_lab.report DIR [--out OUTDIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .report_data import (
    Collection,
    ReportInputError,
    load_results,
    metric_names,
    summarise,
    unfinished_cells,
)
from .report_markdown import render_markdown
from .report_plots import write_figures

log = logging.getLogger(__name__)

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"


@dataclass
class ReportFiles:
    """Outputs of write_report: the files written and the data behind them."""

    csv: Path
    markdown: Path
    figures: list[Path]
    collection: Collection
    summary: pd.DataFrame


def write_report(
    root: Path,
    out_dir: Path | None = None,
    figures: bool = True,
    figure_metrics: Sequence[str] = (),
    where: Sequence[str] = (),
) -> ReportFiles:
    """Read the results under `root` (those matching every `KEY=VALUE` of `where`) and
    write summary.csv, summary.md and the figures into `out_dir` (default `root`)."""
    root = Path(root)
    out_dir = Path(out_dir) if out_dir is not None else root
    collection = load_results(root, where)
    summary = summarise(collection.records)
    known = metric_names(summary)
    unknown = [metric for metric in figure_metrics if metric not in known]
    if unknown and known:
        raise ReportInputError(
            f"--metric {', '.join(unknown)}: not a metric of these results. They have "
            f"{', '.join(known)}."
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / SUMMARY_CSV
    summary.to_csv(csv_path, index=False)

    figure_paths: list[Path] = []
    if figures and not summary.empty:
        figure_paths = write_figures(collection.records, out_dir, list(figure_metrics))

    markdown_path = out_dir / SUMMARY_MD
    markdown_path.write_text(
        render_markdown(root, collection, summary, figure_paths, out_dir), encoding="utf-8"
    )
    return ReportFiles(csv_path, markdown_path, figure_paths, collection, summary)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m emoe_lab.report",
        description="Summarise the results.json files under a folder into summary.csv, "
        "summary.md and PNG figures.",
    )
    parser.add_argument(
        "dir", type=Path, help="Folder to search recursively, e.g. multirun/clusterer_ablation."
    )
    parser.add_argument("--out", type=Path, default=None, help="Folder for the outputs (default: DIR).")
    parser.add_argument("--no-figures", action="store_true", help="Write only summary.csv and summary.md.")
    parser.add_argument(
        "--metric",
        action="append",
        default=[],
        help="Metric to plot, e.g. test/accuracy; repeat for several (default: every test/ "
        "metric, or every validation/ metric when there is no test split).",
    )
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Summarise only the runs whose config has this value, e.g. --where train.lr=1e-4; "
        "repeat for several. Needed when one folder holds runs of different settings.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the report. Exit status 0 when a summary was written, 2 when the input folder
    is missing, contains no results file or no usable one, or mixes runs of different
    configs in one row (select one with --where)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    try:
        files = write_report(
            args.dir, args.out, figures=not args.no_figures, figure_metrics=args.metric, where=args.where
        )
    except ReportInputError as error:
        log.error("%s", error)
        return 2

    collection = files.collection
    for problem in collection.unreadable:
        log.warning("Unreadable results file %s: %s", problem.path, problem.reason)
    for problem in collection.unsupported:
        log.warning("Skipped %s: %s", problem.path, problem.reason)
    unfinished = unfinished_cells(collection.records)
    if unfinished:
        log.warning("%d cells did not complete; summary.md lists them", len(unfinished))

    log.info("Wrote %s, %s and %d figures", files.csv, files.markdown, len(files.figures))
    if not collection.records:
        log.error("None of the results files under %s could be used; summary.md lists why.", args.dir)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
