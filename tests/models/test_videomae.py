"""VideoMAE: what the family matrix (tests/models/test_families.py, case ``videomae``) does not cover: the Hub's
checkpoint layout, clips as inputs, the methods refused for want of a CLS token, the classifier's average over merged
tokens, the stock masking, a tubelet grid of time x rows x columns in FLOPs and in SkipAt's Phi, and the moving
digits."""

import os

import numpy as np
import pytest
import torch
from family_matrix import FAMILIES
from transformers import VideoMAEConfig, VideoMAEForVideoClassification
from transformers.conversion_mapping import get_checkpoint_conversion_mapping

from hf_tokenprune import (
    REDUCTION_METHODS,
    TokenPruneVideoMAEConfig,
    TokenPruneVideoMAEForVideoClassification,
    TokenPruneVideoMAEModel,
)
from hf_tokenprune.data import DIRECTIONS, moving_digits_arrays
from hf_tokenprune.families import build_config
from hf_tokenprune.flops import count_flops
from hf_tokenprune.models.attention_reuse import SkipAtPhi

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = FAMILIES["videomae"].settings()  # 8 frames of 16 px, tubelets 2 x 4 x 4: a 4 x 4 x 4 grid
CLIPS = FAMILIES["videomae"].pixels  # (2, 8, 3, 16, 16)


def stock_and_ours(**plans):
    torch.manual_seed(0)
    stock = VideoMAEForVideoClassification(VideoMAEConfig(**SMALL)).eval()
    ours = TokenPruneVideoMAEForVideoClassification(TokenPruneVideoMAEConfig(**SMALL, **plans)).eval()
    ours.load_state_dict(stock.state_dict(), strict=False)
    return stock, ours


def test_a_hub_checkpoint_with_q_bias_and_v_bias_loads_with_no_missing_keys(tmp_path):
    """Released VideoMAE checkpoints store the query and value biases as ``q_bias``/``v_bias``."""
    from safetensors.torch import load_file, save_file

    stock, _ = stock_and_ours()
    stock.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    renamed = {
        key.replace("attention.attention.query.bias", "attention.attention.q_bias").replace(
            "attention.attention.value.bias", "attention.attention.v_bias"
        ): value
        for key, value in weights.items()
    }
    assert sum("q_bias" in key for key in renamed) == SMALL["num_hidden_layers"]
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model, info = TokenPruneVideoMAEForVideoClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(CLIPS).logits, stock(CLIPS).logits, atol=1e-5, rtol=0)
    # the Trainer reads checkpoint files raw with load_state_dict: the same renaming applies there
    fresh = TokenPruneVideoMAEForVideoClassification(TokenPruneVideoMAEConfig(**SMALL))
    assert fresh.load_state_dict(renamed, strict=True) is not None
    assert get_checkpoint_conversion_mapping("TokenPruneVideoMAEModel")  # registered under our class name only


@pytest.mark.parametrize("method", sorted(m for m, cls in REDUCTION_METHODS.items() if "cls_token" in cls.needs))
def test_methods_that_rank_by_a_cls_token_are_refused_in_one_line(method):
    with pytest.raises(ValueError) as raised:
        TokenPruneVideoMAEConfig(**SMALL, token_reduction={"method": method})
    message = str(raised.value)
    assert "\n" not in message and "needs a CLS token" in message and "'tome'" in message


@pytest.mark.parametrize(
    ("clips", "match"),
    [
        (torch.zeros(2, 3, 16, 16), "pixel_values must be (batch, frames, channels, height, width)"),
        (torch.zeros(2, 6, 3, 16, 16), "has 6 frames but config.num_frames = 8"),
        (torch.zeros(2, 8, 1, 16, 16), "has 1 channels"),
        (torch.zeros(2, 8, 3, 24, 24), "are 24x24 but config.image_size is 16"),
    ],
)
def test_clips_of_the_wrong_shape_are_refused_in_one_line(clips, match):
    _, ours = stock_and_ours(token_reduction={"method": "tome", "r": 8})
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        ours(clips)


def test_the_average_counts_each_merged_token_for_the_tubelets_it_holds():
    """ToMe's rule for average pooling: the classifier on the merged sequence equals the stock average over the
    restored sequence (each merged token copied to every tubelet it holds), and differs from a plain average."""
    _, merged = stock_and_ours(token_reduction={"method": "tome", "r": 12})
    _, restored = stock_and_ours(token_reduction={"method": "tome", "r": 12}, restore_tokens=True)
    with torch.no_grad():
        out, full = merged(CLIPS), restored(CLIPS)
        torch.testing.assert_close(out.logits, full.logits, atol=1e-5, rtol=0)
        sequence = merged.videomae(CLIPS).last_hidden_state
        plain = merged.classifier(merged.fc_norm(sequence.mean(dim=1)))
    assert out.token_counts[-1][1] == 64 - 4 * 12
    assert (plain - out.logits).abs().max() > 1e-4


def test_the_first_token_head_is_refused_under_a_plan_that_moves_tokens():
    config = dict(SMALL, use_mean_pooling=False)
    torch.manual_seed(0)
    stock = VideoMAEForVideoClassification(VideoMAEConfig(**config)).eval()
    keep_all = TokenPruneVideoMAEForVideoClassification(
        TokenPruneVideoMAEConfig(**config, token_reduction={"method": "tome", "r": 0})
    ).eval()
    keep_all.load_state_dict(stock.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(keep_all(CLIPS).logits, stock(CLIPS).logits, atol=1e-5, rtol=0)
    reducing = TokenPruneVideoMAEForVideoClassification(
        TokenPruneVideoMAEConfig(**config, token_reduction={"method": "tome", "r": 8})
    ).eval()
    with pytest.raises(ValueError, match="use_mean_pooling=False classifies the first token"):
        reducing(CLIPS)
    assert reducing(CLIPS, disable_plans=True).logits.shape == (2, SMALL["num_labels"])


def test_stock_masking_runs_without_a_plan_and_is_refused_with_one():
    torch.manual_seed(0)
    stock_base = VideoMAEConfig(**SMALL)
    from transformers import VideoMAEModel

    stock = VideoMAEModel(stock_base).eval()
    ours = TokenPruneVideoMAEModel(TokenPruneVideoMAEConfig(**SMALL, token_reduction={"method": "tome"})).eval()
    ours.load_state_dict(stock.state_dict())
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, ::2] = True
    with torch.no_grad():
        expected = stock(CLIPS, bool_masked_pos=mask).last_hidden_state
        torch.testing.assert_close(
            ours(CLIPS, bool_masked_pos=mask, disable_plans=True).last_hidden_state, expected, atol=1e-5, rtol=0
        )
    with pytest.raises(ValueError, match="bool_masked_pos removes tokens before the layers"):
        ours(CLIPS, bool_masked_pos=mask)


def test_videomae_base_counts_its_tubelets():
    """VideoMAE-B at 16 frames of 224 px: 8 x 14 x 14 = 1568 tokens; the patch embedding convolves 2 frames."""
    config = build_config(None, "videomae-base-16x224")
    assert (
        config.patch_grid == (8, 14, 14) and config.num_patches == 1568 and config.input_shape() == (16, 3, 224, 224)
    )
    report = count_flops(config)
    embedding = 1568 * (2 * 3 * 16 * 16) * 768
    assert report.embedding_macs == embedding
    assert report.layers[0].attention_tokens == 1568
    assert 175 < report.macs / 1e9 < 185  # the 180 G multiply-accumulates per clip papers report as "180 GFLOPs"
    tome = count_flops(TokenPruneVideoMAEConfig(**config.to_dict() | {"token_reduction": {"method": "tome", "r": 98}}))
    assert tome.token_counts[-1][1] == 1568 - 12 * 98 and tome.ideal_speedup > 1.7


def test_skipat_phi_convolves_each_time_slice_alone():
    """On a (time, rows, columns) grid Phi's depthwise convolution does not reach across time: changing the tokens
    of one slice leaves the others' outputs as they were (with the gate at its constant start)."""
    config = TokenPruneVideoMAEConfig(**SMALL)
    torch.manual_seed(0)
    phi = SkipAtPhi({"kernel_size": 5, "hidden_ratio": 2, "init": "identity"}, config).eval()
    with torch.no_grad():
        phi.depthwise.weight.normal_()  # a kernel that mixes neighbours; the gate stays constant (zero ECA kernel)
    grid = (4, 4, 4)
    tokens = torch.randn(1, 64, SMALL["hidden_size"])
    changed = tokens.clone()
    changed[:, :16] += 1.0  # time slice 0
    with torch.no_grad():
        before, after = phi(tokens, grid), phi(changed, grid)
    assert (after[:, :16] - before[:, :16]).abs().max() > 1e-2
    torch.testing.assert_close(after[:, 16:], before[:, 16:], atol=1e-6, rtol=0)


def test_moving_digits_move_in_the_labelled_direction():
    arrays = moving_digits_arrays(seed=0, canvas_size=48, num_frames=8, label="direction")
    clips, labels = arrays["train"]
    assert clips.shape[1:] == (8, 48, 48) and set(labels.tolist()) == set(range(len(DIRECTIONS)))
    assert len(arrays["validation"][0]) + len(clips) == 1797
    steps = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}
    y, x = np.mgrid[:48, :48]
    for clip, label in zip(clips[:40], labels[:40]):
        difference = clip[-1] - clip[0]  # where the digit went minus where it was; the still digit cancels
        gained, lost = difference > 0.5, difference < -0.5  # strokes, not the frames' noise
        shift = np.array([c[gained].mean() - c[lost].mean() for c in (y, x)])
        axis = int(np.argmax(np.abs(shift)))  # it moved along one axis, by 21 px
        moved = [0, 0]
        moved[axis] = int(np.sign(shift[axis]))
        assert moved == list(steps[DIRECTIONS[label]]) and abs(shift[axis]) > 10
    with pytest.raises(ValueError, match="canvas_size = 24 cannot hold"):
        moving_digits_arrays(canvas_size=24)
    with pytest.raises(ValueError, match="label = 'colour' is not allowed"):
        moving_digits_arrays(label="colour")
    digits, classes = moving_digits_arrays(seed=0)["validation"]  # the same clips, labelled by the moving digit
    assert np.array_equal(digits, arrays["validation"][0]) and set(classes.tolist()) == set(range(10))


@pytest.mark.parametrize("plan", [{"method": "tome", "r": 12}, {"method": "dynamicvit", "keep_rate": 0.5}])
def test_the_picture_shows_the_tubelets_of_each_layer(tmp_path, plan):
    from hf_tokenprune.visualization import render_video_tokens, token_maps

    _, ours = stock_and_ours(token_reduction=plan)
    with torch.no_grad():
        outputs = ours(CLIPS[:1])
    maps = token_maps(outputs, num_prefix=0)
    for layer_map, (_, mlp) in zip(maps, outputs.token_counts):
        assert layer_map["alive"].shape == (4, 4, 4)
        if layer_map["groups"] is None:  # pruning: the live tubelets are the tokens
            assert layer_map["alive"].sum() == mlp
        else:  # merging: every tubelet lives on in one of the tokens, groups span time slots
            assert len(np.unique(layer_map["groups"])) == mlp
    frames = (CLIPS[0].permute(0, 2, 3, 1).numpy() + 2) / 4
    path = render_video_tokens(frames, outputs, str(tmp_path / "clip.png"), tubelet_size=2, title="t")
    assert os.path.getsize(path) > 5_000
