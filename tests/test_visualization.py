"""Pictures: token maps from the outputs' bookkeeping, painting, the kept-token PNG with its legend and titles,
merge groups' colours across layers, the speed-up plot's axes and colours, and the visualize command."""

import numpy as np
import pytest
import torch
from conftest import PNG_MAGIC, REDUCING_PLANS, tiny_config
from PIL import Image

from hf_tokenprune import TokenPruneViTForImageClassification
from hf_tokenprune.commands.main import main as cli_main
from hf_tokenprune.visualization import (
    DIM,
    STRIPE,
    _colour_by,
    _group_colours,
    _panel_title,
    follow_groups,
    layers_to_show,
    paint,
    plot_kept_tokens,
    plot_speedups,
    preprocess,
    speedup_limits,
    token_maps,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(plan) -> TokenPruneViTForImageClassification:
    torch.manual_seed(0)
    return TokenPruneViTForImageClassification(tiny_config(token_reduction=plan)).eval()


def _outputs(plan):
    model = _model(plan)
    pixel_values, shown = preprocess("flower", model.config)
    with torch.no_grad():
        return model(pixel_values), shown


@pytest.mark.parametrize("name", ["evit", "skipvit", "evo_vit", "supervit"])
def test_token_maps_follow_token_positions(name):
    outputs, _ = _outputs(REDUCING_PLANS[name])
    maps = token_maps(outputs)
    assert len(maps) == len(outputs.token_counts)
    for layer_map, (_, mlp_tokens) in zip(maps, outputs.token_counts):
        assert layer_map["alive"].shape == outputs.patch_grid
        assert layer_map["alive"].sum() == mlp_tokens - 1 - layer_map["made_up"]  # CLS and made-up tokens at no patch
        assert layer_map["groups"] is None


def test_merge_groups_follow_token_owner():
    outputs, _ = _outputs(REDUCING_PLANS["tome"])
    maps = token_maps(outputs)
    for layer_map, (_, mlp_tokens) in zip(maps, outputs.token_counts):
        assert layer_map["alive"].all()  # merged patches live on in their group's token
        assert len(np.unique(layer_map["groups"])) == mlp_tokens - 1  # one group per patch token in the sequence
    colours = _group_colours(maps[-1]["groups"])
    merged = ~np.isnan(colours[..., 0])
    groups = maps[-1]["groups"]
    assert merged.any()
    first, second = np.unique(groups[merged])[:2]
    assert not np.allclose(colours[groups == first][0], colours[groups == second][0])  # distinct groups differ
    assert np.allclose(colours[groups == first], colours[groups == first][0])  # one group, one colour


@pytest.mark.parametrize(
    "name, expected",
    [("evit", [1, 2, 3]), ("skipvit", [1, 3]), ("tome", [0, 1, 2, 3])],  # EViT: 3, 6, 9 of 12 layers
)
def test_layers_to_show_are_the_layers_that_change(name, expected):
    maps = token_maps(_outputs(REDUCING_PLANS[name])[0])
    assert layers_to_show(maps) == expected
    assert layers_to_show(maps, "all") == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="layers = 'some'"):
        layers_to_show(maps, "some")


@pytest.mark.parametrize("brightness", [0.0, 0.8, 1.0])
def test_a_dropped_patch_looks_different_from_a_kept_one_whatever_the_image(brightness):
    """Dimmed and striped: on a black canvas (where dimming alone shows nothing) as on a white one."""
    image = np.full((16, 16, 3), brightness, dtype=np.float32)
    alive = np.array([[True, False], [True, True]])
    painted = paint(image, {"alive": alive, "groups": None})
    kept, dropped = painted[:8, :8], painted[:8, 8:]
    assert np.allclose(kept, brightness)
    assert np.abs(dropped - brightness).max() > 0.4  # part of the patch differs clearly
    assert np.allclose(np.unique(np.round(dropped, 4)), sorted({STRIPE, brightness * DIM}), atol=1e-3)  # stripes


def test_paint_tints_merge_groups():
    image = np.full((8, 8, 3), 0.8, dtype=np.float32)
    groups = np.array([[0, 0], [1, 2]])
    tinted = paint(image, {"alive": np.ones((2, 2), bool), "groups": groups})
    assert not np.allclose(tinted[:4, :4], 0.8)  # patches 0 and 1 share a token: coloured
    assert np.allclose(tinted[4:, :], 0.8)  # single-patch tokens: untouched


def test_preprocess_matches_the_processor_transform():
    pixel_values, shown = preprocess("china", tiny_config())
    assert pixel_values.shape == (1, 3, 32, 32) and shown.shape == (32, 32, 3)
    assert -1.0 <= pixel_values.min() and pixel_values.max() <= 1.0
    # Mean and std 0.5: pixel = 2 * image - 1, from the same resized picture.
    assert np.allclose(pixel_values[0].permute(1, 2, 0).numpy(), 2 * shown - 1, atol=0.02)


def test_plot_kept_tokens_writes_a_png(tmp_path):
    picture = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(picture)
    model = _model(REDUCING_PLANS["evit"]).train()
    path = plot_kept_tokens(model, str(picture), str(tmp_path / "kept.png"), keep_rate=0.5)
    assert open(path, "rb").read(8) == PNG_MAGIC
    assert Image.open(path).size[0] > 300 and model.training  # the model's mode is given back
    with pytest.raises(ValueError, match="neither a readable image file"):
        plot_kept_tokens(model, str(tmp_path / "missing.jpg"), str(tmp_path / "x.png"))


def test_cli_visualize(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    _model(REDUCING_PLANS["tome"]).save_pretrained(folder)
    output = tmp_path / "tome.png"
    assert cli_main(["visualize", "--model", str(folder), "--sample", "china", "--output", str(output)]) == 0
    assert output.read_bytes()[:8] == PNG_MAGIC and "wrote" in capsys.readouterr().out
    plain = tmp_path / "plain"
    _model(None).save_pretrained(plain)
    assert cli_main(["visualize", "--model", str(plain), "--output", str(tmp_path / "no.png")]) == 2
    assert "no plan" in capsys.readouterr().err
    both = ["visualize", "--model", str(folder), "--image", str(output), "--sample", "china"]
    assert cli_main(both) == 2 and "not both" in capsys.readouterr().err


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
    width, height = Image.open(path).size
    assert width > 2 * 500 and height > 11 * 30  # one panel per mode, a row per plan


def test_the_pareto_front_and_settings_apart(tmp_path):
    from hf_tokenprune.visualization import pareto, plot_pareto

    points = [
        {"method": "a", "setting": "fine-tuned", "measured_speedup": 1.2, "accuracy": 0.9},
        {"method": "a", "setting": "fine-tuned", "measured_speedup": 1.5, "accuracy": 0.85},
        {"method": "b", "setting": "fine-tuned", "measured_speedup": 1.4, "accuracy": 0.8},  # beaten by a at 1.5
        {"method": "b", "setting": "zero-shot", "measured_speedup": 1.4, "accuracy": 0.1},
    ]
    front = pareto([p for p in points if p["setting"] == "fine-tuned"])
    assert [(p["measured_speedup"], p["accuracy"]) for p in front] == [(1.5, 0.85), (1.2, 0.9)]
    path = plot_pareto(points, str(tmp_path / "pareto.png"), reference={"fine-tuned": 0.9, "zero-shot": 0.9})
    assert Image.open(path).size[0] > 2 * 500  # a panel per setting


def test_every_plan_gets_its_own_colour_and_none_is_the_markers_grey():
    labels = [f"plan {k}" for k in range(14)]
    colour = _colour_by(labels)
    colours = [tuple(np.round(colour(label)[:3], 3)) for label in labels]
    assert len(set(colours)) == len(labels)
    assert all(not (abs(r - g) < 0.02 and abs(g - b) < 0.02) for r, g, b in colours)  # no grey
