"""The embedded digit segmentation set and the library's segmentation metrics."""

import numpy as np
import pytest

from hf_tokenprune.data import (
    SEGMENTATION_CLASS_NAMES,
    digit_segmentation_arrays,
    load_digit_segmentation,
)
from hf_tokenprune.training.metrics import build_segmentation_compute_metrics, confusion_matrix, segmentation_metrics


@pytest.fixture(scope="module")
def arrays():
    return digit_segmentation_arrays(seed=0, canvas_size=32, digits_per_image=1)


def test_same_seed_same_set_other_seed_other_set(arrays):
    again = digit_segmentation_arrays(seed=0, canvas_size=32, digits_per_image=1)
    other = digit_segmentation_arrays(seed=1, canvas_size=32, digits_per_image=1)
    for split in ("train", "validation"):
        np.testing.assert_array_equal(again[split][0], arrays[split][0])
        np.testing.assert_array_equal(again[split][1], arrays[split][1])
    assert not np.array_equal(other["train"][1], arrays["train"][1])


def test_masks_label_digit_strokes_and_leave_clutter_as_background(arrays):
    images, masks = arrays["train"]
    assert images.shape == masks.shape == (1438, 32, 32) and masks.dtype == np.uint8
    assert set(np.unique(masks).tolist()) == set(range(len(SEGMENTATION_CLASS_NAMES)))
    # One digit per image: exactly one digit class besides background, on bright pixels.
    for image, mask in zip(images[:50], masks[:50]):
        classes = set(np.unique(mask).tolist()) - {0}
        assert len(classes) == 1
        assert image[mask > 0].min() >= 0.5 - 0.15  # strokes (threshold 0.5) plus a little noise
    # Clutter is faint (at most 0.45 bright) and background: some background pixels are bright-ish.
    assert (images[masks == 0] > 0.2).any()


def test_two_digits_per_image_do_not_overlap():
    images, masks = digit_segmentation_arrays(seed=0)["validation"]
    assert images.shape == (359, 64, 64)
    counts = [len(set(np.unique(m).tolist()) - {0}) for m in masks]
    assert max(counts) == 2 and np.mean(counts) > 1.7  # two digits, sometimes of the same class


def test_dataset_has_image_and_label_columns():
    data = load_digit_segmentation(canvas_size=32, digits_per_image=1)
    example = data["validation"][0]
    assert set(data["train"].column_names) == {"image", "label"}
    assert example["image"].mode == "RGB" and example["image"].size == (32, 32)
    assert example["label"].size == (32, 32)
    np.testing.assert_array_equal(
        np.array(example["label"]), digit_segmentation_arrays(canvas_size=32, digits_per_image=1)["validation"][1][0]
    )


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="must fit on the 16-pixel canvas"):
        digit_segmentation_arrays(canvas_size=16, scale=(3, 4))
    with pytest.raises(ValueError, match="validation_fraction"):
        digit_segmentation_arrays(validation_fraction=1.5)


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
