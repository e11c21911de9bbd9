"""Cluttered digits: a small real image-classification set that needs no download.

Each example is one of scikit-learn's 1,797 real handwritten digits (8x8, from the UCI optical digits set),
scaled up (by default to about half the canvas side: 4-5x on the 64-pixel canvas) and placed at a random spot of a
larger dark canvas, with a few faint fragments of *other* digits scattered around as clutter and a little noise.
Most patches of an image carry nothing (on the default 64x64 canvas with 8x8 patches, the digit covers 16 to 25 of
the 64), as in real photographs, which is the case token reduction exists for: a good method keeps the patches on
the digit.

The set is deterministic given its arguments: the same seed gives the same images, splits and order.
"""

from typing import Any

import numpy as np

CLASS_NAMES = [str(d) for d in range(10)]


def _place(canvas: np.ndarray, patch: np.ndarray, top: int, left: int, weight: float) -> None:
    """Brightens ``canvas`` with ``patch`` at (top, left), keeping the brighter value."""
    height, width = patch.shape
    region = canvas[top : top + height, left : left + width]
    np.maximum(region, patch * weight, out=region)


def render_digit(
    digit: np.ndarray,
    others: np.ndarray,
    rng: np.random.Generator,
    canvas_size: int = 64,
    scale: tuple[int, int] = (4, 5),
    clutter: int = 4,
    noise: float = 0.03,
) -> np.ndarray:
    """One cluttered image (canvas_size x canvas_size, values in [0, 1]) of an 8x8 digit in [0, 16]."""
    canvas = np.zeros((canvas_size, canvas_size), dtype=np.float32)
    # Clutter: crops of other digits, small and faint, anywhere on the canvas.
    for other in others[:clutter]:
        crop = np.kron(other[rng.integers(0, 4) :, rng.integers(0, 4) :][:4, :4] / 16.0, np.ones((2, 2)))
        top, left = rng.integers(0, canvas_size - crop.shape[0], size=2)
        _place(canvas, crop.astype(np.float32), top, left, weight=rng.uniform(0.25, 0.5))
    # The digit itself, scaled by an integer factor (nearest neighbour keeps its strokes crisp).
    factor = int(rng.integers(scale[0], scale[1] + 1))
    big = np.kron(digit / 16.0, np.ones((factor, factor))).astype(np.float32)
    top, left = rng.integers(0, canvas_size - big.shape[0] + 1, size=2)
    _place(canvas, big, top, left, weight=1.0)
    canvas += rng.normal(0.0, noise, canvas.shape).astype(np.float32)
    return np.clip(canvas, 0.0, 1.0)


def default_scale(canvas_size: int) -> tuple[int, int]:
    """Upscaling factors that make a digit about half the canvas side: (4, 5) on a 64-pixel canvas."""
    return max(1, canvas_size // 16), max(1, canvas_size * 5 // 64)


def _digit_splits(seed: int, validation_fraction: float) -> tuple[np.ndarray, np.ndarray, Any, dict]:
    """scikit-learn's digits (images (N, 8, 8), labels), a generator seeded with ``seed``, and the train/validation
    split of their indices, made before any rendering so that no digit appears in both splits."""
    from sklearn.datasets import load_digits

    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction = {validation_fraction} must be in (0, 1).")
    digits = load_digits()
    images, labels = digits.images.astype(np.float32), digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    cut = int(round(len(order) * (1.0 - validation_fraction)))
    return images, labels, rng, {"train": order[:cut], "validation": order[cut:]}


def cluttered_digits_arrays(
    seed: int = 0,
    canvas_size: int = 64,
    copies: int = 1,
    validation_fraction: float = 0.2,
    eval_copies: int = 1,
    **render: Any,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "validation": (images, labels)}``; images are (N, H, W) floats in [0, 1].

    The digits are split before rendering, so no digit appears in both splits; each training digit is rendered
    ``copies`` times at different places, each validation digit ``eval_copies`` times (the training images do not
    depend on ``eval_copies``: they are rendered first).
    """
    for name, value in (("copies", copies), ("eval_copies", eval_copies)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} = {value!r} must be a positive integer (renderings of each digit).")
    render.setdefault("scale", default_scale(canvas_size))
    low, high = render["scale"]
    if not 1 <= low <= high or canvas_size < 8 * high:
        raise ValueError(
            f"scale = {render['scale']} must be (smallest, largest) integer factors with 1 <= smallest <= largest "
            f"and 8 * largest <= canvas_size = {canvas_size}."
        )
    images, labels, rng, splits = _digit_splits(seed, validation_fraction)
    out = {}
    for name, indices in splits.items():
        repeats = copies if name == "train" else eval_copies
        rendered, targets = [], []
        for _ in range(repeats):
            for index in indices:
                others = images[rng.choice(len(images), size=8, replace=False)]
                rendered.append(render_digit(images[index], others, rng, canvas_size=canvas_size, **render))
                targets.append(labels[index])
        out[name] = (np.stack(rendered), np.asarray(targets))
    return out


def load_cluttered_digits(seed: int = 0, canvas_size: int = 64, copies: int = 1, **kwargs: Any):
    """The cluttered digits as a `datasets.DatasetDict` with ``train`` and ``validation`` splits.

    Columns: ``image`` (an RGB PIL image, ``canvas_size`` square) and ``label`` (a ClassLabel with names
    "0" to "9"). Needs the ``train`` extra (datasets, scikit-learn); no download.
    """
    import datasets
    from PIL import Image

    arrays = cluttered_digits_arrays(seed=seed, canvas_size=canvas_size, copies=copies, **kwargs)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    splits = {}
    for name, (images, labels) in arrays.items():
        pictures = [Image.fromarray((image * 255).astype(np.uint8)).convert("RGB") for image in images]
        splits[name] = datasets.Dataset.from_dict({"image": pictures, "label": labels.tolist()}, features=features)
    return datasets.DatasetDict(splits)


# ----------------------------------------------------------------------------------------------------------------
# Segmentation: the same real digits, labelled per pixel
# ----------------------------------------------------------------------------------------------------------------

SEGMENTATION_CLASS_NAMES = ["background"] + [f"digit {d}" for d in range(10)]  # label d + 1 is digit d
IGNORE_INDEX = 255  # transformers' segmentation default; no pixel of this set carries it
STROKE_THRESHOLD = 0.5  # a digit pixel at least this bright (of 1) is stroke; dimmer edges stay background


def _free_spot(taken: list, size: int, canvas_size: int, rng: np.random.Generator) -> tuple[int, int]:
    """A (top, left) whose size x size square overlaps no square in ``taken`` (the last try if none is free)."""
    for _ in range(50):
        top, left = (int(v) for v in rng.integers(0, canvas_size - size + 1, size=2))
        if all(top + size <= t or t + s <= top or left + size <= c or c + s <= left for t, c, s in taken):
            break
    taken.append((top, left, size))
    return top, left


def render_segmentation(
    digits: np.ndarray,
    classes: np.ndarray,
    others: np.ndarray,
    rng: np.random.Generator,
    canvas_size: int = 64,
    scale: tuple[int, int] = (3, 4),
    clutter: int = 4,
    noise: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    """One canvas (values in [0, 1]) and its label map (uint8): each 8x8 digit of ``digits`` (values in [0, 16])
    scaled and placed where it overlaps no other, its stroke pixels labelled ``class + 1``; the faint fragments of
    other digits around them are clutter, labelled background (0), like the dark canvas."""
    canvas = np.zeros((canvas_size, canvas_size), dtype=np.float32)
    mask = np.zeros((canvas_size, canvas_size), dtype=np.uint8)
    for other in others[:clutter]:
        crop = np.kron(other[rng.integers(0, 4) :, rng.integers(0, 4) :][:4, :4] / 16.0, np.ones((2, 2)))
        top, left = rng.integers(0, canvas_size - crop.shape[0], size=2)
        _place(canvas, crop.astype(np.float32), top, left, weight=rng.uniform(0.25, 0.45))
    taken = []
    for digit, label in zip(digits, classes):
        factor = int(rng.integers(scale[0], scale[1] + 1))
        big = np.kron(digit / 16.0, np.ones((factor, factor))).astype(np.float32)
        top, left = _free_spot(taken, big.shape[0], canvas_size, rng)
        _place(canvas, big, top, left, weight=1.0)
        region = mask[top : top + big.shape[0], left : left + big.shape[1]]
        region[big >= STROKE_THRESHOLD] = label + 1
    canvas += rng.normal(0.0, noise, canvas.shape).astype(np.float32)
    return np.clip(canvas, 0.0, 1.0), mask


def digit_segmentation_arrays(
    seed: int = 0,
    canvas_size: int = 64,
    digits_per_image: int = 2,
    copies: int = 1,
    validation_fraction: float = 0.2,
    **render: Any,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, masks), "validation": (images, masks)}``: (N, H, W) floats in [0, 1] and (N, H, W)
    uint8 labels (0 background, ``d + 1`` for digit ``d``; see ``SEGMENTATION_CLASS_NAMES``).

    Each image holds ``digits_per_image`` digits of its split (split before rendering, so no digit appears in both);
    every digit of a split leads one image (``copies`` times for training). Deterministic given the arguments.
    """
    render.setdefault("scale", (max(1, canvas_size // 21), max(1, canvas_size // 16)))
    low, high = render["scale"]
    if not 1 <= low <= high or canvas_size < 8 * high * digits_per_image**0.5:
        raise ValueError(
            f"scale = {render['scale']} must be (smallest, largest) integer factors with 1 <= smallest <= largest, "
            f"and {digits_per_image} digits of 8 * largest pixels must fit on the {canvas_size}-pixel canvas."
        )
    images, labels, rng, splits = _digit_splits(seed, validation_fraction)
    out = {}
    for name, indices in splits.items():
        rendered, masks = [], []
        for _ in range(copies if name == "train" else 1):
            for index in indices:
                chosen = np.concatenate([[index], rng.choice(indices, size=digits_per_image - 1, replace=False)])
                others = images[rng.choice(len(images), size=8, replace=False)]
                image, mask = render_segmentation(
                    images[chosen], labels[chosen], others, rng, canvas_size=canvas_size, **render
                )
                rendered.append(image)
                masks.append(mask)
        out[name] = (np.stack(rendered), np.stack(masks))
    return out


def load_digit_segmentation(seed: int = 0, canvas_size: int = 64, **kwargs: Any):
    """The digit segmentation set as a `datasets.DatasetDict` (``train``, ``validation``) with ``image`` (RGB PIL
    image) and ``label`` (a single-channel PIL image of class indices) columns, as transformers' semantic
    segmentation example expects. Needs the ``train`` extra (datasets, scikit-learn); no download."""
    import datasets
    from PIL import Image

    arrays = digit_segmentation_arrays(seed=seed, canvas_size=canvas_size, **kwargs)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    splits = {}
    for name, (images, masks) in arrays.items():
        pictures = [Image.fromarray((image * 255).astype(np.uint8)).convert("RGB") for image in images]
        maps = [Image.fromarray(mask, mode="L") for mask in masks]
        splits[name] = datasets.Dataset.from_dict({"image": pictures, "label": maps}, features=features)
    return datasets.DatasetDict(splits)


# ----------------------------------------------------------------------------------------------------------------
# Video: the same real digits, moving
# ----------------------------------------------------------------------------------------------------------------

DIRECTIONS = ["right", "left", "down", "up"]  # where a clip's moving digit goes
MOVING_LABELS = {"digit": CLASS_NAMES, "direction": DIRECTIONS}  # what a clip's label says, and its class names
_MOVES = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}


def render_clip(
    digit: np.ndarray,
    still: np.ndarray,
    others: np.ndarray,
    direction: str,
    rng: np.random.Generator,
    canvas_size: int = 48,
    num_frames: int = 8,
    speed: int = 3,
    scale: int = 2,
    clutter: int = 6,
    noise: float = 0.03,
) -> np.ndarray:
    """One clip (num_frames, canvas_size, canvas_size) in [0, 1]: ``digit`` moves ``speed`` pixels a frame in
    ``direction`` while ``still``, another digit as bright, stays put, over faint static clutter; each frame has
    its own noise. No single frame tells the direction, nor which of the two digits moves."""
    background = np.zeros((canvas_size, canvas_size), dtype=np.float32)
    for other in others[:clutter]:
        crop = np.kron(other[rng.integers(0, 4) :, rng.integers(0, 4) :][:4, :4] / 16.0, np.ones((2, 2)))
        top, left = rng.integers(0, canvas_size - crop.shape[0], size=2)
        _place(background, crop.astype(np.float32), top, left, weight=rng.uniform(0.25, 0.5))
    big, fixed = (np.kron(d / 16.0, np.ones((scale, scale))).astype(np.float32) for d in (digit, still))
    side, travel = big.shape[0], speed * (num_frames - 1)
    _place(background, fixed, *rng.integers(0, canvas_size - side + 1, size=2), weight=1.0)
    step = np.array(_MOVES[direction])
    low = np.maximum(0, -step * travel)
    start = low + rng.integers(0, canvas_size - side - travel + 1, size=2)
    frames = []
    for t in range(num_frames):
        frame = background.copy()
        top, left = start + step * speed * t
        _place(frame, big, int(top), int(left), weight=1.0)
        frame += rng.normal(0.0, noise, frame.shape).astype(np.float32)
        frames.append(np.clip(frame, 0.0, 1.0))
    return np.stack(frames)


def moving_digits_arrays(
    seed: int = 0,
    canvas_size: int = 48,
    num_frames: int = 8,
    copies: int = 1,
    validation_fraction: float = 0.2,
    speed: int = 3,
    scale: int = 2,
    label: str = "digit",
    limit: int | None = None,
    **render: Any,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (clips, labels), "validation": (clips, labels)}``; clips are (N, frames, H, W) floats in
    [0, 1]. Digits are split before rendering (no digit in both splits); each is rendered ``copies`` times, each time
    moving in a direction drawn at random, next to a still digit of another class from the same split.

    ``label``: ``"digit"`` (the class of the digit that moves: the clip holds two digits, and only the motion tells
    which one is meant) or ``"direction"`` (an index of `DIRECTIONS`). ``limit``: at most this many digits of each
    split (a quick run)."""
    if label not in MOVING_LABELS:
        raise ValueError(f"label = {label!r} is not allowed; allowed: {sorted(MOVING_LABELS)}.")
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies = {copies!r} must be a positive integer (renderings of each digit).")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 2:
        raise ValueError(f"num_frames = {num_frames!r} must be an integer >= 2 (motion needs two frames).")
    room = canvas_size - 8 * scale - speed * (num_frames - 1)
    if scale < 1 or speed < 1 or room < 0:
        raise ValueError(
            f"canvas_size = {canvas_size} cannot hold an 8 x {scale} px digit moving {speed} px a frame for "
            f"{num_frames} frames; allowed: canvas_size >= {8 * scale + speed * (num_frames - 1)}."
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit = {limit!r} must be a positive integer (digits per split) or None.")
    images, digits, rng, splits = _digit_splits(seed, validation_fraction)
    splits = {name: indices[:limit] for name, indices in splits.items()}
    out = {}
    for name, indices in splits.items():
        clips, targets = [], []
        for _ in range(copies):
            for index in indices:
                direction = int(rng.integers(len(DIRECTIONS)))
                others_of_split = indices[digits[indices] != digits[index]]
                still = images[rng.choice(others_of_split)]
                others = images[rng.choice(len(images), size=8, replace=False)]
                clip = render_clip(
                    images[index], still, others, DIRECTIONS[direction], rng, canvas_size=canvas_size,
                    num_frames=num_frames, speed=speed, scale=scale, **render,
                )  # fmt: skip
                clips.append(clip)
                targets.append(int(digits[index]) if label == "digit" else direction)
        out[name] = (np.stack(clips), np.asarray(targets))
    return out


def load_moving_digits(
    seed: int = 0, canvas_size: int = 48, num_frames: int = 8, copies: int = 1, label: str = "digit", **kwargs: Any
):
    """The moving digits as a `datasets.DatasetDict` with ``train`` and ``validation`` splits.

    Columns: ``video`` (a list of ``num_frames`` RGB PIL frames, ``canvas_size`` square) and ``label`` (a ClassLabel:
    the digits "0" to "9" for ``label="digit"``, the names of `DIRECTIONS` for ``"direction"``). Needs the ``train``
    extra (datasets, scikit-learn); no download.
    """
    import datasets
    from PIL import Image

    arrays = moving_digits_arrays(
        seed=seed, canvas_size=canvas_size, num_frames=num_frames, copies=copies, label=label, **kwargs
    )
    features = datasets.Features(
        {"video": datasets.Sequence(datasets.Image()), "label": datasets.ClassLabel(names=MOVING_LABELS[label])}
    )
    splits = {}
    for name, (clips, labels) in arrays.items():
        videos = [[Image.fromarray((f * 255).astype(np.uint8)).convert("RGB") for f in clip] for clip in clips]
        splits[name] = datasets.Dataset.from_dict({"video": videos, "label": labels.tolist()}, features=features)
    return datasets.DatasetDict(splits)
