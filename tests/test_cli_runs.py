"""What the tools make of a run: a benchmark of a checkpoint's own plan that its card finds, noisy measurements
flagged, a card from what a training folder holds, the main job's own card and log lines, metrics through
`evaluate`, and the Auto classes served after a cheap ``import hf_tokenprune`` and `register`."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REDUCING_PLANS, tiny_config
from huggingface_hub import ModelCard
from test_distributed import TINY_CONFIG, example_args, load_example, make_image_folder

from hf_tokenprune import TokenPruneViTForImageClassification
from hf_tokenprune.commands.main import main
from hf_tokenprune.measure.report import format_table, noise_of, noise_warnings
from hf_tokenprune.training import metrics
from hf_tokenprune.training.metrics import accuracy, load_metric

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def evit_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("evit")
    torch.manual_seed(0)
    TokenPruneViTForImageClassification(tiny_config(token_reduction=REDUCING_PLANS["evit"])).save_pretrained(folder)
    return folder


def test_benchmark_of_a_checkpoint_measures_its_plan_and_its_card_finds_the_row(evit_folder, tmp_path, capsys):
    argv = ["benchmark", "--model", str(evit_folder), "--device", "cpu", "--batch-size", "2", "--rounds", "1"]
    assert main([*argv, "--modes", "inference", "--no-progress", "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "benchmark.json").read_text())
    assert [row["label"] for row in results["rows"]] == ["no reduction", "evit layers=[1,2] keep_rate=0.6 fuse=True"]
    # One round cannot show the spread: flagged in the table, the JSON and the Markdown, with what to do.
    assert all(row["noisy"] for row in results["rows"]) and "noisy" in printed and "--rounds" in printed
    assert results["warnings"] and "--rounds" in results["warnings"][0]
    assert "Warning:" in (tmp_path / "benchmark.md").read_text()
    assert main(["card", str(evit_folder), "--benchmark", str(tmp_path / "benchmark.json")]) == 0
    card = (evit_folder / "README.md").read_text()
    rows = [line for line in card.splitlines() if "| inference | 2 |" in line]
    assert len(rows) == 1 and rows[0].startswith("| evit layers")  # its own plan's row only


def test_noise_is_judged_from_the_spread_of_the_rounds_and_the_load():
    assert noise_of([1.0, 1.05, 0.98, 1.02]) == {"relative_spread": pytest.approx(0.07 / 1.01), "noisy": False}
    assert noise_of([0.7, 1.0, 1.4])["noisy"] and noise_of([1.0, 1.0])["noisy"]  # wide; too few rounds
    row = {"label": "evit", "mode": "inference", "spread": [0.98, 1.4], "relative_spread": 0.35, "noisy": True}
    quiet = {**row, "label": "tome", "noisy": False, "relative_spread": 0.05, "spread": [1.0, 1.05]}
    assert len(noise_warnings([quiet])) == 0
    warnings = noise_warnings([row, {**quiet, "load_before": 1.7}])
    assert "1 of 2 rows are noisy" in warnings[0] and "--threads" in warnings[0] and "busy" in warnings[1]
    table_rows = [{**row, "tokens_per_layer": [[5, 5]], "gflops": 1.0, "ideal_speedup": 1.2, "measured_speedup": 1.1,
                   "fraction_of_ideal": 0.92}]  # fmt: skip
    assert "1.10x (0.92) noisy 0.98-1.40" in format_table(table_rows)


def _training_folder(folder: Path, config) -> None:
    plan = {"plan": config.token_reduction, "attention_reuse": config.attention_reuse, "dataset": "digits"}
    comparison = [
        {"model": "TokenPruneViT, plan", "accuracy": 0.9, "speedup": 1.3, "speedup_range": [1.2, 1.4],
         "ideal_speedup": 1.5},
        {"model": "same weights, plan off", "accuracy": 0.92, "speedup": 1.0, "speedup_range": [0.9, 1.1]},
    ]  # fmt: skip
    setup = {"device": "cpu", "dtype": "float32", "batch_size": 64, "rounds": 7}
    (folder / "results.json").write_text(json.dumps({**plan, "comparison": comparison, "speed_setup": setup}))
    (folder / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.5}))


def test_card_reads_what_the_folder_holds_and_flags_override(evit_folder, tmp_path):
    from transformers import AutoConfig

    folder = tmp_path / "run"
    TokenPruneViTForImageClassification.from_pretrained(evit_folder).save_pretrained(folder)
    (folder / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.5}))
    assert main(["card", str(folder)]) == 0
    assert [r.metric_value for r in ModelCard.load(folder / "README.md").data.eval_results] == [0.5]
    _training_folder(folder, AutoConfig.from_pretrained(folder))
    assert main(["card", str(folder)]) == 0
    card = ModelCard.load(folder / "README.md")
    assert [r.metric_value for r in card.data.eval_results] == [0.9, 0.92]  # results.json wins over eval_results
    assert "**1.30x (1.20–1.40)**" in card.text and "| 64 | cpu | float32 |" in card.text
    assert main(["card", str(folder), "--accuracy", "0.7"]) == 0
    assert [r.metric_value for r in ModelCard.load(folder / "README.md").data.eval_results] == [0.7]


def test_card_leaves_out_results_of_another_plan(evit_folder, tmp_path):
    from hf_tokenprune.sharing.hub import results_from_folder

    config = tiny_config(token_reduction=REDUCING_PLANS["tome"])
    folder = tmp_path / "other"
    folder.mkdir()
    _training_folder(folder, tiny_config(token_reduction=REDUCING_PLANS["evit"]))
    assert results_from_folder(folder, config) == {"accuracy": {"with_reduction": 0.5, "dataset": None,
                                                                "split": "validation"}}  # fmt: skip


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    make_image_folder(root)
    (root / "config.json").write_text(json.dumps(TINY_CONFIG))
    return root


def test_the_main_job_writes_its_card_and_logs_lines_when_output_is_a_file(image_folder, tmp_path, capsys):
    args = example_args(image_folder, tmp_path / "out")
    index = args.index("--disable_tqdm")
    args = args[:index] + args[index + 2 :]  # as a user runs it; pytest's output is not a terminal
    args = [arg.replace("--token_reduction", "--token-reduction") for arg in args]  # either spelling
    load_example().main([*args, "--benchmark_batch_size", "4", "--benchmark_rounds", "2"])
    printed = capsys.readouterr()
    assert "step 3/3 (100%)" in printed.out and "\r" not in printed.out + printed.err
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.eval_results[0].metric_value == json.loads((tmp_path / "out" / "results.json").read_text())[
        "comparison"][0]["accuracy"]  # fmt: skip
    assert "Measured speed-up" in card.text and "card_images/kept_tokens.png" in card.text
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


def test_accuracy_goes_through_evaluate_with_a_numpy_fallback(monkeypatch):
    logits, labels = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), np.array([1, 0, 0])
    metric = load_metric("accuracy")
    assert type(metric).__name__ == "Accuracy" and metric.compute(predictions=[1, 0], references=[1, 1]) == {
        "accuracy": 0.5
    }
    assert accuracy(logits, labels) == pytest.approx(2 / 3)
    monkeypatch.setattr(metrics, "load_metric", lambda name: None)
    assert accuracy((logits,), labels) == pytest.approx(2 / 3)


def test_a_cheap_import_then_register_serves_the_auto_classes(evit_folder):
    code = (
        "import sys, hf_tokenprune\nassert 'torch' not in sys.modules\n"
        "from transformers import AutoModelForImageClassification\n"
        "hf_tokenprune.register()\n"
        f"model = AutoModelForImageClassification.from_pretrained({str(evit_folder)!r})\n"
        "print(type(model).__module__)"
    )
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.stdout.split() == ["hf_tokenprune.models.modeling_tokenprune_vit"], result.stderr


def test_the_main_job_warns_when_its_timed_rounds_disagree():
    example = load_example()
    quiet = [{"model": "TokenPruneViT, plan", "speedup": 1.2, "speedup_range": [1.15, 1.3]}]
    busy = [{"model": "TokenPruneViT, plan", "speedup": 2.12, "speedup_range": [1.18, 2.87]}]
    assert example.comparison_warnings(quiet) == []
    (warning,) = example.comparison_warnings(busy)
    assert "noisy" in warning and "--benchmark-rounds" in warning
