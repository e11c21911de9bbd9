"""Options and validators the verbs share, so that every verb reads the same option the same way."""

import argparse
import json
from typing import Any


def parse_json_option(text: str | None, name: str) -> Any:
    """Parses a JSON command-line option; a ValueError that names the option if it is not JSON."""
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} is not valid JSON ({error}): {text}") from None


def keep_rate_option(text: str) -> float:
    """``--keep-rate``: a fraction in (0, 1], as the model accepts it."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a keep rate: give the fraction of tokens kept, in (0, 1]")
    return value


def image_size_option(text: str) -> int:
    """``--image-size``: a positive integer (whether it fits the patch size is checked against the model)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an image size: give a positive number of pixels")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model (a checkpoint folder or Hub id) or a built-in architecture, and the plans as JSON."""
    parser.add_argument("--model", default=None, help="checkpoint folder or Hub id (default: a built-in architecture)")
    parser.add_argument(
        "--arch", default="vit-base-patch16-224", help="built-in architecture when --model is not given"
    )
    parser.add_argument("--token-reduction", default=None, help='plan as JSON, e.g. \'{"method": "evit"}\'')
    parser.add_argument("--attention-reuse", default=None, help="attention-reuse plan as JSON")
    parser.add_argument("--keep-rate", type=keep_rate_option, default=None, help="runtime keep rate, in (0, 1]")
    parser.add_argument(
        "--image-size", type=image_size_option, default=None, help="input side in pixels, a multiple of the patch"
    )


def set_threads(threads: int | None) -> None:
    """``--threads``: torch's CPU threads for the whole process (at least one)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads {threads} must be at least 1.")
    import torch

    torch.set_num_threads(threads)
