"""Held-out images for `hf_tokenprune.measure.tune`: the embedded cluttered digits, an image folder or a ``datasets``
dataset, as a seeded subset of preprocessed tensors, and the accuracy of a model on them."""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from .._lazy import LazyModule

torch = LazyModule("torch")  # imported on first use, so listing the CLI's subcommands stays fast


def check_data(words: list[str]) -> tuple[str, str | None]:
    """``--data`` as (kind, argument): ("embedded", None), ("imagefolder", DIR) or ("datasets", "NAME[:CONFIG]")."""
    if words == ["embedded"]:
        return "embedded", None
    if words[0] == "imagefolder":
        if len(words) != 2:
            raise ValueError("--data imagefolder needs exactly one folder: --data imagefolder DIR.")
        if not os.path.isdir(words[1]):
            raise ValueError(f"--data imagefolder {words[1]}: no such folder.")
        return "imagefolder", words[1]
    if len(words) > 2 or words[0] == "embedded":
        raise ValueError(
            f"--data {' '.join(words)}: give 'embedded', 'imagefolder DIR' or a datasets name (and a config name)."
        )
    return "datasets", ":".join(words)


@functools.cache
def _embedded_digits():
    """The cluttered digits of seed 0, the seed the examples train on (rendered once per process)."""
    from ..data import load_cluttered_digits

    return load_cluttered_digits(seed=0)


def load_split(kind: str, argument: str | None, split: str | None):
    """The held-out split as a `datasets.Dataset` (an image folder without split folders is held out whole)."""
    import datasets

    if kind == "embedded":
        dataset = _embedded_digits()
    else:
        name, _, config_name = argument.partition(":")
        kwargs = {"data_dir": argument} if kind == "imagefolder" else {"name": config_name or None}
        try:
            dataset = datasets.load_dataset("imagefolder" if kind == "imagefolder" else name, **kwargs)
        except Exception as error:  # datasets raises many kinds: offline, not found, no images, bad config
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            shown = f"imagefolder {argument}" if kind == "imagefolder" else argument.replace(":", " ")
            raise ValueError(f"--data {shown}: cannot load it ({first}).") from None
    if split is None:
        split = next((s for s in ("validation", "test") if s in dataset), None)
        split = split or (next(iter(dataset)) if len(dataset) == 1 else None)
    if split not in dataset:
        raise ValueError(f"--split {split}: the data has splits {list(dataset)}; name the held-out one.")
    return dataset[split]


def processor_for(model_path: str, config: Any):
    """The checkpoint's image processor at the model's size, or a ViT one (mean and std 0.5)."""
    from transformers import AutoImageProcessor
    from transformers.utils import is_torchvision_available

    side = config.image_size
    try:
        processor = AutoImageProcessor.from_pretrained(model_path)
        processor.size = {"height": side, "width": side}
        return processor
    except (OSError, ValueError):
        pass  # no preprocessor_config.json
    if is_torchvision_available():
        from transformers import ViTImageProcessor
    else:
        from transformers import ViTImageProcessorPil as ViTImageProcessor
    return ViTImageProcessor(size={"height": side, "width": side})


def held_out_images(dataset, processor, config: Any, max_images: int, seed: int, columns: tuple[str, str]):
    """A seeded subset of ``max_images`` images as (pixel_values (N, 3, H, W), labels (N,))."""
    image_column, label_column = columns
    for name in columns:
        if name not in dataset.column_names:
            raise ValueError(f"the data has no column {name!r} (columns: {dataset.column_names}); name it with "
                             "--image-column / --label-column.")  # fmt: skip
    order = np.random.default_rng(seed).permutation(len(dataset))[:max_images]
    subset = dataset.select(sorted(order.tolist()))
    labels = torch.tensor(subset[label_column])
    if len(labels) == 0 or int(labels.min()) < 0 or int(labels.max()) >= config.num_labels:
        raise ValueError(f"labels must be 0..{config.num_labels - 1} (the model's classes); the data has "
                         f"{sorted(set(labels.tolist()))[:12]}.")  # fmt: skip
    pixels = []
    for start in range(0, len(subset), 64):
        images = [image.convert("RGB") for image in subset[start : start + 64][image_column]]
        pixels.append(processor(images, return_tensors="pt")["pixel_values"])
    return torch.cat(pixels), labels


def accuracy(model: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """Top-1 accuracy of ``model`` on the images, in batches, on the model's device and dtype."""
    with torch.inference_mode():
        parameter = next(model.parameters())
        correct = 0
        for start in range(0, len(labels), batch_size):
            batch = pixels[start : start + batch_size].to(parameter.device, parameter.dtype)
            predictions = model(pixel_values=batch).logits.argmax(-1).cpu()
            correct += int((predictions == labels[start : start + batch_size]).sum())
        return correct / len(labels)
