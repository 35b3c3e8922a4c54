"""Evaluation metrics: corpus-level scores computed with sklearn and scipy in float64 for
reports, and a torchmetrics collection for the running values logged during training."""

from __future__ import annotations

import logging

import numpy as np
import torchmetrics
from scipy import stats
from sklearn import metrics as skm
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from torchmetrics.regression import MeanSquaredError, PearsonCorrCoef

from emoe_lab.errors import ConfigError

log = logging.getLogger(__name__)

CLASSIFICATION_METRICS = ("accuracy", "f1", "f1_binary", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")
METRICS = CLASSIFICATION_METRICS + REGRESSION_METRICS


def check_metric_names(names: list[str], key: str = "task.metrics") -> None:
    """Raise ConfigError unless `names` is a non-empty list of known metrics of one kind
    (all classification or all regression)."""
    if not names:
        raise ConfigError(key, names, f"a non-empty list drawn from {list(METRICS)}")
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ConfigError(
            key, names, f"names drawn from {list(METRICS)}", f"Remove or fix {unknown}."
        )
    is_regression = [name in REGRESSION_METRICS for name in names]
    if any(is_regression) and not all(is_regression):
        raise ConfigError(
            key,
            names,
            f"either classification metrics {list(CLASSIFICATION_METRICS)} or regression "
            f"metrics {list(REGRESSION_METRICS)}, not both",
        )


def compute_metrics(
    names: list[str], predictions: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """Compute each named metric over the whole corpus in float64.

    `predictions` are class ids of shape [n], or logits/probabilities of shape [n, C]
    (reduced by argmax), or regression outputs of shape [n] or [n, 1]. Names: accuracy,
    f1 (macro over the classes present in labels or predictions, as sklearn does), f1_binary
    (F1 of class 1), mcc, pearson, spearman. Undefined scores are 0.0: F1 with
    zero_division=0, MCC as sklearn returns it, and a correlation with a constant input
    (logged as a warning). Returns python floats keyed by name.
    """
    check_metric_names(list(names), key="metrics")
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if labels.shape[0] == 0:
        raise ValueError("compute_metrics got no examples; evaluate on a non-empty split.")
    if predictions.shape[0] != labels.shape[0]:
        raise ValueError(
            f"compute_metrics got {predictions.shape[0]} predictions for {labels.shape[0]} "
            "labels; pass one prediction per example."
        )

    if all(name in REGRESSION_METRICS for name in names):
        return _regression_scores(names, _as_scores(predictions), labels.astype(np.float64))
    return _classification_scores(names, _as_class_ids(predictions), labels.astype(np.int64))


def _as_class_ids(predictions: np.ndarray) -> np.ndarray:
    if predictions.ndim == 2:
        return predictions.argmax(axis=1).astype(np.int64)
    return predictions.astype(np.int64)


def _as_scores(predictions: np.ndarray) -> np.ndarray:
    if predictions.ndim == 2 and predictions.shape[1] == 1:
        predictions = predictions[:, 0]
    return predictions.astype(np.float64)


def _classification_scores(
    names: list[str], predictions: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    scores = {}
    for name in names:
        if name == "accuracy":
            value = skm.accuracy_score(labels, predictions)
        elif name == "f1":
            value = skm.f1_score(labels, predictions, average="macro", zero_division=0)
        elif name == "f1_binary":
            classes = set(np.unique(labels)) | set(np.unique(predictions))
            if not classes <= {0, 1}:
                raise ValueError(
                    f"f1_binary needs labels and predictions in {{0, 1}}, got classes "
                    f"{sorted(classes)}; use f1 (macro) for more than two classes."
                )
            value = skm.f1_score(
                labels, predictions, average="binary", pos_label=1, zero_division=0
            )
        else:
            value = skm.matthews_corrcoef(labels, predictions)
        scores[name] = float(value)
    return scores


def _regression_scores(
    names: list[str], predictions: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    scores = {}
    constant = np.ptp(predictions) == 0 or np.ptp(labels) == 0
    for name in names:
        if constant:
            log.warning("%s is undefined for a constant input; reporting 0.0", name)
            scores[name] = 0.0
        elif name == "pearson":
            scores[name] = float(stats.pearsonr(predictions, labels)[0])
        else:
            scores[name] = float(stats.spearmanr(predictions, labels)[0])
    return scores


def running_metrics(num_labels: int, is_regression: bool) -> torchmetrics.MetricCollection:
    """Build the metrics logged as running values during training.

    Classification: `accuracy` (micro) and `f1` (macro over the classes seen in targets or
    predictions, which matches sklearn). Regression: `mse` and `pearson`. Feed logits or
    class ids with `update(preds, target)`. These are float32 running values for progress
    logs, and reported scores come from `compute_metrics`. MCC is left out because
    torchmetrics 1.9.0 returns 1.0 where sklearn returns 0.0 when labels and predictions
    are all one class.
    """
    if is_regression:
        return torchmetrics.MetricCollection({"mse": MeanSquaredError(), "pearson": PearsonCorrCoef()})
    if num_labels < 2:
        raise ConfigError("num_labels", num_labels, "at least 2 for classification")
    return torchmetrics.MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes=num_labels, average="micro"),
            "f1": MulticlassF1Score(num_classes=num_labels, average="macro"),
        }
    )
