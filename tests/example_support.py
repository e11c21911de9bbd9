"""Helpers of the tests that run the examples: load an example as a module, a tiny image folder, and the training
example's arguments."""

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


EXAMPLE = ROOT / "examples" / "run_image_classification.py"


TINY_CONFIG = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 37,
}


PLAN = '{"method": "evit", "layers": [1, 2], "keep_rate": 0.5}'


def load_example():
    spec = importlib.util.spec_from_file_location("run_image_classification", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_image_folder(root: Path, per_class: int = 8, classes: int = 3, labelled: bool = True) -> None:
    """``root/{train,validation}/<class>/*.png``: a bright square whose place depends on the class, plus noise."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("validation", per_class // 2)):
        for label in range(classes):
            folder = root / split / (str(label) if labelled else "")
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                image = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
                image[4 + 8 * label : 12 + 8 * label, 8:16] = 255
                Image.fromarray(image).save(folder / f"{label}_{index}.png")


def example_args(root: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        str(root / "config.json"),
        "--train_dir",
        str(root / "train"),
        "--validation_dir",
        str(root / "validation"),
        "--cache_dir",
        str(root / "cache"),
        "--token_reduction",
        PLAN,
        "--output_dir",
        str(output),
        "--max_steps",
        "3",
        "--logging_steps",
        "1",
        "--learning_rate",
        "5e-3",
        "--eval_strategy",
        "no",
        "--disable_tqdm",
        "true",
        "--dataloader_pin_memory",
        "false",
        *extra,
    ]
