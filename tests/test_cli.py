"""The command line as a new user meets it: fast help, --version, option spellings, and bad input refused in one
line (exit 2, ``error:``) before any slow work."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REDUCING_PLANS, tiny_config
from PIL import Image

from hf_tokenprune import TokenPruneViTForImageClassification, __version__, visualization
from hf_tokenprune.commands import visualize as visualize_command
from hf_tokenprune.commands.main import build_parser, dashed, main
from hf_tokenprune.visualization import (
    _colour_by,
    _group_colours,
    _panel_title,
    follow_groups,
    layers_to_show,
    plot_kept_tokens,
    plot_speedups,
    preprocess,
    speedup_limits,
    token_maps,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "hf_tokenprune", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)


def test_help_and_errors_before_work_import_neither_torch_nor_transformers():
    code = (
        "import sys\nfrom hf_tokenprune.commands.main import build_parser\nbuild_parser()\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)}
    )
    assert result.stdout.strip() == "[]", result.stderr  # every subcommand's module imports its heavy parts lazily


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
    assert "MFLOPs" in printed and " 0.000 " not in printed and "include CLS" in printed


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


def test_kept_token_titles_count_tokens_as_plan_does():
    from hf_tokenprune.flops import count_flops

    torch.manual_seed(0)
    config = tiny_config(token_reduction=REDUCING_PLANS["evit"])
    model = TokenPruneViTForImageClassification(config).eval()
    pixel_values, _ = preprocess("china", config)
    with torch.no_grad():
        maps = token_maps(model(pixel_values))
    report = count_flops(config)
    for index in layers_to_show(maps):
        title = _panel_title(index, maps[index])
        assert title.startswith(f"after layer {index}: {report.layers[index].mlp_tokens} tokens")
        assert "CLS" in title


def test_the_kept_token_picture_has_a_legend(tmp_path, monkeypatch):
    import matplotlib.figure

    labels = []
    original = matplotlib.figure.Figure.supxlabel

    def supxlabel(self, text, **kwargs):
        labels.append(text)
        return original(self, text, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "supxlabel", supxlabel)
    torch.manual_seed(0)
    model = TokenPruneViTForImageClassification(tiny_config(token_reduction=REDUCING_PLANS["tome"])).eval()
    plot_kept_tokens(model, "flower", str(tmp_path / "kept.png"))
    assert len(labels) == 1 and "dimmed" in labels[0] and "coloured" in labels[0] and "CLS" in labels[0]


def test_a_merge_group_keeps_its_colour_across_layers():
    first = {"groups": np.array([[0, 0, 1], [2, 3, 3]])}
    second = {"groups": np.array([[0, 0, 0], [1, 0, 0]])}  # {0,1} absorbs {2} and {4,5}; {3} stays alone
    maps = follow_groups([first, second])
    colours = [_group_colours(m["groups"], m["keys"]) for m in maps]
    assert np.allclose(colours[1][0, 0], colours[0][0, 0])  # the big group keeps the colour of its largest part
    assert np.isnan(colours[1][1, 0]).all()  # a single patch is not tinted

    torch.manual_seed(0)
    model = TokenPruneViTForImageClassification(tiny_config(token_reduction=REDUCING_PLANS["tome"])).eval()
    with torch.no_grad():
        maps = follow_groups(token_maps(model(preprocess("china", model.config)[0])))
    for before, after in zip(maps, maps[1:]):
        for group in np.unique(after["groups"]):
            inside = after["groups"] == group
            parts, sizes = np.unique(before["groups"][inside], return_counts=True)
            biggest = {before["keys"][before["groups"] == part][0] for part in parts[sizes == sizes.max()]}
            assert np.unique(after["keys"][inside]).size == 1 and after["keys"][inside][0] in biggest


def _speed_rows(spread_factor: float) -> list[dict]:
    rows = []
    for index, label in enumerate(["no reduction", "evit", "tome", "skipvit", "a", "b", "c", "d", "e", "f", "g"]):
        ideal = 1.0 + 0.1 * index
        for mode in ("inference", "latency"):
            measured = ideal * 0.95
            spread = [measured / spread_factor, measured * spread_factor]
            rows.append({"label": label, "mode": mode, "ideal_speedup": ideal, "measured_speedup": measured,
                         "spread": spread, "noisy": spread_factor > 1.2})  # fmt: skip
    return rows


def test_speedup_axes_fit_the_medians_not_the_whiskers(tmp_path):
    rows = _speed_rows(spread_factor=37.0)
    low, high = speedup_limits(rows)
    assert low <= 0.95 and 2.0 <= high < 2.5  # the 37x whiskers do not stretch the axes
    path = plot_speedups(rows, str(tmp_path / "benchmark.png"))
    assert Image.open(path).size[0] > 500


def test_every_plan_gets_its_own_colour_and_none_is_the_markers_grey():
    labels = [f"plan {k}" for k in range(14)]
    colour = _colour_by(labels)
    colours = [tuple(np.round(colour(label)[:3], 3)) for label in labels]
    assert len(set(colours)) == len(labels)
    assert all(not (abs(r - g) < 0.02 and abs(g - b) < 0.02) for r, g, b in colours)  # no grey
