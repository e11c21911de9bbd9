"""The method matrix on the tiny ViT: every registered method (its headline and keep-all plans, as its class
declares them; the throwaway ``random_keep`` of tests/extensions among them) and the variants: the keep-all
identity, token bookkeeping, shapes, inputs, restore and runtime overrides, and what each method promises."""

import pytest
import torch
from conftest import (
    ALL_REDUCING,
    BUILT_IN,
    KEEP_ALL_PLANS,
    REDUCING_PLANS,
    TINY,
    pruned_model,
    tiny_config,
)
from transformers import ViTConfig, ViTForImageClassification

import hf_tokenprune
from hf_tokenprune import TokenPruneViTForImageClassification, TokenPruneViTModel


def test_the_matrix_is_the_registry_with_a_method_defined_outside_the_package():
    assert set(REDUCING_PLANS) == set(KEEP_ALL_PLANS) == set(hf_tokenprune.REDUCTION_METHODS)
    assert "random_keep" in REDUCING_PLANS and "random_keep" not in BUILT_IN  # tests/extensions/random_keep.py


@pytest.mark.parametrize("method", sorted(REDUCING_PLANS))
def test_each_methods_operating_points_are_plans_from_mildest_to_strongest(method):
    """What a method's class declares for the tools (the tuner's grid, the accuracy benchmark's points): valid plans
    on this model, each costing no more than the one before."""
    from hf_tokenprune.flops import count_flops

    cls = hf_tokenprune.REDUCTION_METHODS[method]
    assert cls.paper is not None and cls.keep_all_plan is not None
    plans = [cls.operating_point(strength, tiny_config()) for strength in cls.operating_points[1]]
    costs = [count_flops(tiny_config(token_reduction=plan)).gflops for plan in plans]
    assert len(plans) >= 2 and costs == sorted(costs, reverse=True) and costs[-1] < costs[0]


def test_no_plan_is_stock_vit(stock_model, pixels):
    model = pruned_model(stock_model, token_reduction=None)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels).logits, stock_model(pixels).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("restore", [False, True])
@pytest.mark.parametrize("method", sorted(KEEP_ALL_PLANS))
def test_keep_all_reproduces_stock_logits(stock_model, pixels, method, restore):
    model = pruned_model(stock_model, token_reduction=KEEP_ALL_PLANS[method], restore_tokens=restore)
    with torch.no_grad():
        out = model(pixels)
        torch.testing.assert_close(out.logits, stock_model(pixels).logits, atol=1e-5, rtol=0)
    assert all(a == m == 65 for a, m in out.token_counts)


@pytest.mark.parametrize("name", sorted(ALL_REDUCING))
def test_token_counts_follow_the_plan_and_cls_is_kept(stock_model, pixels, name):
    model = pruned_model(stock_model, token_reduction=ALL_REDUCING[name])
    with torch.no_grad():
        out = model(pixels)
    assert list(out.token_counts) == model.config.token_counts()
    rejoins_at_the_end = name.startswith(("skipvit", "evo_vit")) or name == "cropr"
    assert out.token_counts[-1][1] < 65 or rejoins_at_the_end
    assert len(out.token_positions) == TINY["num_hidden_layers"]
    for (_, mlp_tokens), positions in zip(out.token_counts, out.token_positions):
        assert positions.shape == (3, mlp_tokens)
        assert (positions[:, 0] == 0).all(), "the CLS token must stay first"
        alive = positions[positions >= 0]
        assert alive.max() <= 64
    assert out.patch_grid == (8, 8)
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("method", sorted(REDUCING_PLANS))
def test_batch_of_one_matches_batched_rows(stock_model, pixels, method):
    model = pruned_model(stock_model, token_reduction=REDUCING_PLANS[method])
    with torch.no_grad():
        batched = model(pixels).logits
        single = model(pixels[1:2]).logits
    torch.testing.assert_close(single, batched[1:2], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", sorted(REDUCING_PLANS))
def test_odd_image_and_hidden_sizes(method):
    odd = dict(image_size=28, patch_size=4, hidden_size=36, num_attention_heads=3, intermediate_size=53)
    plan = dict(REDUCING_PLANS[method])
    if method == "tome":
        plan["r"] = 5
    config = tiny_config(**odd, token_reduction=plan)
    model = TokenPruneViTForImageClassification(config).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 28, 28))
    assert out.logits.shape == (2, 5)
    assert list(out.token_counts) == config.token_counts()
    assert out.token_counts[0][0] == 50  # 7 x 7 patches + CLS


@pytest.mark.parametrize("method", sorted(REDUCING_PLANS))
def test_interpolate_pos_encoding_with_a_plan(stock_model, method):
    model = pruned_model(stock_model, token_reduction=REDUCING_PLANS[method])
    pixels = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        out = model(pixels, interpolate_pos_encoding=True)
    assert out.patch_grid == (10, 12)
    assert list(out.token_counts) == model.config.token_counts(image_size=(40, 48))
    assert out.token_counts[0][0] == 121


@pytest.mark.parametrize("name", sorted(ALL_REDUCING))
def test_restore_tokens_gives_full_length_in_patch_order(stock_model, pixels, name):
    compact = pruned_model(stock_model, token_reduction=ALL_REDUCING[name])
    full = pruned_model(stock_model, token_reduction=ALL_REDUCING[name], restore_tokens=True)
    with torch.no_grad():
        out = full.vit(pixels)
        reference = compact.vit(pixels)
    assert out.last_hidden_state.shape == (3, 65, 48)
    # The CLS token and every token alive at the end sit at their own positions.
    final_positions = reference.token_positions[-1]
    for row in range(3):
        for index, position in enumerate(final_positions[row].tolist()):
            if position >= 0 and not name.startswith("tome") and reference.last_hidden_state.shape[1] < 65:
                torch.testing.assert_close(
                    out.last_hidden_state[row, position], reference.last_hidden_state[row, index]
                )
    torch.testing.assert_close(full(pixels).logits, compact(pixels).logits)


def test_restore_tokens_returns_parked_tokens_with_their_value_when_they_left(stock_model, pixels):
    plan = {"method": "evit", "layers": [3], "keep_rate": 0.5, "fuse": False}
    model = pruned_model(stock_model, token_reduction=plan, restore_tokens=True)
    reduction = model.vit.layers[3].token_reduction
    seen = {}
    original = reduction.after_attention

    def spy(x, state, probe):
        seen["x"] = x
        return original(x, state, probe)

    reduction.after_attention = spy
    with torch.no_grad():
        out = model.vit(pixels)
        left = model.vit.layernorm(seen["x"])  # the dropped tokens' value when they left, after the final norm
    kept = set(out.token_positions[3][0].tolist())
    dropped = [p for p in range(1, 65) if p not in kept]
    assert len(dropped) == 32
    torch.testing.assert_close(out.last_hidden_state[0, dropped], left[0, dropped])


def test_restore_tokens_copies_merged_tokens_to_every_source(stock_model, pixels):
    plan = {"method": "tome", "r": 10}
    compact = pruned_model(stock_model, token_reduction=plan)
    full = pruned_model(stock_model, token_reduction=plan, restore_tokens=True)
    with torch.no_grad():
        small = compact.vit(pixels)
        restored = full.vit(pixels).last_hidden_state
    owner = small.token_owner[-1]  # (B, 65): which final token holds each embedding token
    assert owner.shape == (3, 65) and (owner[:, 0] == 0).all()
    expected = small.last_hidden_state.gather(1, owner.unsqueeze(-1).expand(-1, -1, 48))
    torch.testing.assert_close(restored, expected)
    groups = torch.bincount(owner[0], minlength=small.last_hidden_state.shape[1])
    assert groups.sum() == 65 and groups.max() > 1


def test_mean_pooling_counts_each_merged_token_for_the_patches_it_holds(stock_model, pixels):
    """``classifier_pooling="mean"`` under ToMe: the final norm of the plain mean of the last layer's output restored
    to full length (each merged token copied to every patch it holds), not the plain mean of the merged tokens."""
    from hf_tokenprune.models.token_reduction import restore_full_length

    model = pruned_model(stock_model, token_reduction={"method": "tome", "r": 8}, classifier_pooling="mean")
    with torch.no_grad():
        out = model(pixels)
        inner = model.vit(pixels, output_hidden_states=True)
        last, state = inner.hidden_states[-1], inner.layer_states[-1]
        restored = restore_full_length(last, state)
        expected = model.classifier(model.vit.layernorm(restored.mean(dim=1)))
        plain = model.classifier(model.vit.layernorm(last.mean(dim=1)))
    assert last.shape[1] == 65 - 4 * 8 and restored.shape[1] == 65
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)
    assert (plain - out.logits).abs().max() > 1e-4


def test_evit_keeps_the_tokens_the_cls_token_attends_to_most(stock_model, pixels):
    plan = {"method": "evit", "layers": [2], "keep_rate": 0.25, "fuse": True}
    model = pruned_model(stock_model, token_reduction=plan)
    stock_eager = ViTForImageClassification(ViTConfig(**TINY, attn_implementation="eager")).eval()
    stock_eager.load_state_dict(stock_model.state_dict())
    with torch.no_grad():
        attentions = stock_eager(pixels, output_attentions=True).attentions
        out = model(pixels)
    cls_row = attentions[2][:, :, 0, 1:].mean(dim=1)  # (B, 64)
    expected = cls_row.topk(16, dim=1).indices + 1
    kept = out.token_positions[2][:, 1:17]
    assert torch.equal(kept.sort(dim=1).values, expected.sort(dim=1).values)
    assert (out.token_positions[2][:, -1] == -1).all(), "the fused token stands at no patch position"


def test_tome_never_merges_cls_and_tracks_sizes(stock_model, pixels):
    model = pruned_model(stock_model, token_reduction={"method": "tome", "r": 12})
    with torch.no_grad():
        out = model.vit(pixels)
    for owner in out.token_owner:
        assert (owner[:, 0] == 0).all()
        assert (owner[:, 1:] == 0).sum() == 0, "no patch may be merged into the CLS token"


def test_skipvit_rejoin_puts_tokens_back_in_patch_order(stock_model, pixels):
    model = pruned_model(stock_model, token_reduction=REDUCING_PLANS["skipvit"])
    with torch.no_grad():
        out = model(pixels)
    rejoined = out.token_positions[3]
    assert torch.equal(rejoined, torch.arange(65).expand(3, -1))


def test_evo_vit_uses_the_same_informative_set_through_a_stage(stock_model, pixels):
    plan = {"method": "evo_vit", "stages": [[1, 3]], "keep_rate": 0.5}
    model = pruned_model(stock_model, token_reduction=plan)
    with torch.no_grad():
        out = model(pixels)
    assert torch.equal(out.token_positions[1], out.token_positions[2])
    assert out.token_counts == ((65, 65), (33, 33), (33, 33), (65, 65))
    assert torch.equal(out.token_positions[3], torch.arange(65).expand(3, -1))


@pytest.mark.parametrize("method", ["evit", "skipvit", "evo_vit"])
def test_runtime_keep_rate_overrides_the_plan_but_not_the_config(stock_model, pixels, method):
    model = pruned_model(stock_model, token_reduction=REDUCING_PLANS[method])
    before = dict(model.config.token_reduction)
    with torch.no_grad():
        out = model(pixels, keep_rate=0.25)
        identity = model(pixels, keep_rate=1.0).logits
    assert list(out.token_counts) == model.config.token_counts(keep_rate=0.25)
    assert model.config.token_reduction == before
    torch.testing.assert_close(identity, stock_model(pixels).logits, atol=1e-5, rtol=0)


def test_runtime_keep_rate_is_checked(stock_model, pixels):
    model = pruned_model(stock_model, token_reduction=REDUCING_PLANS["evit"])
    with pytest.raises(ValueError, match=r"keep_rate = 1.5 .*\(0, 1\]"):
        model(pixels, keep_rate=1.5)
    tome = pruned_model(stock_model, token_reduction=REDUCING_PLANS["tome"])
    with pytest.raises(ValueError, match="methods with a keep rate"):
        tome(pixels, keep_rate=0.5)


def test_wrong_image_size_and_channels_give_clear_errors(stock_model):
    model = pruned_model(stock_model, token_reduction=REDUCING_PLANS["evit"])
    with pytest.raises(ValueError, match=r"48x48 but config.image_size is 32x32.*interpolate_pos_encoding"):
        model(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="1 channels but config.num_channels = 3"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\)"):
        model(torch.randn(3, 32, 32))


def test_base_model_outputs_and_hidden_states(stock_model, pixels):
    model = TokenPruneViTModel(tiny_config(token_reduction=REDUCING_PLANS["evit"])).eval()
    with torch.no_grad():
        out = model(pixels, output_hidden_states=True)
    assert out.pooler_output.shape == (3, 48)
    assert len(out.hidden_states) == 5
    assert [h.shape[1] for h in out.hidden_states] == [65, *(m for _, m in model.config.token_counts())]


def test_classifier_loss_and_tuple_output(stock_model, pixels):
    model = pruned_model(stock_model, token_reduction=REDUCING_PLANS["tome"])
    labels = torch.tensor([0, 1, 2])
    out = model(pixels, labels=labels)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    as_tuple = model(pixels, labels=labels, return_dict=False)
    torch.testing.assert_close(as_tuple[0], out.loss)


def test_runtime_options_follow_the_config_and_structure_cannot_change(stock_model, pixels):
    model = pruned_model(stock_model, token_reduction=REDUCING_PLANS["evit"])
    model.config.token_reduction = {**model.config.token_reduction, "keep_rate": 0.3}  # what a schedule does
    with torch.no_grad():
        assert list(model(pixels).token_counts) == model.config.token_counts()
        assert model(pixels).token_counts[1] == (65, 1 + 20 + 1)
    model.config.token_reduction = {**model.config.token_reduction, "layers": [0]}
    with pytest.raises(ValueError, match=r"changed since the model was built.*only token_reduction's \['keep_rate'\]"):
        model(pixels)
    reuse = pruned_model(stock_model, attention_reuse={"method": "skipat", "layers": [1, 2]})
    reuse.config.attention_reuse = {**reuse.config.attention_reuse, "layers": [1, 2, 3]}
    with pytest.raises(ValueError, match=r"attention_reuse \{.*\[1, 2\].*\} -> \{.*\[1, 2, 3\]"):
        reuse(pixels)
    tome = pruned_model(stock_model, token_reduction={"method": "tome", "r": [0, 0, 0, 0]})
    tome.config.token_reduction = {**tome.config.token_reduction, "r": [0, 8, 8, 0]}
    with torch.no_grad():
        assert tome(pixels).token_counts == ((65, 65), (65, 57), (57, 49), (49, 49))


def test_evo_vit_two_heads_trains_both_and_predicts_with_the_mean_head(stock_model, pixels):
    model = pruned_model(stock_model, token_reduction={"method": "evo_vit", "layers": [2], "two_heads": True})
    assert model.cls_classifier is not None and model.cls_norm is not None
    labels = torch.tensor([1, 2, 3])
    out = model(pixels, labels=labels, output_hidden_states=False)
    assert out.hidden_states is None
    last = model.vit(pixels, output_hidden_states=True).hidden_states[-1]  # before the final LayerNorm
    cls_logits = model.cls_classifier(model.cls_norm(last[:, 0]))
    mean_logits = model.classifier(model.vit.layernorm(last[:, 1:].mean(dim=1)))  # LN(mean), as the official
    torch.testing.assert_close(out.logits, mean_logits)
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(out.loss, 0.5 * ce(mean_logits, labels) + 0.5 * ce(cls_logits, labels))


def test_supervit_serves_several_operating_points(stock_model):
    model = pruned_model(stock_model, token_reduction={"method": "supervit", "layers": [1, 2]})
    plan = model.config.token_reduction
    assert plan["fuse"] is False and plan["keep_rates"] == [0.5, 0.7, 1.0]
    assert plan["resolutions"] == [20, 24, 28, 32]
    with torch.no_grad():
        for size in plan["resolutions"]:
            for keep_rate in plan["keep_rates"]:
                out = model(torch.randn(2, 3, size, size), keep_rate=keep_rate, interpolate_pos_encoding=True)
                rows = size // 4
                assert out.token_counts == tuple(model.config.token_counts(keep_rate=keep_rate, image_size=size))
                assert out.token_counts[0][0] == rows * rows + 1


@pytest.mark.parametrize("method", sorted(REDUCING_PLANS))
def test_disable_plans_runs_the_stock_model(stock_model, pixels, method):
    model = pruned_model(stock_model, token_reduction=REDUCING_PLANS[method])
    with torch.no_grad():
        out = model(pixels, disable_plans=True)
    torch.testing.assert_close(out.logits, stock_model(pixels).logits, atol=1e-5, rtol=0)
    assert all(counts == (65, 65) for counts in out.token_counts)


def _mask(batch: int) -> torch.Tensor:
    mask = torch.ones(batch, 65, dtype=torch.long)
    mask[:, 60:] = 0  # the last patches are padding
    return mask


@pytest.mark.parametrize("plan", [None, KEEP_ALL_PLANS["tome"], KEEP_ALL_PLANS["evit"]])
def test_an_attention_mask_is_taken_where_the_plan_keeps_the_sequence(stock_model, pixels, plan):
    """No plan, or a keep-all one: the sequence keeps its length and order, so a mask means what it does on the
    stock model, and the logits are the stock ones with the same mask."""
    model = pruned_model(stock_model, token_reduction=plan)
    mask = _mask(pixels.shape[0])
    with torch.no_grad():
        expected = stock_model(pixels, attention_mask=mask).logits
        torch.testing.assert_close(model(pixels, attention_mask=mask).logits, expected, atol=1e-5, rtol=0)
        assert not torch.allclose(expected, stock_model(pixels).logits)  # the mask matters


@pytest.mark.parametrize(
    "plans, message",
    [
        ({"token_reduction": REDUCING_PLANS["evit"]}, "cannot be combined with token_reduction \\(evit\\)"),
        ({"attention_reuse": {"method": "skipat", "layers": [1]}}, "cannot be combined with attention_reuse"),
    ],
)
def test_an_attention_mask_is_refused_in_one_line_where_the_plan_changes_the_sequence(
    stock_model, pixels, plans, message
):
    model = pruned_model(stock_model, **plans)
    with pytest.raises(ValueError, match=message) as error:
        model(pixels, attention_mask=_mask(pixels.shape[0]))
    assert "\n" not in str(error.value)
    with torch.no_grad():  # with the plans off, the mask is the stock model's again
        expected = stock_model(pixels, attention_mask=_mask(3)).logits
        torch.testing.assert_close(
            model(pixels, attention_mask=_mask(3), disable_plans=True).logits, expected, atol=1e-5, rtol=0
        )


def test_a_typo_in_a_method_name_gets_a_suggestion():
    with pytest.raises(ValueError, match="is not a known method; allowed: .* Did you mean 'dynamicvit'\\?"):
        tiny_config(token_reduction={"method": "dynamic_vit"})
    with pytest.raises(ValueError, match="Write it as \\{'method': 'tome'\\}"):
        tiny_config(token_reduction="tome")
