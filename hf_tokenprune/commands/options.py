"""Options and validators the verbs share, so that every verb reads the same option the same way: numbers are
checked when the command line is parsed (argparse's one-line usage error, before anything loads), paths by
`hf_tokenprune.paths` before torch is imported."""

import argparse
import json
import math
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


def _number(text: str, kind: type, low: float, strict: bool, what: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < low or (strict and value == low):
        bound = f"{'above' if strict else 'at least'} {low:g}"
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}: give a number {bound}")
    return value


def positive_int(text: str) -> int:
    """A count of at least one (a batch size, rounds, threads, images)."""
    return _number(text, int, 1, False, "a positive whole number")


def non_negative_int(text: str) -> int:
    """A count that may be zero (warm-up calls)."""
    return _number(text, int, 0, False, "a whole number")


def positive_float(text: str) -> float:
    """A positive number (a speed-up or GFLOPs target)."""
    return _number(text, float, 0.0, True, "a positive number")


def non_negative_float(text: str) -> float:
    """A number that may be zero (a time budget in seconds, an accuracy drop, a tolerance)."""
    return _number(text, float, 0.0, False, "a number")


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


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's)")


def set_threads(threads: int | None) -> None:
    """``--threads``: torch's CPU threads for the whole process."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def quiet_loading() -> None:
    """No progress bars from transformers' loading inside a command's output (its own lines are the record)."""
    from transformers.utils import logging

    logging.disable_progress_bar()
