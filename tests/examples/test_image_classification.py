"""The training example (examples/run_image_classification.py, the main job): bad input fails before training,
a run leaves a loadable folder with its card and log lines, a 2-process (gloo) run optimises the same loss as a
1-process run with the same global batch, and a DynamicViT plan trains with the official recipe."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from example_support import EXAMPLE, ROOT, TINY_CONFIG, example_args, load_example, make_image_folder
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from trainer_support import TinyImages, model_with_plan, training_args

from hf_tokenprune.training.distillation import (
    DynamicViTTrainer,
)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    make_image_folder(root)
    (root / "config.json").write_text(json.dumps(TINY_CONFIG))
    return root


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


# `accelerate launch`, the launcher docs/training.md gives (it starts the processes through torch.distributed.run, so
# torchrun's own start is the same path without the config file).
LAUNCHERS = {
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


def test_the_main_job_writes_its_card_and_logs_lines_when_output_is_a_file(image_folder, tmp_path, capsys):
    args = example_args(image_folder, tmp_path / "out")
    index = args.index("--disable_tqdm")
    args = args[:index] + args[index + 2 :]  # as a user runs it; pytest's output is not a terminal
    args = [arg.replace("--token_reduction", "--token-reduction") for arg in args]  # either spelling
    load_example().main([*args, "--benchmark_batch_size", "4", "--benchmark_rounds", "2"])
    printed = capsys.readouterr()
    assert "step 3/3 (100%)" in printed.out and "\r" not in printed.out + printed.err
    card = ModelCard.load(tmp_path / "out" / "README.md")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    plan = results["comparison"][0]
    assert card.data.eval_results[0].metric_value == plan["accuracy"]
    assert "Measured speed-up" in card.text and "card_images/kept_tokens.png" in card.text
    # Two timed rounds cannot show their spread: the run, results.json and the card say the speed is unreliable.
    assert plan["noisy"] and 0.0 <= plan["others_load"] <= 1.0 and "too few" in plan["unreliable"][0]
    assert "speed-up is unreliable" in printed.out and results["warnings"]
    assert ", unreliable" in card.text and "unreliable**, not this plan's speed" in card.text
    assert (tmp_path / "out" / "card_images" / "training_curve.png").is_file()


@pytest.mark.parametrize(
    "change, message",
    [
        (["--model_name_or_path", "./nope"], "--model_name_or_path './nope': no such folder"),
        (["--train_dir", "./nope"], "--train_dir './nope': no such folder; give an imagefolder"),
        (["--token_reduction", "{nope"], "--token_reduction is not valid JSON"),
    ],
)
def test_the_main_job_names_missing_paths_before_loading(image_folder, tmp_path, change, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_example().main(example_args(image_folder, tmp_path / "out") + change)


def test_the_main_job_warns_with_the_reasons_its_speed_is_unreliable():
    example = load_example()
    quiet = [{"model": "TokenPruneViT, plan", "unreliable": []}, {"model": "stock HF ViT", "unreliable": []}]
    busy = [{"model": "TokenPruneViT, plan", "unreliable": ["other processes kept 60% of the CPU busy"]}]
    assert example.comparison_warnings(quiet) == []
    (warning,) = example.comparison_warnings(busy)
    assert "unreliable: other processes kept 60%" in warning and "hf-tokenprune benchmark --model" in warning


def _example():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "run_image_classification.py"
    spec = importlib.util.spec_from_file_location("run_image_classification", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_the_examples_dynamicvit_run_warms_up_over_the_official_frozen_share():
    example = _example()
    plan = ["--token_reduction", '{"method": "dynamicvit"}']
    assert example.parse_args(plan)[-1].warmup_steps == pytest.approx(5 / 30)
    assert example.parse_args([*plan, "--warmup-steps", "0.2"])[-1].warmup_steps == 0.2  # given: kept
    assert example.parse_args([])[-1].warmup_steps == float(example.MAIN_JOB_TRAINING_DEFAULTS["warmup_steps"])


def test_the_example_trains_a_dynamicvit_plan_with_the_official_recipe(tmp_path):
    example = _example()
    data = {"train": TinyImages(4), "validation": TinyImages(4)}
    trainer = example.build_trainer(
        model_with_plan(), training_args(tmp_path), data, None, example.RecipeArguments(), interpolate=False
    )
    assert isinstance(trainer, DynamicViTTrainer) and trainer.teacher_plans_off and trainer.token_weight == 0.5
