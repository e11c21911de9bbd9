"""The embedded data: cluttered digits and digit segmentation, deterministic, real digits, mostly empty patches,
clear errors."""

import numpy as np
import pytest

from hf_tokenprune.data import (
    CLASS_NAMES,
    SEGMENTATION_CLASS_NAMES,
    cluttered_digits_arrays,
    default_scale,
    digit_segmentation_arrays,
    load_cluttered_digits,
    load_digit_segmentation,
)


@pytest.fixture(scope="module")
def arrays():
    return cluttered_digits_arrays(seed=0)


def test_same_seed_same_images_other_seed_other_images(arrays):
    again = cluttered_digits_arrays(seed=0)
    other = cluttered_digits_arrays(seed=1)
    for split in ("train", "validation"):
        np.testing.assert_array_equal(again[split][0], arrays[split][0])
        np.testing.assert_array_equal(again[split][1], arrays[split][1])
    assert not np.array_equal(other["train"][0], arrays["train"][0])


def test_splits_partition_the_1797_digits_and_cover_every_class(arrays):
    train_images, train_labels = arrays["train"]
    validation_images, validation_labels = arrays["validation"]
    assert len(train_labels) + len(validation_labels) == 1797
    assert train_images.shape == (1438, 64, 64) and validation_images.shape == (359, 64, 64)
    assert set(train_labels.tolist()) == set(range(10)) == set(validation_labels.tolist())
    assert train_images.min() >= 0.0 and train_images.max() <= 1.0


def test_most_patches_carry_nothing(arrays):
    images = arrays["validation"][0]
    patches = images.reshape(-1, 8, 8, 8, 8).transpose(0, 1, 3, 2, 4).reshape(len(images), 64, 64)
    lit = (patches.max(axis=2) > 0.6).mean(axis=1)  # patches that hold a stroke of the digit
    assert 0.1 < lit.mean() < 0.5


def test_copies_render_each_training_digit_again_elsewhere():
    two = cluttered_digits_arrays(seed=0, copies=2)
    assert len(two["train"][1]) == 2 * 1438 and len(two["validation"][1]) == 359
    np.testing.assert_array_equal(two["train"][1][:1438], two["train"][1][1438:])
    assert not np.array_equal(two["train"][0][:5], two["train"][0][1438:1443])


def test_default_scale_is_half_the_canvas_side():
    assert default_scale(64) == (4, 5)
    assert default_scale(32) == (2, 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"canvas_size": 32, "scale": (4, 5)}, r"8 \* largest <= canvas_size = 32"),
        ({"scale": (3, 2)}, r"1 <= smallest <= largest"),
        ({"validation_fraction": 1.0}, r"validation_fraction = 1.0 must be in \(0, 1\)"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cluttered_digits_arrays(**kwargs)


def test_dataset_dict_has_images_and_class_labels():
    dataset = load_cluttered_digits(seed=0, canvas_size=32)
    assert set(dataset) == {"train", "validation"}
    assert dataset["train"].features["label"].names == CLASS_NAMES
    image = dataset["validation"][0]["image"]
    assert image.mode == "RGB" and image.size == (32, 32)


def test_validation_digits_render_eval_copies_times_and_leave_training_alone():
    once = cluttered_digits_arrays(seed=3, canvas_size=32, copies=2)
    four = cluttered_digits_arrays(seed=3, canvas_size=32, copies=2, eval_copies=4)
    np.testing.assert_array_equal(four["train"][0], once["train"][0])  # rendered first: unchanged
    digits = len(once["validation"][1])
    assert len(four["validation"][1]) == 4 * digits
    np.testing.assert_array_equal(four["validation"][1], np.tile(once["validation"][1], 4))
    assert not np.array_equal(four["validation"][0][:digits], four["validation"][0][digits : 2 * digits])
    with pytest.raises(ValueError, match="eval_copies = 0 must be a positive integer"):
        cluttered_digits_arrays(eval_copies=0)


@pytest.fixture(scope="module")
def segmentation_arrays():
    return digit_segmentation_arrays(seed=0, canvas_size=32, digits_per_image=1)


def test_same_seed_same_set_other_seed_other_set(segmentation_arrays):
    again = digit_segmentation_arrays(seed=0, canvas_size=32, digits_per_image=1)
    other = digit_segmentation_arrays(seed=1, canvas_size=32, digits_per_image=1)
    for split in ("train", "validation"):
        np.testing.assert_array_equal(again[split][0], segmentation_arrays[split][0])
        np.testing.assert_array_equal(again[split][1], segmentation_arrays[split][1])
    assert not np.array_equal(other["train"][1], segmentation_arrays["train"][1])


def test_masks_label_digit_strokes_and_leave_clutter_as_background(segmentation_arrays):
    images, masks = segmentation_arrays["train"]
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
