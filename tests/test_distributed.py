"""The training example: bad input fails before training, a run leaves a loadable folder, and a 2-process (gloo)
run optimises the same loss as a 1-process run with the same global batch."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

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


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    make_image_folder(root)
    (root / "config.json").write_text(json.dumps(TINY_CONFIG))
    return root


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


@pytest.mark.parametrize(
    "change, message",
    [
        (["--token_reduction", '{"method": "pruneall"}'], "'pruneall' is not a known method"),
        (["--token_reduction", '{"method": "evit", "layers": [1, 7]}'], "layer index of this 4-layer model"),
        (["--image_size", "48"], "interpolate_pos_encoding"),
        (["--label_column_name", "class"], "no label column 'class'"),
        (["--keep_rate_schedule", "linear", "--schedule_key", "r"], "cannot be scheduled for method 'evit'"),
    ],
)
def test_bad_input_fails_before_training(image_folder, tmp_path, change, message):
    example = load_example()
    args = example_args(image_folder, tmp_path / "out")
    with pytest.raises(ValueError, match=message):
        example.main(args + change)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_dataset_without_labels_is_refused(tmp_path):
    make_image_folder(tmp_path, labelled=False)
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    with pytest.raises(ValueError, match="without a label"):
        load_example().main(example_args(tmp_path, tmp_path / "out"))


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    "accelerate": [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "examples" / "accelerate_configs" / "cpu_2proc.yaml"),
        "--main_process_port",
        "0",
    ],
}


def run_two_processes(launcher: str, image_folder: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    """The example on 2 CPU processes (gloo); it adds --use_cpu itself when it finds no accelerator."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = LAUNCHERS[launcher] + [str(EXAMPLE), *example_args(image_folder, output, *extra)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def training_losses(results: dict) -> list[float]:
    return [entry["loss"] for entry in results["log_history"] if "loss" in entry]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_process_run_matches_one_process_with_the_same_global_batch(image_folder, tmp_path, launcher):
    recipe = ("--distill", "true", "--distill_alpha", "0.5", "--distill_temperature", "2", "--compare", "false")
    recipe += ("--per_device_eval_batch_size", "2")  # 12 images: no padded eval batch on either process
    single = load_example().main(
        example_args(image_folder, tmp_path / "single", "--per_device_train_batch_size", "8", *recipe)
    )
    process = run_two_processes(
        launcher, image_folder, tmp_path / "ddp", "--per_device_train_batch_size", "4", *recipe
    )
    results_file = tmp_path / "ddp" / "results.json"
    # A run can abort at interpreter exit after finishing: judge it by the file it writes, not only the exit code.
    assert results_file.exists(), process.stdout[-3000:] + process.stderr[-3000:]
    ddp = json.loads(results_file.read_text())
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["eval"]["epoch"] == single["eval"]["epoch"]
    assert len(training_losses(ddp)) == 3
    assert training_losses(ddp) == pytest.approx(training_losses(single), rel=1e-4)
    single_weights = load_file(tmp_path / "single" / "model.safetensors")
    for key, value in load_file(tmp_path / "ddp" / "model.safetensors").items():
        torch.testing.assert_close(value, single_weights[key], atol=1e-5, rtol=1e-4)
    assert ddp["eval"]["eval_loss"] == pytest.approx(single["eval"]["eval_loss"], rel=1e-4)

    # The folder is a shareable model: it loads through the Auto classes, with its image processor.
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(tmp_path / "ddp", trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(tmp_path / "ddp")
    pixels = processor(Image.open(next((image_folder / "validation" / "1").iterdir())), return_tensors="pt")
    with torch.no_grad():
        out = model(**pixels)
    assert out.logits.shape == (1, 3) and model.config.id2label[1] == "1"
    assert list(out.token_counts) == model.config.token_counts()
    assert model.config.token_reduction["keep_rate"] == 0.5  # the schedule leaves the target in the saved plan
