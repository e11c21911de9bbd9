"""The command line as a new user meets it: fast help, --version, option spellings, bad input refused in one line
(exit 2, ``error:``) before any slow work, and what the verbs make of a run: a benchmark of a checkpoint's own plan
that its card finds, noisy measurements flagged, a card from what a training folder holds."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REDUCING_PLANS, tiny_config
from huggingface_hub import ModelCard

from hf_tokenprune import TokenPruneViTForImageClassification, __version__, visualization
from hf_tokenprune.commands import visualize as visualize_command
from hf_tokenprune.commands.main import build_parser, dashed, main
from hf_tokenprune.measure.report import format_table, noise_of, noise_warnings

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "hf_tokenprune", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)


@pytest.mark.slow
def test_help_and_errors_before_work_import_neither_torch_nor_transformers():
    code = (
        "import sys\nfrom hf_tokenprune.commands.main import build_parser\nbuild_parser()\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)}
    )
    assert result.stdout.strip() == "[]", result.stderr  # every subcommand's module imports its heavy parts lazily


@pytest.mark.slow
def test_version_and_a_help_written_for_users():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"hf-tokenprune {__version__}"
    text = build_parser().format_help()
    assert "``" not in text and "hf-tokenprune plan" in text and "--token_reduction" in text
    for command in ("plan", "benchmark", "visualize", "card"):
        assert command in text


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--keep-rate", "-1", "is not a keep rate"),
        ("--keep-rate", "5", "is not a keep rate"),
        ("--image-size", "0", "is not an image size"),
    ],
)
def test_plan_refuses_values_the_model_refuses(option, value, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--arch", "vit-tiny-patch16-224", option, value])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_plan_refuses_a_size_that_is_not_a_multiple_of_the_patch(capsys):
    assert main(["plan", "--arch", "vit-tiny-patch16-224", "--image-size", "100"]) == 2
    assert "error: image_size = 100 must be a positive multiple of the patch size 16" in capsys.readouterr().err


def test_plan_prints_readable_units_for_a_tiny_model(capsys):
    plan = json.dumps({"method": "tome", "r": 4})
    assert main(["plan", "--arch", "vit-tiny-patch16-224", "--image-size", "32", "--token-reduction", plan]) == 0
    printed = capsys.readouterr().out
    assert "MFLOPs" in printed and " 0.000 " not in printed and "include prefix tokens (CLS" in printed


def test_both_option_spellings_give_the_same_result(capsys):
    plan = json.dumps(REDUCING_PLANS["evit"])
    base = ["plan", "--arch", "vit-tiny-patch16-224", "--image-size", "64"]
    assert main([*base, "--token-reduction", plan, "--keep-rate", "0.5"]) == 0
    dashes = capsys.readouterr().out
    assert main([*base, "--token_reduction", plan, "--keep_rate=0.5"]) == 0
    assert capsys.readouterr().out == dashes
    assert dashed(["--keep_rate=0_5", "x_y", "--a_b"]) == ["--keep-rate=0_5", "x_y", "--a-b"]  # values untouched


def test_invalid_json_exits_2_with_the_error_prefix(capsys):
    assert main(["plan", "--token-reduction", "{not json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --token-reduction is not valid JSON") and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_visualize_names_a_missing_checkpoint_folder_in_one_line():
    result = run_cli("visualize", "--model", "./nope", "--output", "/tmp/x.png")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --model './nope': no such folder. Give a folder written by save_pretrained, or a Hub id such as "
        "google/vit-base-patch16-224."
    ]


def _checkpoint(tmp_path, plan=REDUCING_PLANS["tome"]) -> Path:
    torch.manual_seed(0)
    folder = tmp_path / "ckpt"
    TokenPruneViTForImageClassification(tiny_config(token_reduction=plan)).save_pretrained(folder)
    return folder


def test_visualize_checks_the_image_and_the_output_before_loading_weights(tmp_path, monkeypatch, capsys):
    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the cheap checks")

    monkeypatch.setattr(visualize_command, "build_model", no_weights)
    folder = str(_checkpoint(tmp_path))
    missing = ["visualize", "--model", folder, "--image", str(tmp_path / "missing.jpg")]
    assert main([*missing, "--output", str(tmp_path / "x.png")]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    assert main(["visualize", "--model", folder, "--output", str(tmp_path / "no" / "dir" / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and str(tmp_path / "no" / "dir") in err


def test_visualize_uses_image_size_and_says_when_weights_are_random(tmp_path, monkeypatch):
    seen = {}

    def render(image, outputs, path, layers="changes", title="", index=0):
        seen.update(grid=outputs.patch_grid, shape=image.shape, title=title)
        return path

    monkeypatch.setattr(visualization, "render_token_maps", render)
    evit = tiny_config(token_reduction=REDUCING_PLANS["evit"])
    monkeypatch.setattr(
        visualize_command, "build_model", lambda *a, **k: TokenPruneViTForImageClassification(evit).eval()
    )
    argv = ["visualize", "--token-reduction", json.dumps(REDUCING_PLANS["evit"]), "--image-size", "48"]
    assert main([*argv, "--output", str(tmp_path / "kept.png")]) == 0
    assert seen["grid"] == (12, 12) and seen["shape"] == (48, 48, 3)  # 48 px in patches of 4
    assert "random weights" in seen["title"]
    assert main([*argv[:3], "--image-size", "30", "--output", str(tmp_path / "kept.png")]) == 2  # patch 4


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
    assert [row["label"] for row in results["rows"]] == ["no reduction", "evit layers=[1,2,3] keep_rate=0.7 fuse=True"]
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


BAD_INPUT_PROBE = r"""
import contextlib, io, json, sys
from hf_tokenprune.commands.main import main

results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse refuses a value as it parses
            code = exit_.code
    results.append({"argv": argv, "code": code, "error": err.getvalue().strip().splitlines()[-1:],
                    "torch": "torch" in sys.modules})
print(json.dumps(results))
"""


@pytest.mark.slow
def test_every_verb_refuses_bad_paths_and_values_in_one_line_before_torch_is_imported(tmp_path):
    """One rule for every verb: paths are checked (missing, not a model folder, an output folder that is not
    there) and numbers validated before torch is imported or a model loads, in the same words everywhere."""
    empty, folder = tmp_path / "empty", tmp_path / "model"
    empty.mkdir()
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "tokenprune_vit", "patch_size": 16}))
    cases = {
        ("plan", "--model", "./no-such-folder"): "--model './no-such-folder': no such folder",
        ("benchmark", "--model", "./no-such-folder"): "--model './no-such-folder': no such folder",
        ("visualize", "--model", str(empty)): f"--model '{empty}' has no config.json",
        ("tune", "--model", "NOT_A_MODEL", "--target-speedup", "1.5"): "--model 'NOT_A_MODEL': no such folder",
        ("tune", "--model", str(empty), "--target-speedup", "1.5"): f"--model '{empty}' has no config.json",
        ("card", str(empty)): "has no config.json",
        ("export", str(empty)): f"FOLDER '{empty}' has no config.json",
        ("export", str(folder), "--output", str(tmp_path / "no" / "model.onnx")): "does not exist; create it",
        ("export", str(folder), "--image-size", "70"): "--image-size 70 cannot export: it must be a multiple of",
        ("export", str(folder), "--keep-rate", "1.5"): "'1.5' is not a keep rate",
        ("benchmark", "--rounds", "0"): "'0' is not a positive whole number",
        ("tune", "--model", str(folder), "--max-images", "-3", "--target-speedup", "1"): "positive whole number",
    }
    argv = [list(case) for case in cases]
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    process = subprocess.run(
        [sys.executable, "-c", BAD_INPUT_PROBE, json.dumps(argv)], capture_output=True, text=True, env=env, timeout=120
    )
    assert process.returncode == 0, process.stderr[-2000:]
    for result, expected in zip(json.loads(process.stdout.strip().splitlines()[-1]), cases.values()):
        assert result["code"] == 2 and not result["torch"], result
        assert len(result["error"]) == 1 and expected in result["error"][0], result
    assert not (tmp_path / "no").exists()  # the output's folder was not created
