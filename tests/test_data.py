"""The embedded cluttered-digits data: deterministic, real digits, mostly empty patches, clear errors."""

import numpy as np
import pytest

from hf_tokenprune.data import CLASS_NAMES, cluttered_digits_arrays, default_scale, load_cluttered_digits


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
