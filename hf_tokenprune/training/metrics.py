"""Metrics computed by the library, with no download.

Classification accuracy goes through `evaluate` where it can load: ``evaluate.load("accuracy")`` fetches its script
from the Hub, so offline it fails unless cached; hf_tokenprune ships its own metric modules
(``hf_tokenprune/metric_modules/``) and loads them by path, which works offline; when `evaluate` is not installed or a
module cannot load, the same number is computed with numpy.

Training metrics: `build_compute_metrics` gives the Trainer accuracy plus the token counts and GFLOPs of the plan in
force (`token_metrics`), so a scheduled keep rate shows in each evaluation.

Semantic segmentation: ``evaluate.load("mean_iou")`` would fetch its script from the Hub; `segmentation_metrics`
gives the same quantities from a confusion matrix: intersection over union per class, its mean over the classes that
occur (in the labels or the predictions), and pixel accuracy, all skipping pixels labelled ``ignore_index``.
"""

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..flops import count_flops
from .schedules import config_of

METRIC_MODULES = Path(__file__).resolve().parent / "metric_modules"
logger = logging.getLogger(__name__)


@functools.cache
def load_metric(name: str) -> Any:
    """The `evaluate` metric ``name`` from hf_tokenprune's own modules, or None if it cannot load."""
    path = METRIC_MODULES / f"{name}.py"
    try:
        import evaluate

        return evaluate.load(str(path))
    except Exception as error:  # no evaluate, or a module that does not load here: numpy does the same job
        logger.info("evaluate metric %s not loaded (%s); computing it with numpy.", path, error)
        return None


def accuracy(predictions: Any, labels: Any) -> float:
    """Top-1 accuracy of logits (or a tuple whose first item is the logits) against integer labels."""
    logits = predictions[0] if isinstance(predictions, (tuple, list)) else predictions
    predicted = np.asarray(logits).argmax(axis=-1).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    metric = load_metric("accuracy")
    if metric is not None:
        return float(metric.compute(predictions=predicted, references=labels)["accuracy"])
    return float((predicted == labels).mean())


def confusion_matrix(predictions: Any, labels: Any, num_labels: int, ignore_index: int = 255) -> np.ndarray:
    """(num_labels, num_labels) counts of pixels with true class ``i`` (row) predicted as ``j`` (column)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must have the same shape.")
    valid = labels != ignore_index
    truth, guess = labels[valid].astype(np.int64), predictions[valid].astype(np.int64)
    if truth.size and (truth.min() < 0 or truth.max() >= num_labels):
        raise ValueError(f"labels hold classes outside [0, {num_labels}) other than ignore_index={ignore_index}.")
    return np.bincount(truth * num_labels + guess, minlength=num_labels**2).reshape(num_labels, num_labels)


def segmentation_metrics(predictions: Any, labels: Any, num_labels: int, ignore_index: int = 255) -> dict:
    """``mean_iou``, ``pixel_accuracy`` and ``per_class_iou`` (NaN for a class absent from both)."""
    matrix = confusion_matrix(predictions, labels, num_labels, ignore_index).astype(np.float64)
    intersection = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
    total = matrix.sum()
    return {
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_accuracy": float(intersection.sum() / total) if total else float("nan"),
        "per_class_iou": iou.tolist(),
    }


def build_segmentation_compute_metrics(num_labels: int, ignore_index: int = 255):
    """A ``Trainer`` ``compute_metrics``: logits (B, labels, h, w), at the label size or smaller (upsampled)."""

    def compute_metrics(eval_prediction) -> dict:
        import torch

        logits, labels = eval_prediction.predictions, eval_prediction.label_ids
        logits = logits[0] if isinstance(logits, tuple) else logits
        logits = torch.from_numpy(np.asarray(logits))
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = torch.nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear")
        metrics = segmentation_metrics(logits.argmax(dim=1).numpy(), labels, num_labels, ignore_index)
        return {"mean_iou": metrics["mean_iou"], "pixel_accuracy": metrics["pixel_accuracy"]}

    return compute_metrics


def token_metrics(config: Any, keep_rate: float | None = None, image_size: Any = None) -> dict[str, Any]:
    """The tokens entering each layer's MLP (space-separated), their mean, and GFLOPs per image, for the plan in
    force (analytic: `config.token_counts`, which the model's ``outputs.token_counts`` equal)."""
    counts = config.token_counts(keep_rate=keep_rate, image_size=image_size)
    report = count_flops(config, keep_rate=keep_rate, image_size=image_size, token_counts=counts)
    mlp_tokens = [int(m) for _, m in counts]
    return {
        "tokens_per_layer": " ".join(str(m) for m in mlp_tokens),  # a string: every logger can print it
        "mean_tokens": float(np.mean(mlp_tokens)),
        "gflops": report.gflops,
    }


def build_compute_metrics(model: Any = None):
    """A ``compute_metrics`` for the Trainer: accuracy, plus `token_metrics` of ``model``'s plan in force when it is
    given (so a scheduled keep rate shows in each evaluation)."""

    def compute_metrics(prediction: Any) -> dict[str, Any]:
        metrics = {"accuracy": accuracy(prediction.predictions, prediction.label_ids)}
        if model is not None:
            metrics.update(token_metrics(config_of(model)))
        return metrics

    return compute_metrics
