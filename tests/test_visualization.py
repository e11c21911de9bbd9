"""Kept-token pictures: token maps from the outputs' bookkeeping, painting, the PNG and the CLI."""

import numpy as np
import pytest
import torch
from conftest import PNG_MAGIC, REDUCING_PLANS, tiny_config
from PIL import Image

from hf_tokenprune import TokenPruneViTForImageClassification
from hf_tokenprune.commands.main import main as cli_main
from hf_tokenprune.visualization import (
    DIM,
    _group_colours,
    layers_to_show,
    paint,
    plot_kept_tokens,
    preprocess,
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
    [("evit", [1, 2]), ("skipvit", [1, 3]), ("tome", [0, 1, 2, 3])],
)
def test_layers_to_show_are_the_layers_that_change(name, expected):
    maps = token_maps(_outputs(REDUCING_PLANS[name])[0])
    assert layers_to_show(maps) == expected
    assert layers_to_show(maps, "all") == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="layers = 'some'"):
        layers_to_show(maps, "some")


def test_paint_dims_dropped_patches_and_tints_groups():
    image = np.full((8, 8, 3), 0.8, dtype=np.float32)
    alive = np.array([[True, False], [True, True]])
    painted = paint(image, {"alive": alive, "groups": None})
    assert np.allclose(painted[:4, :4], 0.8) and np.allclose(painted[:4, 4:], 0.8 * DIM)
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
