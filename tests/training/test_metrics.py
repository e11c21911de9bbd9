"""Metrics for the Trainer: accuracy through `evaluate` with a numpy fallback, token counts and GFLOPs of the plan in
force, and segmentation metrics from a confusion matrix."""

import numpy as np
import pytest

from hf_tokenprune.training import metrics
from hf_tokenprune.training.metrics import (
    accuracy,
    build_segmentation_compute_metrics,
    confusion_matrix,
    load_metric,
    segmentation_metrics,
)


def test_accuracy_goes_through_evaluate_with_a_numpy_fallback(monkeypatch):
    logits, labels = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), np.array([1, 0, 0])
    metric = load_metric("accuracy")
    assert type(metric).__name__ == "Accuracy" and metric.compute(predictions=[1, 0], references=[1, 1]) == {
        "accuracy": 0.5
    }
    assert accuracy(logits, labels) == pytest.approx(2 / 3)
    monkeypatch.setattr(metrics, "load_metric", lambda name: None)
    assert accuracy((logits,), labels) == pytest.approx(2 / 3)


def test_metrics_on_a_known_case():
    labels = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    predictions = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    matrix = confusion_matrix(predictions, labels, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    metrics = segmentation_metrics(predictions, labels, 3)
    np.testing.assert_allclose(metrics["per_class_iou"], [1 / 3, 2 / 3, 1 / 2])
    assert metrics["mean_iou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(4 / 6)


def test_a_class_absent_everywhere_is_left_out_of_the_mean():
    metrics = segmentation_metrics(np.zeros((2, 2)), np.zeros((2, 2)), 4)
    assert metrics["mean_iou"] == 1.0 and np.isnan(metrics["per_class_iou"][3])


def test_compute_metrics_upsamples_small_logits():
    from transformers import EvalPrediction

    logits = np.zeros((1, 2, 2, 2), dtype=np.float32)
    logits[0, 1, 0], logits[0, 1, 1] = 1.0, -1.0  # top half is class 1 (bilinear keeps the sign per half)
    labels = np.zeros((1, 4, 4), dtype=np.int64)
    labels[0, :2] = 1
    metrics = build_segmentation_compute_metrics(2)(EvalPrediction(predictions=logits, label_ids=labels))
    assert metrics == {"mean_iou": 1.0, "pixel_accuracy": 1.0}
