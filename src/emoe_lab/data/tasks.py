"""Load a classification or regression task as tokenised train, validation and test
datasets, cached on disk, with the checks that catch a bad task config before training."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from emoe_lab.data import glue
from emoe_lab.data.sources import (
    TASK_SOURCES,
    RawTask,
    is_regression_task,
    locate_source,
    read_source,
    source_identity,
)
from emoe_lab.data.splits import shuffle_rows
from emoe_lab.errors import ConfigError
from emoe_lab.metrics import check_metric_names

log = logging.getLogger(__name__)

# Bump when the layout of the cached datasets changes, so that old caches are not read.
CACHE_FORMAT = 1
META_FILE = "emoe_lab_task.json"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TOKENIZE_CHUNK = 1000


@dataclass
class TaskData:
    """Tokenised splits of one task and what the trainer needs to score them.

    Each dataset has the columns input_ids, attention_mask, token_type_ids (when the
    tokenizer makes them) and labels (int64 class ids, or float32 for regression). Examples
    are not padded; `make_collator` pads each batch. For regression, num_labels is 1 and
    label_names contains one name.
    """

    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset
    label_names: list[str]
    num_labels: int
    is_regression: bool
    metrics: list[str]
    main_metric: str
    extra_eval: dict[str, datasets.Dataset] = field(default_factory=dict)


# --- config checks ------------------------------------------------------------------------


def validate_task_config(task_cfg: Any) -> None:
    """Raise ConfigError or MissingPackageError for a task that cannot load: an unknown
    source or metric, bad fractions or columns, a GLUE name or metric kind that does not
    fit, or a missing package, file or folder. Reads no data."""
    try:
        _check_fields(task_cfg)
        locate_source(task_cfg)
    except MissingMandatoryValue as error:
        key = getattr(error, "full_key", "") or "path"
        if not key.startswith("task."):
            key = f"task.{key}"
        raise ConfigError(
            key, "???", "a value", f"Set it on the command line, e.g. {key}=<value>."
        ) from error


def _check_fields(task_cfg: Any) -> None:
    source = task_cfg.source
    if source not in TASK_SOURCES:
        raise ConfigError("task.source", source, f"one of {list(TASK_SOURCES)}")

    metrics = list(task_cfg.metrics)
    check_metric_names(metrics)
    if task_cfg.main_metric not in metrics:
        raise ConfigError("task.main_metric", task_cfg.main_metric, f"one of task.metrics {metrics}")
    is_regression = is_regression_task(task_cfg)

    _check_fractions(task_cfg)
    if len(task_cfg.text_columns) > 2:
        raise ConfigError(
            "task.text_columns", list(task_cfg.text_columns), "one column, or two for sentence pairs"
        )
    label_names = [str(name) for name in task_cfg.label_names]
    if len(set(label_names)) != len(label_names):
        raise ConfigError("task.label_names", label_names, "distinct names")
    if label_names and len(label_names) < 2 and not is_regression:
        raise ConfigError("task.label_names", label_names, "at least 2 classes, or [] to infer them")

    if source in ("rotten_tomatoes", "bbc_news") and is_regression:
        raise ConfigError("task.metrics", metrics, f"classification metrics for {source}")
    if source in ("glue", "glue_tsv"):
        spec = glue.glue_spec(task_cfg.glue_name)
        if spec.is_regression != is_regression:
            kind = "pearson/spearman" if spec.is_regression else "classification metrics"
            raise ConfigError("task.metrics", metrics, f"{kind} for GLUE {task_cfg.glue_name}")
    if source == "local":
        if not task_cfg.text_columns:
            raise ConfigError("task.text_columns", [], "one or two column names of the text")
        if not task_cfg.label_column:
            raise ConfigError("task.label_column", task_cfg.label_column, "the label's column name")


def _check_fractions(task_cfg: Any) -> None:
    validation, test = task_cfg.validation_fraction, task_cfg.test_fraction
    if not 0 < validation < 1:
        raise ConfigError("task.validation_fraction", validation, "a number between 0 and 1")
    if task_cfg.source == "glue" or task_cfg.source == "glue_tsv":
        return  # GLUE's test split is the official dev set, so test_fraction is unused.
    if not 0 < test < 1:
        raise ConfigError("task.test_fraction", test, "a number between 0 and 1")
    if validation + test >= 1:
        raise ConfigError(
            "task.validation_fraction + task.test_fraction", validation + test,
            "less than 1, so that train keeps examples",
        )


# --- loading ------------------------------------------------------------------------------


def load_task(
    task_cfg: Any, tokenizer: PreTrainedTokenizerBase, max_length: int, cache_dir: Path
) -> TaskData:
    """Read, split, label-encode and tokenise a task, or load it from the cache.

    Splits use task.split_seed, never the run seed, and each split is shuffled with it.
    Sources: rotten_tomatoes (split by film), bbc_news (stratified), local (a CSV/TSV/JSONL
    file split stratified when possible, or a folder of split files), and glue or glue_tsv.
    GLUE's test labels are hidden, so for GLUE the validation split is held out of the
    official train split and the test split is the official validation split. For MNLI the
    test split is validation_matched, and validation_mismatched goes to extra_eval.

    The tokenised splits are saved under cache_dir/tokenized/, keyed by the source files
    (path, size, mtime), the task config, the tokenizer's vocabulary and max_length.
    """
    validate_task_config(task_cfg)
    files = locate_source(task_cfg)
    folder = _cache_folder(task_cfg, tokenizer, max_length, Path(cache_dir), files)

    if (folder / META_FILE).is_file():
        log.info("cache hit: tokenised task '%s' from %s", task_cfg.name, folder)
        return _load_cached(folder, task_cfg)

    raw = read_source(task_cfg, files)
    frames, label_names, is_regression = encode_labels(raw, task_cfg)
    splits = {
        name: _tokenize(frame, raw.text_columns, tokenizer, max_length, is_regression, name)
        for name, frame in frames.items()
    }
    meta = {"label_names": label_names, "is_regression": is_regression,
            "sizes": {name: len(frame) for name, frame in frames.items()}}
    _save_atomically(datasets.DatasetDict(splits), meta, folder)
    log.info("task '%s': %s examples, tokenised into %s", task_cfg.name, meta["sizes"], folder)
    return _load_cached(folder, task_cfg)


def encode_labels(raw: RawTask, task_cfg: Any) -> tuple[dict[str, pd.DataFrame], list[str], bool]:
    """Map raw labels to class ids (or floats for regression), check that every split has
    examples and train has at least two classes, and shuffle each split with split_seed.
    Returns (tables with a `label` column of ids, label names, is_regression)."""
    is_regression = is_regression_task(task_cfg)
    for split, frame in raw.splits.items():
        if frame.empty:
            raise _empty_split_error(split, task_cfg)

    if is_regression:
        label_names = [task_cfg.label_column or "label"]
        encoded = {split: _regression_labels(frame, split) for split, frame in raw.splits.items()}
    else:
        label_names = [str(name) for name in task_cfg.label_names] or list(raw.label_names)
        # Integer labels may index a given list of names, but not names read from the data.
        allow_index = bool(label_names)
        if not label_names:
            label_names = _sorted_label_set(raw.splits["train"]["label"])
            _check_labels_seen_in_train(raw.splits, label_names)
        encoded = {
            split: frame.assign(label=label_ids(frame["label"], label_names, split, allow_index))
            for split, frame in raw.splits.items()
        }
        _check_classes(encoded["train"], label_names, task_cfg)

    shuffled = {split: shuffle_rows(frame, task_cfg.split_seed) for split, frame in encoded.items()}
    return shuffled, label_names, is_regression


def label_ids(
    values: pd.Series, label_names: list[str], split: str, allow_index: bool = True
) -> np.ndarray:
    """Map labels to indices into label_names. A label matches a name by its text form
    ("fresh", or 1 for the name "1"). Otherwise, when allow_index is true, an integer label
    in range is taken as an index."""
    index = {name: i for i, name in enumerate(label_names)}
    keys = values.map(_label_key)
    ids = keys.map(index)

    unmatched = ids.isna()
    if allow_index and unmatched.any():
        as_numbers = pd.to_numeric(keys[unmatched], errors="coerce")
        is_index = (as_numbers >= 0) & (as_numbers < len(label_names)) & (as_numbers % 1 == 0)
        ids[unmatched] = as_numbers.where(is_index)

    if ids.isna().any():
        unknown = sorted(set(values[ids.isna()].map(_label_key)))
        raise ConfigError(
            "task.label_names",
            label_names,
            f"a list that contains every label of the {split} split",
            f"Label(s) {unknown[:10]} are not in it. Add them to task.label_names, or fix "
            "task.label_column.",
        )
    return ids.to_numpy(dtype=np.int64)


def _label_key(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _sorted_label_set(values: pd.Series) -> list[str]:
    keys = sorted(set(values.map(_label_key)))
    numbers = pd.to_numeric(pd.Series(keys), errors="coerce")
    if numbers.notna().all():
        return [key for _, key in sorted(zip(numbers, keys, strict=True))]
    return keys


def _regression_labels(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    scores = pd.to_numeric(frame["label"], errors="coerce")
    if scores.isna().any():
        bad = frame["label"][scores.isna()].astype(str).unique()[:5].tolist()
        raise ConfigError(
            "task.label_column", "label", f"numbers in every row of the {split} split for a "
            "regression task (metrics pearson/spearman)", f"Non-numeric labels: {bad}.",
        )
    return frame.assign(label=scores.astype(np.float32))


def _check_labels_seen_in_train(splits: dict[str, pd.DataFrame], label_names: list[str]) -> None:
    """Raise ConfigError for a label that occurs in another split but not in train. With
    task.label_names empty, the train split's labels are the label set."""
    known = set(label_names)
    for split, frame in splits.items():
        unseen = sorted(set(frame["label"].map(_label_key)) - known)
        if unseen:
            raise ConfigError(
                "task.label_names", [],
                "a train split that contains every label, because an empty list takes the "
                "label set from the train split",
                f"Label(s) {unseen[:10]} of the {split} split do not occur among the "
                f"{len(splits['train'])} train rows. Fix those labels, use a data set with "
                "more examples of each label, or list every label in task.label_names.",
            )


def _check_classes(train: pd.DataFrame, label_names: list[str], task_cfg: Any) -> None:
    if len(label_names) < 2:
        raise ConfigError("task.label_names", label_names, "at least 2 classes",
                          "The data has a single label; check task.label_column.")
    present = sorted({label_names[i] for i in train["label"]})
    if len(present) < 2:
        raise ConfigError(
            "task.label_column", task_cfg.label_column,
            "a train split with at least 2 classes",
            f"The {len(train)} train rows have only {present}; use a data set with more "
            "examples of each class, or check task.label_column.",
        )
    if "f1_binary" in task_cfg.metrics and len(label_names) != 2:
        raise ConfigError(
            "task.metrics", list(task_cfg.metrics), f"no f1_binary for {len(label_names)} classes",
            "Use f1 (macro) instead.",
        )


def _empty_split_error(split: str, task_cfg: Any) -> ConfigError:
    if split not in ("train", "validation") and task_cfg.source in ("glue", "glue_tsv"):
        return ConfigError(
            "task.path", task_cfg.path, f"a GLUE {split} split with examples",
            f"The official file behind the {split} split has no labelled rows.",
        )
    keys = {"validation": "task.validation_fraction", "test": "task.test_fraction"}
    key = keys.get(split, "task.validation_fraction + task.test_fraction")
    value = {
        "task.validation_fraction": task_cfg.validation_fraction,
        "task.test_fraction": task_cfg.test_fraction,
    }.get(key, task_cfg.validation_fraction + task_cfg.test_fraction)
    return ConfigError(
        key, value, "fractions that leave at least one example in every split",
        f"The {split} split came out empty; use more examples or change the fractions.",
    )


# --- tokenisation and cache ---------------------------------------------------------------


def _tokenize(
    frame: pd.DataFrame,
    text_columns: list[str],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    is_regression: bool,
    split: str,
) -> datasets.Dataset:
    input_names = [name for name in MODEL_INPUTS if name in tokenizer.model_input_names]
    columns: dict[str, list] = {name: [] for name in input_names}
    for start in tqdm(range(0, len(frame), TOKENIZE_CHUNK), desc=f"tokenising {split}",
                      leave=False):
        chunk = frame.iloc[start : start + TOKENIZE_CHUNK]
        texts = [chunk[column].astype(str).tolist() for column in text_columns]
        encoding = tokenizer(*texts, truncation=True, max_length=max_length)
        for name in input_names:
            columns[name].extend(encoding[name])
    columns["labels"] = frame["label"].tolist()

    features = datasets.Features({
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "attention_mask": datasets.Sequence(datasets.Value("int8")),
        "token_type_ids": datasets.Sequence(datasets.Value("int8")),
        "labels": datasets.Value("float32" if is_regression else "int64"),
    })
    features = datasets.Features({name: features[name] for name in columns})
    return datasets.Dataset.from_dict(columns, features=features)


def _cache_folder(
    task_cfg: Any, tokenizer: PreTrainedTokenizerBase, max_length: int, cache_dir: Path,
    files: list[Path],
) -> Path:
    task_fields = _as_dict(task_cfg)
    for unused in ("name", "main_metric"):
        task_fields.pop(unused, None)
    payload = {
        "format": CACHE_FORMAT,
        "source": source_identity(files),
        "task": task_fields,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": max_length,
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return cache_dir / "tokenized" / f"{task_cfg.name}-{key[:16]}"


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash what decides the token ids: the tokenizer class, its model inputs and its
    serialisation (vocabulary, normaliser, special-token template) without the truncation
    and padding settings of the last call."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    digest.update(json.dumps(list(tokenizer.model_input_names)).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        serialised = json.loads(backend.to_str())
        # Every call of a fast tokenizer stores its truncation and padding settings in the
        # backend, and _tokenize passes its own, so they are left out: with them, a second
        # load in the same process would get a new key and tokenise again.
        for per_call_setting in ("truncation", "padding"):
            serialised.pop(per_call_setting, None)
        digest.update(json.dumps(serialised, sort_keys=True).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return digest.hexdigest()


def _as_dict(cfg: Any) -> dict:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    return dict(vars(cfg))


def _save_atomically(splits: datasets.DatasetDict, meta: dict, folder: Path) -> None:
    """Write to a temporary folder and rename it into place, so a reader never sees a
    partial cache."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    bars_were_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        splits.save_to_disk(str(temporary))
    finally:
        if bars_were_enabled:
            datasets.enable_progress_bars()
    (temporary / META_FILE).write_text(json.dumps(meta, indent=2))
    try:
        temporary.rename(folder)
    except OSError:
        # Another process cached the same task first; keep theirs.
        if not (folder / META_FILE).is_file():
            raise
        shutil.rmtree(temporary, ignore_errors=True)


def _load_cached(folder: Path, task_cfg: Any) -> TaskData:
    meta = json.loads((folder / META_FILE).read_text())
    splits = datasets.load_from_disk(str(folder))
    extra = {name: splits[name] for name in splits if name not in ("train", "validation", "test")}
    return TaskData(
        train=splits["train"],
        validation=splits["validation"],
        test=splits["test"],
        label_names=list(meta["label_names"]),
        num_labels=len(meta["label_names"]),
        is_regression=bool(meta["is_regression"]),
        metrics=list(task_cfg.metrics),
        main_metric=task_cfg.main_metric,
        extra_eval=extra,
    )


def make_collator(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict]], dict]:
    """Return a collate function that pads each batch to its own longest example and
    stacks the labels (int64, or float32 for regression)."""
    if tokenizer.pad_token is None:
        raise ConfigError(
            "tokenizer.pad_token", None, "a pad token",
            "Load the tokenizer with emoe_lab.models.load_tokenizer, which sets one.",
        )
    return DataCollatorWithPadding(tokenizer=tokenizer, padding="longest", return_tensors="pt")
