"""Writers of tiny task files and configs for tests: CSV/JSONL tables, split folders and
GLUE TSV folders in a temporary directory, and task/model configs built from the schemas."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from emoe_lab.config import ClustererConfig, GatingConfig, ModelConfig, MoEConfig, TaskConfig

CONF = Path(__file__).resolve().parents[1] / "conf"
SCHEMAS = {"moe": MoEConfig, "clusterer": ClustererConfig, "gating": GatingConfig}

WORDS = {
    0: ["dull", "bad", "worst", "boring", "flat", "weak"],
    1: ["great", "fun", "best", "lovely", "sharp", "bright"],
    2: ["market", "team", "phone", "music", "game", "news"],
    3: ["red", "blue", "green", "black", "white", "gold"],
    4: ["one", "two", "three", "four", "five", "six"],
}
FILLER = ["the", "film", "was", "a", "story", "of", "very", "and", "it", "is"]


def make_examples(n: int = 60, num_labels: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """Return n rows {"text", "label", "group"} whose texts contain class-specific words,
    with labels cycling through 0..num_labels-1 so that every class has n/num_labels rows."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % num_labels
        words = rng.choices(FILLER, k=4) + rng.choices(WORDS[label % len(WORDS)], k=3)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label, "group": f"g{i // 3}"})
    return rows


def write_csv_task(
    directory: Path,
    n: int = 60,
    num_labels: int = 2,
    seed: int = 0,
    label_names: list[str] | None = None,
    name: str = "task.csv",
) -> Path:
    """Write a CSV with columns text,label (label as a name from label_names when given,
    else an int) and return its path."""
    return _write_table(directory / name, make_examples(n, num_labels, seed), label_names)


def write_jsonl_task(
    directory: Path,
    n: int = 60,
    num_labels: int = 2,
    seed: int = 0,
    label_names: list[str] | None = None,
    name: str = "task.jsonl",
) -> Path:
    """Write a JSONL file with keys text,label and return its path."""
    return _write_table(directory / name, make_examples(n, num_labels, seed), label_names)


def write_split_folder(
    directory: Path,
    sizes: dict[str, int] | None = None,
    num_labels: int = 2,
    suffix: str = ".csv",
    label_names: list[str] | None = None,
) -> Path:
    """Write one file per split (default train 40, validation 10, test 10) into
    `directory` and return the folder."""
    sizes = sizes or {"train": 40, "validation": 10, "test": 10}
    directory.mkdir(parents=True, exist_ok=True)
    for seed, (split, n) in enumerate(sizes.items()):
        _write_table(directory / f"{split}{suffix}", make_examples(n, num_labels, seed), label_names)
    return directory


def _write_table(path: Path, rows: list[dict], label_names: list[str] | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if label_names:
        rows = [{**row, "label": label_names[row["label"]]} for row in rows]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


# --- GLUE TSV folders ---------------------------------------------------------------------

# Header and row builder of each GLUE TSV file layout: (index, text_a, text_b, label) -> row.
GLUE_TSV_LAYOUTS = {
    "sst2": (["sentence", "label"], lambda i, a, b, y: [a, str(y)]),
    "rte": (["index", "sentence1", "sentence2", "label"],
            lambda i, a, b, y: [str(i), a, b, ["entailment", "not_entailment"][y]]),
    "mrpc": (["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
             lambda i, a, b, y: [str(y), str(i), str(i + 1), a, b]),
    "stsb": (["index", "genre", "filename", "year", "old_index", "source1", "source2",
              "sentence1", "sentence2", "score"],
             lambda i, a, b, y: [str(i), "g", "f", "2012", str(i), "s", "s", a, b,
                                 f"{y * 2.5:.3f}"]),
    "mnli": (["index", "promptID", "pairID", "genre", "sentence1", "sentence2", "label1",
              "gold_label"],
             lambda i, a, b, y: [str(i), "1", "1", "fiction", a, b, "x",
                                 ["entailment", "neutral", "contradiction"][y]]),
}
GLUE_NUM_LABELS = {"sst2": 2, "rte": 2, "mrpc": 2, "stsb": 3, "mnli": 3, "cola": 2}


def write_glue_tsv_folder(
    directory: Path, glue_name: str, n_train: int = 40, n_dev: int = 12
) -> Path:
    """Write train.tsv and the dev file(s) of a GLUE task in GLUE's TSV layout (CoLA
    without a header) and return the folder. Texts contain a bare quote character, as
    real GLUE files do."""
    directory.mkdir(parents=True, exist_ok=True)
    num_labels = GLUE_NUM_LABELS[glue_name]
    dev_files = ["dev_matched.tsv", "dev_mismatched.tsv"] if glue_name == "mnli" else ["dev.tsv"]
    for seed, (file_name, n) in enumerate([("train.tsv", n_train)] + [(f, n_dev) for f in dev_files]):
        rows = make_examples(n, num_labels, seed)
        lines = []
        if glue_name == "cola":
            lines = [["gj04", str(row["label"]), "", 'he said "' + row["text"]] for row in rows]
        else:
            header, build = GLUE_TSV_LAYOUTS[glue_name]
            lines = [header] + [
                build(i, 'a "' + row["text"], row["text"][::-1], row["label"])
                for i, row in enumerate(rows)
            ]
        (directory / file_name).write_text("".join("\t".join(line) + "\n" for line in lines))
    return directory


# --- configs ------------------------------------------------------------------------------


def task_config(**overrides: Any) -> Any:
    """Return a TaskConfig (as an OmegaConf object, like Hydra gives) of a local CSV task,
    with `overrides` applied."""
    fields = {
        "name": "tiny_task",
        "source": "local",
        "text_columns": ["text"],
        "label_column": "label",
        "metrics": ["accuracy", "f1"],
        "main_metric": "accuracy",
        "validation_fraction": 0.2,
        "test_fraction": 0.2,
    }
    fields.update(overrides)
    return OmegaConf.merge(OmegaConf.structured(TaskConfig), fields)


TINY_SIZES = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 1000,
}


def model_config(family: str = "bert", **overrides: Any) -> Any:
    """Return a ModelConfig of a tiny random model of `family`, with `overrides` applied."""
    fields = {"name": f"tiny_{family}", "source": "tiny", "family": family, "max_length": 32,
              "tiny": dict(TINY_SIZES)}
    fields.update(overrides)
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), fields)


def group_cfg(group: str, option: str, **overrides: Any) -> Any:
    """A config group option as Hydra composes it: schema defaults, YAML, overrides."""
    cfg = OmegaConf.merge(
        OmegaConf.structured(SCHEMAS[group]), OmegaConf.load(CONF / group / f"{option}.yaml")
    )
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def tiny_model_from_conf(family: str, num_labels: int, seed: int = 0) -> Any:
    """The tiny random model of `conf/model/tiny_<family>.yaml`."""
    from emoe_lab.models import build_tiny_model

    sizes = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"tiny_{family}.yaml").tiny)
    return build_tiny_model(family, num_labels=num_labels, tiny=sizes, seed=seed)
