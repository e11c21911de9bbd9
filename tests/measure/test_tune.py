"""The plan tuner (`hf-tokenprune tune`): candidates, the measured front, the choice, the written checkpoint.

A tiny ViT trained for a few seconds on the embedded cluttered digits (so accuracies differ between plans) is
tuned with one or two timing rounds. Speed is never asserted: a speed-up target is checked for consistency between
the choice and the front written to ``tune.json``; the deterministic assertions use FLOPs and accuracy.
"""

import json

import numpy as np
import pytest
import torch
from conftest import PNG_MAGIC, TINY

from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForImageClassification
from hf_tokenprune.commands.main import main as cli_main
from hf_tokenprune.data import cluttered_digits_arrays
from hf_tokenprune.flops import count_flops
from hf_tokenprune.measure.heldout import held_out_images, load_split, processor_for
from hf_tokenprune.measure.tune import SearchSettings, Target, _prepared_models, build_candidates, choose, pareto_front
from hf_tokenprune.plans import PlanEntry, plan_config

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--max-images", "48", "--rounds", "1", "--warmup", "0", "--batch-size", "16", "--no-progress"]


def _digits_training_set() -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded digits' training split as the tuner's ViT processor makes them (32x32, mean and std 0.5)."""
    images, labels = cluttered_digits_arrays(seed=0)["train"]
    pixels = torch.from_numpy(images).unsqueeze(1).expand(-1, 3, -1, -1)
    pixels = torch.nn.functional.interpolate(pixels, size=32, mode="bilinear", antialias=True)
    return (pixels - 0.5) / 0.5, torch.from_numpy(labels)


def _save_trained(folder, **plans) -> str:
    """A tiny ViT for the 10 digits, trained for two short epochs (far from converged, but not at chance)."""
    torch.manual_seed(0)
    model = TokenPruneViTForImageClassification(TokenPruneViTConfig(**{**TINY, "num_labels": 10}, **plans))
    pixels, labels = _digits_training_set()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), 64):
            batch = order[start : start + 64]
            loss = model(pixel_values=pixels[batch], labels=labels[batch]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval().save_pretrained(folder)
    processor_for(str(folder), model.config).save_pretrained(folder)  # the tuner reads it back and copies it
    return str(folder)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return _save_trained(tmp_path_factory.mktemp("tune") / "digits-vit")


def _run(checkpoint, tmp_path, *extra, name="run"):
    """Runs the CLI; returns (exit code, tune.json or None, the results folder)."""
    results = tmp_path / f"{name}-results"
    argv = ["tune", "--model", checkpoint, "--results-dir", str(results), *FAST, *extra]
    code = cli_main(argv)
    record = json.loads((results / "tune.json").read_text()) if (results / "tune.json").exists() else None
    return code, record, results


def _assert_choice_consistent(record: dict) -> None:
    """The chosen plan meets the target, is on the measured front, and nothing meeting it does better."""
    target = Target(*next(iter(record["target"].items())))
    rows, stock = record["rows"], record["stock_accuracy"]
    chosen = record["chosen"]
    assert chosen is not None and target.met_by(chosen, stock)
    front = [row["label"] for row in pareto_front(rows)]
    assert [row["label"] for row in rows if row["on_front"]] == sorted(front, key=[r["label"] for r in rows].index)
    meeting = [row for row in rows if target.met_by(row, stock)]
    if target.kind == "max_accuracy_drop":
        assert chosen["measured_speedup"] == max(row["measured_speedup"] for row in meeting)
    else:
        assert chosen["accuracy"] == max(row["accuracy"] for row in meeting)
    if target.kind != "target_gflops":
        assert chosen["label"] in front


@pytest.mark.slow
def test_gflops_target_chooses_and_writes_a_loadable_checkpoint(checkpoint, tmp_path, capsys):
    config = TokenPruneViTConfig.from_pretrained(checkpoint)
    candidates, _ = build_candidates(config)
    gflops = sorted(count_flops(plan).gflops for _, plan in candidates)
    target = gflops[len(gflops) // 2]
    output = tmp_path / "tuned"
    code, record, results = _run(checkpoint, tmp_path, "--target-gflops", str(target), "--output", str(output))
    assert code == 0
    chosen = record["chosen"]
    assert chosen["gflops"] <= target and record["evaluated"] == len(candidates)
    _assert_choice_consistent(record)
    assert len({row["accuracy"] for row in record["rows"]}) > 1  # a trained model: plans really differ
    assert (results / "tune.png").read_bytes()[:8] == PNG_MAGIC
    assert "**chosen**" in (results / "tune.md").read_text() and chosen["label"] in capsys.readouterr().out

    from transformers import AutoModelForImageClassification

    assert (output / "preprocessor_config.json").exists()
    assert json.loads((output / "tune_choice.json").read_text())["chosen"]["label"] == chosen["label"]
    loaded = AutoModelForImageClassification.from_pretrained(output)
    assert loaded.config.token_reduction == chosen["token_reduction"]
    source = TokenPruneViTForImageClassification.from_pretrained(checkpoint).state_dict()
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, source[name], rtol=0, atol=0)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    counts = loaded(pixel_values=pixels).token_counts
    assert [list(c) for c in counts] == chosen["tokens_per_layer"]


@pytest.mark.slow
@pytest.mark.parametrize("target", [["--target-speedup", "1.0"], ["--max-accuracy-drop", "0.05"]])
def test_measured_targets_are_consistent_with_the_written_front(checkpoint, tmp_path, capsys, target):
    code, record, _ = _run(checkpoint, tmp_path, *target, "--methods", "evit,tome")
    assert record is not None and {row["method"] for row in record["rows"]} == {"evit", "tome"}
    if code == 0:
        _assert_choice_consistent(record)
    else:  # no plan met it on this machine today: the error names the closest, and nothing meets the target
        assert code == 2 and record["chosen"] is None
        kind, value = next(iter(record["target"].items()))
        assert not any(Target(kind, value).met_by(row, record["stock_accuracy"]) for row in record["rows"])
        assert "the closest is" in capsys.readouterr().err


@pytest.mark.slow
def test_same_seed_same_candidates_and_accuracies(checkpoint, tmp_path):
    extra = ["--target-gflops", "1", "--seed", "3", "--methods", "evit,tome"]
    runs = [_run(checkpoint, tmp_path, *extra, name=f"run{i}")[1] for i in range(2)]
    first, second = ([(row["label"], row["accuracy"]) for row in run["rows"]] for run in runs)
    assert first == second and runs[0]["stock_accuracy"] == runs[1]["stock_accuracy"]


def test_seed_chooses_the_held_out_subset(checkpoint):
    config = TokenPruneViTConfig.from_pretrained(checkpoint)
    dataset = load_split("embedded", None, None)
    processor = processor_for(checkpoint, config)
    subsets = [held_out_images(dataset, processor, config, 20, seed, ("image", "label")) for seed in (0, 0, 1)]
    assert torch.equal(subsets[0][0], subsets[1][0]) and torch.equal(subsets[0][1], subsets[1][1])
    assert not torch.equal(subsets[0][0], subsets[2][0])
    assert subsets[0][0].shape == (20, 3, 32, 32)


def test_a_time_budget_still_tries_the_mildest_point_of_every_method(checkpoint, tmp_path, capsys):
    methods = "evit,tome"
    code, record, _ = _run(checkpoint, tmp_path, "--target-gflops", "1", "--time-budget", "0", "--methods", methods)
    assert code == 0 and record["budget_reached"] and record["evaluated"] == len(record["rows"]) == 2
    assert [row["method"] for row in record["rows"]] == ["evit", "tome"]  # each one's mildest point, then stop
    assert record["candidates"] > 2 and "time budget reached" in capsys.readouterr().out


def test_a_candidate_whose_rounds_disagree_is_marked_noisy():
    from hf_tokenprune.measure.tune import _row, describe, format_front

    config = TokenPruneViTConfig(**TINY, token_reduction={"method": "tome", "r": 4})
    entry = PlanEntry("tome r=4", config.token_reduction)
    row = {**_row(entry, config, 0.5, 0.6, [0.96, 1.3, 4.08]), "source": "training-free"}
    assert row["noisy"] and row["spread"] == [0.96, 4.08]
    result = {"stock_accuracy": 0.6, "rows": [row], "evaluated": 1, "candidates": 1, "budget_reached": False,
              "left_out": {}, "setup": {"images": 8, "data": "embedded", "rounds": 3, "batch_size": 4,
                                        "dtype": "float32", "device": "cpu"}}  # fmt: skip
    assert "(0.96-4.08) noisy" in format_front(result, None)
    assert "noisy: 1 candidate(s)" in describe(result, None, Target("target_speedup", 2.0))
    assert "shallow model" not in describe(result, None, Target("target_speedup", 2.0))  # depth not recorded


def test_a_shallow_model_gets_the_operating_point_guidance():
    from hf_tokenprune.measure.tune import describe

    setup = {"images": 8, "data": "embedded", "rounds": 3, "batch_size": 4, "dtype": "float32", "device": "cpu"}
    result = {"stock_accuracy": 0.6, "rows": [], "evaluated": 0, "candidates": 0, "budget_reached": False,
              "left_out": {}}  # fmt: skip
    target = Target("target_speedup", 2.0)
    assert "shallow model (4 layers)" in describe({**result, "setup": {**setup, "layers": 4}}, None, target)
    assert "docs/accuracy.md" in describe({**result, "setup": {**setup, "layers": 4}}, None, target)
    assert "shallow model" not in describe({**result, "setup": {**setup, "layers": 12}}, None, target)


def test_image_folder_data(checkpoint, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("0", "1"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(3):
            pixels = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{index}.png")
    extra = ["--data", "imagefolder", str(tmp_path / "images"), "--methods", "tome", "--target-gflops", "1"]
    code, record, _ = _run(checkpoint, tmp_path, *extra)
    assert code == 0 and record["setup"]["images"] == 6 and record["setup"]["data"].startswith("imagefolder")
    assert {row["method"] for row in record["rows"]} == {"tome"}


def test_learned_methods_only_from_a_trained_checkpoint_plan(tmp_path):
    plain = TokenPruneViTConfig(**{**TINY, "num_labels": 10})
    candidates, left_out = build_candidates(plain)
    methods = {entry.token_reduction["method"] for entry, _ in candidates}
    assert {"evit", "tome", "skipvit", "evo_vit", "supervit"} <= methods
    assert not methods & {"dynamicvit", "cropr"} and {"dynamicvit", "cropr", "skipat"} <= set(left_out)

    plan = {"method": "dynamicvit", "layers": [1, 2], "keep_rate": 0.7}
    trained = TokenPruneViTForImageClassification(
        TokenPruneViTConfig(**{**TINY, "num_labels": 10}, token_reduction=plan)
    )
    candidates, left_out = build_candidates(trained.config)
    own = [entry.token_reduction for entry, _ in candidates if entry.token_reduction["method"] == "dynamicvit"]
    assert sorted(p["keep_rate"] for p in own) == [0.5, 0.7, 0.9] and all(p["layers"] == [1, 2] for p in own)
    labels = [entry.label for entry, _ in candidates if entry.token_reduction["method"] == "dynamicvit"]
    assert labels[0] == "dynamicvit keep_rate=0.7 (checkpoint plan)"  # its own plan first
    assert "dynamicvit" not in left_out and "cropr" in left_out
    settings = SearchSettings(progress=False)
    base = plan_config(trained.config, PlanEntry("base"))
    _, models = _prepared_models(base, candidates, trained.state_dict(), settings)
    label = next(entry.label for entry, _ in candidates if entry.token_reduction["method"] == "dynamicvit")
    for name, tensor in models[label].state_dict().items():  # the trained predictor, not a fresh one
        torch.testing.assert_close(tensor, trained.state_dict()[name], rtol=0, atol=0)


def test_front_and_choice_on_known_rows():
    rows = [
        {"label": "a", "measured_speedup": 1.2, "accuracy": 0.90, "accuracy_drop": 0.00, "gflops": 8.0},
        {"label": "b", "measured_speedup": 1.5, "accuracy": 0.85, "accuracy_drop": 0.05, "gflops": 6.0},
        {"label": "c", "measured_speedup": 1.4, "accuracy": 0.80, "accuracy_drop": 0.10, "gflops": 5.0},
        {"label": "d", "measured_speedup": 2.0, "accuracy": 0.60, "accuracy_drop": 0.30, "gflops": 4.0},
    ]
    assert [row["label"] for row in pareto_front(rows)] == ["d", "b", "a"]  # c: b is faster and better
    assert choose(rows, Target("target_speedup", 1.45), 0.9)["label"] == "b"
    assert choose(rows, Target("target_gflops", 5.5), 0.9)["label"] == "c"
    assert choose(rows, Target("max_accuracy_drop", 0.05), 0.9)["label"] == "b"
    with pytest.raises(ValueError, match=r"closest is d at 2\.00x"):
        choose(rows, Target("target_speedup", 3.0), 0.9)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "/nonexistent/ckpt", "--target-speedup", "1.5"], "--model '/nonexistent/ckpt': no such folder"),
        (["--target-speedup", "1.5", "--data", "imagefolder", "/nonexistent/dir"], "imagefolder /nonexistent/dir"),
        ([], "exactly one target"),
        (["--target-speedup", "1.5", "--target-gflops", "0.01"], "--target-speedup and --target-gflops"),
        (["--target-speedup", "-1"], "'-1' is not a positive number"),
        (["--target-gflops", "0.0001"], "closest is"),
        (["--target-speedup", "1.5", "--methods", "nope"], "not registered"),
    ],
)
def test_bad_input_is_one_line_before_any_work(checkpoint, tmp_path, capsys, extra, message):
    argv = ["tune", "--model", checkpoint, "--results-dir", str(tmp_path / "results"), *FAST, *extra]
    try:
        code = cli_main(argv)
    except SystemExit as exit_:  # a value refused as the command line is parsed
        code = exit_.code
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: " in error and message in error
    assert not (tmp_path / "results").exists()


def test_output_must_be_a_new_folder(checkpoint, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    argv = ["tune", "--model", checkpoint, "--target-speedup", "1.5", "--output", str(tmp_path / "taken"), *FAST]
    assert cli_main(argv) == 2 and "already exists" in capsys.readouterr().err


def test_data_that_does_not_load_is_one_line(checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["tune", "--model", checkpoint, "--target-speedup", "1.5", "--data", "imagefolder", str(tmp_path / "empty")]
    assert cli_main([*argv, "--results-dir", str(tmp_path / "results"), *FAST]) == 2
    assert f"--data imagefolder {tmp_path / 'empty'}: cannot load it" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
