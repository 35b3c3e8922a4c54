"""Tests of corpus-level metrics and of the torchmetrics running values that training logs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm
from torchmetrics.classification import MulticlassMatthewsCorrCoef

from emoe_lab.errors import ConfigError
from emoe_lab.metrics import compute_metrics, running_metrics

CLASSIFICATION = ["accuracy", "f1", "mcc"]


def test_classification_known_values():
    labels = np.array([0, 0, 1, 1, 1, 0])
    predictions = np.array([0, 1, 1, 1, 0, 0])

    scores = compute_metrics(["accuracy", "f1", "f1_binary", "mcc"], predictions, labels)

    assert scores["accuracy"] == pytest.approx(4 / 6)
    # Both classes have precision 2/3 and recall 2/3.
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["f1_binary"] == pytest.approx(2 / 3)
    assert scores["mcc"] == pytest.approx(1 / 3)


def test_scores_are_python_floats():
    scores = compute_metrics(["accuracy", "f1"], np.array([0, 1]), np.array([0, 1]))

    assert all(type(value) is float for value in scores.values())


def test_logits_are_reduced_by_argmax():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0]])
    labels = np.array([0, 1, 1])

    scores = compute_metrics(["accuracy"], logits, labels)

    assert scores["accuracy"] == pytest.approx(2 / 3)


def test_macro_f1_matches_sklearn_on_three_classes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=200)
    predictions = rng.integers(0, 3, size=200)

    scores = compute_metrics(["f1"], predictions, labels)

    assert scores["f1"] == pytest.approx(skm.f1_score(labels, predictions, average="macro"))


def test_f1_zero_division_is_zero():
    # Class 1 is never predicted and never true: its F1 is 0/0, counted as 0 by f1_binary.
    scores = compute_metrics(["f1_binary"], np.zeros(4, int), np.zeros(4, int))

    assert scores["f1_binary"] == 0.0


def test_regression_correlations():
    rng = np.random.default_rng(1)
    labels = rng.normal(size=50)
    predictions = labels + rng.normal(scale=0.5, size=50)

    scores = compute_metrics(["pearson", "spearman"], predictions[:, None], labels)

    assert scores["pearson"] == pytest.approx(stats.pearsonr(predictions, labels)[0])
    assert scores["spearman"] == pytest.approx(stats.spearmanr(predictions, labels)[0])


def test_constant_regression_output_scores_zero(caplog):
    with caplog.at_level(logging.WARNING, logger="emoe_lab.metrics"):
        scores = compute_metrics(["pearson"], np.ones(5), np.arange(5.0))

    assert scores["pearson"] == 0.0
    assert "undefined for a constant input" in caplog.text


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["accuracy", "bleu"], "Remove or fix ['bleu']"),
        (["accuracy", "pearson"], "not both"),
        ([], "non-empty list"),
    ],
)
def test_invalid_metric_names(names, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        compute_metrics(names, np.array([0, 1]), np.array([0, 1]))


def test_length_mismatch_is_rejected():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        compute_metrics(["accuracy"], np.array([0, 1, 1]), np.array([0, 1]))


def test_empty_input_is_rejected():
    with pytest.raises(ValueError, match="no examples"):
        compute_metrics(["accuracy"], np.array([], int), np.array([], int))


def test_f1_binary_rejects_three_classes():
    with pytest.raises(ValueError, match="use f1 \\(macro\\)"):
        compute_metrics(["f1_binary"], np.array([0, 1, 2]), np.array([0, 1, 2]))


# --- running values against corpus-level values ------------------------------------------


def _running_values(num_labels, predictions, labels, batch_size=7):
    collection = running_metrics(num_labels, is_regression=False)
    for start in range(0, len(labels), batch_size):
        collection.update(
            torch.as_tensor(predictions[start : start + batch_size]),
            torch.as_tensor(labels[start : start + batch_size]),
        )
    return {name: float(value) for name, value in collection.compute().items()}


@pytest.mark.parametrize("num_labels", [2, 3, 5])
def test_running_values_match_random(num_labels):
    rng = np.random.default_rng(num_labels)
    labels = rng.integers(0, num_labels, size=101)
    logits = rng.normal(size=(101, num_labels)).astype(np.float32)

    running = _running_values(num_labels, logits, labels)
    corpus = compute_metrics(["accuracy", "f1"], logits, labels)

    assert running["accuracy"] == pytest.approx(corpus["accuracy"], abs=1e-6)
    assert running["f1"] == pytest.approx(corpus["f1"], abs=1e-6)


DEGENERATE = {
    "one class predicted": (np.zeros(20, int), np.array([0, 1] * 10)),
    "one class in labels": (np.array([0, 1] * 10), np.ones(20, int)),
    "both one class": (np.ones(20, int), np.ones(20, int)),
    "three classes, one absent": (np.array([0, 1, 0, 1] * 5), np.array([0, 1, 1, 1] * 5)),
}


@pytest.mark.parametrize("case", sorted(DEGENERATE))
@pytest.mark.parametrize("num_labels", [2, 3])
def test_running_values_match_degenerate(case, num_labels):
    predictions, labels = DEGENERATE[case]

    running = _running_values(num_labels, predictions, labels)
    corpus = compute_metrics(["accuracy", "f1"], predictions, labels)

    assert running["accuracy"] == pytest.approx(corpus["accuracy"], abs=1e-6)
    # Both average F1 over the classes present in labels or predictions.
    assert running["f1"] == pytest.approx(corpus["f1"], abs=1e-6)


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")
def test_mcc_one_class_disagrees_with_torchmetrics():
    """MCC is why running_metrics has no MCC and reports use sklearn: when labels and
    predictions are all one class, MCC is 0/0. sklearn returns 0.0; torchmetrics 1.9.0 with
    num_classes=2 returns 1.0 (with num_classes=3 it returns 0.0)."""
    predictions = labels = np.ones(20, int)

    corpus = compute_metrics(["mcc"], predictions, labels)
    two_class = MulticlassMatthewsCorrCoef(num_classes=2)(
        torch.as_tensor(predictions), torch.as_tensor(labels)
    )

    assert corpus["mcc"] == 0.0
    assert float(two_class) == 1.0, "torchmetrics changed its one-class MCC; update this note"


def test_mcc_agrees_with_torchmetrics_off_the_edge_case():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=80)
    predictions = np.where(rng.random(80) < 0.6, labels, rng.integers(0, 3, size=80))

    corpus = compute_metrics(["mcc"], predictions, labels)
    running = MulticlassMatthewsCorrCoef(num_classes=3)(
        torch.as_tensor(predictions), torch.as_tensor(labels)
    )

    assert float(running) == pytest.approx(corpus["mcc"], abs=1e-5)


def test_running_regression_pearson_matches():
    rng = np.random.default_rng(4)
    labels = rng.normal(size=64).astype(np.float32)
    predictions = (labels + rng.normal(scale=0.3, size=64)).astype(np.float32)
    collection = running_metrics(1, is_regression=True)

    for start in range(0, 64, 16):
        collection.update(
            torch.as_tensor(predictions[start : start + 16]), torch.as_tensor(labels[start : start + 16])
        )
    running = {name: float(value) for name, value in collection.compute().items()}

    assert running["pearson"] == pytest.approx(
        compute_metrics(["pearson"], predictions, labels)["pearson"], abs=1e-5
    )
    assert running["mse"] == pytest.approx(float(np.mean((predictions - labels) ** 2)), rel=1e-5)


def test_running_metrics_rejects_one_class():
    with pytest.raises(ConfigError, match="at least 2"):
        running_metrics(1, is_regression=False)
