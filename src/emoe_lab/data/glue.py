"""GLUE tasks, read through the `datasets` library or from a local folder of GLUE TSV files.

GLUE's test labels are hidden, so both readers use the same policy: validation is a seeded
held-out part of the official train split, and test is the official validation (dev) split.
MNLI's matched dev set is the test split and its mismatched one is an extra evaluation split.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pandas as pd

from emoe_lab.errors import ConfigError

log = logging.getLogger(__name__)

GLUE_HUB_ID = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueSpec:
    """Columns and labels of one GLUE task.

    `tsv_columns` maps each column name used by the `datasets` version (and so by the task
    configs) to its header in the TSV files, or to its position when the files have no
    header. Labels are named as the `datasets` version names them.
    """

    text_columns: tuple[str, ...]
    label_names: tuple[str, ...]
    tsv_columns: dict[str, Any]
    has_header: bool = True
    # Official dev splits: (split name in `datasets`, TSV file) for the test split first,
    # then for each extra evaluation split, keyed by the name used here.
    dev_splits: dict[str, tuple[str, str]] = field(
        default_factory=lambda: {"test": ("validation", "dev.tsv")}
    )

    @property
    def is_regression(self) -> bool:
        return not self.label_names


GLUE_TASKS: dict[str, GlueSpec] = {
    # CoLA's train.tsv and dev.tsv have no header: source, label, mark, sentence.
    "cola": GlueSpec(
        ("sentence",), ("unacceptable", "acceptable"), {"sentence": 3, "label": 1}, has_header=False
    ),
    "sst2": GlueSpec(("sentence",), ("negative", "positive"), {"sentence": "sentence", "label": "label"}),
    "mrpc": GlueSpec(
        ("sentence1", "sentence2"),
        ("not_equivalent", "equivalent"),
        {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"},
    ),
    "qqp": GlueSpec(
        ("question1", "question2"),
        ("not_duplicate", "duplicate"),
        {"question1": "question1", "question2": "question2", "label": "is_duplicate"},
    ),
    "stsb": GlueSpec(
        ("sentence1", "sentence2"),
        (),
        {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"},
    ),
    "mnli": GlueSpec(
        ("premise", "hypothesis"),
        ("entailment", "neutral", "contradiction"),
        {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
        dev_splits={
            "test": ("validation_matched", "dev_matched.tsv"),
            "validation_mismatched": ("validation_mismatched", "dev_mismatched.tsv"),
        },
    ),
    "qnli": GlueSpec(
        ("question", "sentence"),
        ("entailment", "not_entailment"),
        {"question": "question", "sentence": "sentence", "label": "label"},
    ),
    "rte": GlueSpec(
        ("sentence1", "sentence2"),
        ("entailment", "not_entailment"),
        {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
    ),
    "wnli": GlueSpec(
        ("sentence1", "sentence2"),
        ("not_entailment", "entailment"),
        {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
    ),
}


def glue_spec(glue_name: str) -> GlueSpec:
    """Return the spec of a GLUE task, or raise ConfigError for an unknown name."""
    if glue_name not in GLUE_TASKS:
        raise ConfigError("task.glue_name", glue_name, f"one of {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[glue_name]


def glue_tsv_files(glue_name: str, folder: Path) -> dict[str, Path]:
    """Return the TSV file of each official split: train, then the dev files by the split
    names used here (test, and validation_mismatched for MNLI)."""
    spec = glue_spec(glue_name)
    files = {"train": folder / "train.tsv"}
    files.update({name: folder / tsv for name, (_, tsv) in spec.dev_splits.items()})
    return files


def read_glue_hub(glue_name: str) -> dict[str, pd.DataFrame]:
    """Read the official splits of a GLUE task through `datasets.load_dataset`.

    Returns train plus the dev splits under the names used here, each with the `datasets`
    column names and a `label` column of class ids (floats for STS-B).
    """
    spec = glue_spec(glue_name)
    try:
        splits = datasets.load_dataset(GLUE_HUB_ID, glue_name)
    except OSError as error:
        raise ConfigError(
            "task.source",
            "glue",
            f"access to the '{GLUE_HUB_ID}' data set on the Hugging Face hub or in the local "
            f"datasets cache (loading '{glue_name}' failed: {error})",
            "Offline, point the task at GLUE TSV files: "
            "task.source=glue_tsv task.path=<folder with train.tsv and dev.tsv>.",
        ) from error

    frames = {"train": splits["train"].to_pandas()}
    for name, (hub_split, _) in spec.dev_splits.items():
        frames[name] = splits[hub_split].to_pandas()
    return frames


def read_glue_tsv(glue_name: str, folder: Path) -> dict[str, pd.DataFrame]:
    """Read the official splits of a GLUE task from its TSV files in `folder`, renaming the
    columns to the `datasets` names. Rows with the label '-' or an empty label are dropped,
    because they have no gold label."""
    spec = glue_spec(glue_name)
    frames = {}
    for name, path in glue_tsv_files(glue_name, folder).items():
        frames[name] = _read_one_tsv(spec, path)
    return frames


def _read_one_tsv(spec: GlueSpec, path: Path) -> pd.DataFrame:
    if path.stat().st_size == 0:
        raise ConfigError("task.path", str(path), "a non-empty GLUE TSV file")

    # GLUE texts contain bare quote characters, so fields are split on tabs alone.
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))

    if spec.has_header:
        header, rows = rows[0], rows[1:]
        expected = spec.tsv_columns
        missing = [column for column in expected.values() if column not in header]
        if missing:
            raise ConfigError(
                "task.path", str(path), f"a GLUE TSV file with the columns {list(expected.values())}",
                f"Columns found: {header}. Missing: {missing}. Check task.glue_name.",
            )
        positions = {name: header.index(column) for name, column in expected.items()}
    else:
        positions = dict(spec.tsv_columns)

    width = max(positions.values()) + 1
    short = sum(1 for row in rows if len(row) < width)
    if short:
        log.warning("%s: skipped %d rows with fewer than %d fields", path, short, width)
    records = [{name: row[i] for name, i in positions.items()} for row in rows if len(row) >= width]
    frame = pd.DataFrame.from_records(records, columns=list(positions))

    unlabelled = frame["label"].isin(["-", ""])
    if unlabelled.any():
        log.info("%s: dropped %d rows without a gold label", path, int(unlabelled.sum()))
        frame = frame[~unlabelled]
    if spec.is_regression:
        frame = frame.assign(label=pd.to_numeric(frame["label"], errors="raise"))
    return frame
