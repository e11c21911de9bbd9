"""Methods with parameters of their own (Cropr, DynamicViT) and attention reuse (SkipAt)."""

import pytest
import torch
from conftest import ALL_REDUCING, REDUCING_PLANS, REUSE_PLANS, TINY, pruned_model, tiny_config

from hf_tokenprune import TokenPruneViTForImageClassification
from hf_tokenprune.models.attention_reuse import SkipAtPhi

LEARNED = {name: plan for name, plan in ALL_REDUCING.items() if name.startswith(("cropr", "dynamicvit"))}
TRAINABLE = {**{name: {"token_reduction": plan} for name, plan in ALL_REDUCING.items()}, **REUSE_PLANS}


def stock_parameter_names(stock_model):
    return set(stock_model.state_dict())


@pytest.mark.parametrize("name", sorted(REUSE_PLANS))
def test_reuse_plans_run_with_the_planned_token_counts(stock_model, pixels, name):
    model = pruned_model(stock_model, **REUSE_PLANS[name])
    with torch.no_grad():
        out = model(pixels)
    assert out.logits.shape == (3, 5)
    assert list(out.token_counts) == model.config.token_counts()
    assert all((positions[:, 0] == 0).all() for positions in out.token_positions)


@pytest.mark.parametrize("name", sorted(REUSE_PLANS))
def test_reuse_loads_stock_weights_with_only_phi_new_and_round_trips(tmp_path, stock_model, pixels, name):
    stock_model.save_pretrained(tmp_path / "stock")
    model, info = TokenPruneViTForImageClassification.from_pretrained(
        tmp_path / "stock", output_loading_info=True, **REUSE_PLANS[name]
    )
    assert info["missing_keys"] and all(".attention_reuse." in key for key in info["missing_keys"])
    assert not info["unexpected_keys"]
    reused = REUSE_PLANS[name]["attention_reuse"]["layers"]
    for index in reused:  # the replaced attention stays for loading and disable_plans, frozen
        assert not any(p.requires_grad for p in model.vit.layers[index].attention.parameters())
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(pixels, disable_plans=True).logits, stock_model(pixels).logits, atol=1e-5, rtol=0
        )
        model.save_pretrained(tmp_path / "saved")
        again = TokenPruneViTForImageClassification.from_pretrained(tmp_path / "saved").eval()
        torch.testing.assert_close(again(pixels).logits, model(pixels).logits, atol=0, rtol=0)


def test_phi_starts_as_the_identity_on_its_input():
    config = tiny_config(attention_reuse={"method": "skipat", "layers": [1]})
    phi = TokenPruneViTForImageClassification(config).vit.layers[1].attention_reuse
    previous = torch.randn(2, 64, 48)
    torch.testing.assert_close(phi(previous, (8, 8)), previous, atol=2e-3, rtol=0)


def test_identity_initialisation_survives_loading_from_a_stock_checkpoint(tmp_path, stock_model):
    stock_model.save_pretrained(tmp_path)
    model = TokenPruneViTForImageClassification.from_pretrained(
        tmp_path, attention_reuse={"method": "skipat", "layers": [2]}
    )
    previous = torch.randn(1, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(model.vit.layers[2].attention_reuse(previous, (8, 8)), previous, atol=2e-3, rtol=0)


def test_reuse_after_reduction_is_rejected_at_config_time():
    with pytest.raises(ValueError, match=r"reuses attention at layer\(s\) \[2, 3\].*evit.*from layer 2 on.*below 2"):
        tiny_config(
            attention_reuse={"method": "skipat", "layers": [1, 2, 3]},
            token_reduction={"method": "evit", "layers": [2]},
        )
    with pytest.raises(ValueError, match="cropr"):
        tiny_config(attention_reuse={"method": "skipat", "layers": [2]}, token_reduction=REDUCING_PLANS["cropr"])
    with pytest.raises(ValueError, match=r"attention_reuse\['layers'\] = 0 must be an integer in \[1, 3\]"):
        tiny_config(attention_reuse={"method": "skipat", "layers": [0, 1]})


def test_reuse_refuses_a_runtime_plan_that_reduces_before_it(stock_model, pixels):
    model = pruned_model(stock_model, **REUSE_PLANS["skipat+tome"])
    with pytest.raises(ValueError, match=r"tome\) changes the tokens from layer 0 on"):
        model.config.token_reduction = {**model.config.token_reduction, "r": [6, 0, 0, 0]}
    model.config.token_reduction["r"][0] = 6  # an in-place edit skips the config check; the layer still refuses
    with pytest.raises(ValueError, match="attention reuse at layer 1 needs the full patch grid"):
        model(pixels)


@pytest.mark.parametrize("name", sorted(TRAINABLE))
def test_every_trainable_parameter_gets_a_gradient(stock_model, pixels, name):
    model = pruned_model(stock_model, **TRAINABLE[name]).train()
    out = model(pixels, labels=torch.tensor([0, 1, 2]))
    out.loss.backward()
    stock = stock_parameter_names(stock_model)
    for parameter_name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, f"{parameter_name} got no gradient"
            assert torch.isfinite(parameter.grad).all(), parameter_name
    new = [p for n, p in model.named_parameters() if n not in stock and p.requires_grad]
    if new:
        assert sum(p.grad.abs().sum() for p in new) > 0


@pytest.mark.parametrize("name", sorted(TRAINABLE))
def test_train_and_eval_token_counts_agree(stock_model, pixels, name):
    model = pruned_model(stock_model, **TRAINABLE[name])
    with torch.no_grad():
        evaluated = model.eval()(pixels).token_counts
        trained = model.train()(pixels).token_counts
    plan = TRAINABLE[name].get("token_reduction") or {}
    if plan.get("method") == "dynamicvit" and plan.get("train_mode", "mask") == "mask":
        # The paper's training masks attention instead of removing tokens: every layer really sees them all.
        assert all(counts == (65, 65) for counts in trained)
        assert evaluated == tuple(model.config.token_counts())
    else:
        assert trained == evaluated


def test_cropr_auxiliary_heads_train_the_scorer_not_the_backbone(stock_model, pixels):
    model = pruned_model(stock_model, token_reduction=REDUCING_PLANS["cropr"]).train()
    out = model.vit(pixels)
    assert len(out.aux_logits) == 2 and out.aux_logits[0][0].shape == (3, 5)
    aux = sum(logits.sum() for logits, _ in out.aux_logits)
    aux.backward()
    scorer = model.vit.layers[0].token_reduction.scorer
    assert scorer.queries.grad is not None and scorer.queries.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vit.embeddings.parameters()), "features reach the heads detached"


def test_cropr_loss_adds_the_weighted_auxiliary_losses(stock_model, pixels):
    plan = {**REDUCING_PLANS["cropr"], "aux_loss_weight": 0.5}
    model = pruned_model(stock_model, token_reduction=plan).train()
    labels = torch.tensor([4, 0, 1])
    torch.manual_seed(3)
    out = model(pixels, labels=labels)
    torch.manual_seed(3)
    features = model.vit(pixels)
    ce = torch.nn.functional.cross_entropy
    main = ce(model.classifier(features.last_hidden_state[:, 0]), labels)
    aux = sum(0.5 * ce(logits, labels) for logits, _ in features.aux_logits)
    torch.testing.assert_close(out.loss, main + aux)
    torch.testing.assert_close(out.aux_loss, aux)


def test_cropr_fast_scores_rank_like_the_training_scores(stock_model, pixels):
    model = pruned_model(stock_model, token_reduction=REDUCING_PLANS["cropr"])
    scorer = model.vit.layers[0].token_reduction.scorer
    tokens = torch.randn(2, 65, 48)
    with torch.no_grad():
        full, _ = scorer(tokens)
        fast = scorer.fast_scores(tokens)
    difference = full - fast  # the same up to a constant per image
    torch.testing.assert_close(difference, difference[:, :1].expand_as(difference), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(LEARNED) + ["skipat"])
def test_inference_checkpoint_drops_training_modules(tmp_path, stock_model, pixels, name):
    plans = REUSE_PLANS[name] if name in REUSE_PLANS else {"token_reduction": LEARNED[name]}
    model = pruned_model(stock_model, **plans)
    with torch.no_grad():
        expected = model(pixels).logits
    removed = model.drop_training_modules()
    if name.startswith("cropr"):
        assert removed and all("aux_head" in path for path in removed)
        assert model.config.token_reduction["training_heads"] is False
    if name == "skipat":
        assert model.config.attention_reuse["keep_replaced_attention"] is False
        assert len(removed) == 4
    model.save_pretrained(tmp_path)
    loaded, info = TokenPruneViTForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(pixels).logits, expected, atol=1e-6, rtol=0)
    parameters = sum(p.numel() for p in loaded.parameters())
    assert parameters < sum(p.numel() for p in pruned_model(stock_model, **plans).parameters()) or not removed


def test_dynamicvit_mask_training_adds_the_ratio_loss(stock_model, pixels):
    model = pruned_model(stock_model, token_reduction=REDUCING_PLANS["dynamicvit"]).train()
    out = model.vit(pixels)
    assert out.aux_loss is not None and out.aux_loss.ndim == 0 and out.aux_loss >= 0
    labels = torch.tensor([0, 1, 2])
    classified = model(pixels, labels=labels)
    assert classified.aux_loss is not None and classified.loss > classified.aux_loss


def test_dynamicvit_keeps_the_planned_fraction_of_the_original_tokens(stock_model, pixels):
    model = pruned_model(stock_model, token_reduction={"method": "dynamicvit", "layers": [1, 3], "keep_rate": 0.5})
    with torch.no_grad():
        out = model(pixels)
    assert out.token_counts == ((65, 65), (33, 33), (33, 33), (17, 17))  # ceil(0.5 * 64) and ceil(0.25 * 64)


def test_dynamicvit_predictor_starts_at_the_planned_keep_rate(stock_model, tmp_path):
    """An untrained predictor keeps each token with probability keep_rate, so masked training starts where the
    ratio loss wants it (not at one half); a checkpoint's trained bias is not re-initialised on loading."""
    model = pruned_model(stock_model, token_reduction={"method": "dynamicvit", "layers": [1, 3], "keep_rate": 0.8})
    predictor = model.vit.layers[1].token_reduction.predictor
    keep = predictor(torch.randn(4, 64, TINY["hidden_size"]), None)[..., 0].exp()
    assert keep.mean().item() == pytest.approx(0.8, abs=0.03)
    with torch.no_grad():
        predictor.classify[-2].bias.copy_(torch.tensor([3.0, -1.0]))  # as if trained
    model.save_pretrained(tmp_path)
    loaded = TokenPruneViTForImageClassification.from_pretrained(tmp_path)
    assert loaded.vit.layers[1].token_reduction.predictor.classify[-2].bias.tolist() == [3.0, -1.0]


def test_bounded_policy_gradient_keeps_the_forward_and_caps_only_a_hidden_keys_strength():
    """A query whose strongest key (key 1, logit 12) is hidden: the official derivative for that key's decision is
    about exp(12); the bounded one counts the key at most as strong as the strongest key the query sees. Visible keys'
    decisions get the same gradient either way, and so does everything when no hidden key outweighs them."""
    from hf_tokenprune.models.modeling_tokenprune_common import policy_attention

    query = torch.zeros(1, 1, 3, 2)
    query[..., 0] = 1.0
    key = torch.tensor([[[[0.0, 0.0], [12.0, 0.0], [1.0, 0.0]]]])
    value = torch.randn(1, 1, 3, 2)

    def run(policy, gradient):
        policy = policy.clone().requires_grad_(True)
        out = policy_attention(query, key, value, policy, 1.0, gradient=gradient)
        out.sum().backward()
        return out.detach(), policy.grad

    hidden = torch.tensor([[1.0, 0.0, 1.0]])
    (official, official_grad), (bounded, bounded_grad) = run(hidden, "official"), run(hidden, "bounded")
    torch.testing.assert_close(bounded, official, rtol=0, atol=0)
    assert official_grad[0, 1].abs() > 1e3 and bounded_grad[0, 1].abs() < 10
    torch.testing.assert_close(bounded_grad[0, [0, 2]], official_grad[0, [0, 2]])
    weak = torch.tensor([[1.0, 1.0, 0.0]])  # the hidden key is weaker than the visible ones: no cap applies
    torch.testing.assert_close(run(weak, "bounded")[1], run(weak, "official")[1])


def test_dynamicvit_policy_gradient_is_checked():
    with pytest.raises(ValueError, match=r"policy_gradient'\] = 'exact' is not allowed.*'bounded', 'official'"):
        tiny_config(token_reduction={"method": "dynamicvit", "policy_gradient": "exact"})


def test_skipat_needs_at_least_hidden_ratio_two_for_the_identity_start():
    with pytest.raises(ValueError, match="identity' needs hidden_ratio >= 2"):
        tiny_config(attention_reuse={"method": "skipat", "hidden_ratio": 1})
    phi = SkipAtPhi(
        tiny_config(attention_reuse={"method": "skipat", "hidden_ratio": 1, "init": "random"}).attention_reuse,
        tiny_config(),
    )
    assert phi.expand.out_features == TINY["hidden_size"]


def test_batch_mean_auxiliary_loss_follows_the_trainers_per_item_normalisation(stock_model):
    from types import SimpleNamespace

    model = pruned_model(stock_model, token_reduction=REDUCING_PLANS["dynamicvit"])
    labels = torch.tensor([0, 1])
    outputs = SimpleNamespace(aux_logits=(), aux_loss=torch.tensor(0.8))
    torch.testing.assert_close(model.auxiliary_loss(outputs, labels), torch.tensor(0.8))
    # Four micro-batches of 2 make a global batch of 8: the Trainer sums them, so each counts 2/8 of its mean.
    scaled = model.auxiliary_loss(outputs, labels, num_items_in_batch=torch.tensor(8))
    torch.testing.assert_close(4 * scaled, torch.tensor(0.8))


def test_attention_reuse_works_on_a_non_square_grid(stock_model):
    model = pruned_model(stock_model, **REUSE_PLANS["skipat+evit"])
    with torch.no_grad():
        out = model(torch.randn(2, 3, 40, 48), interpolate_pos_encoding=True)
    assert out.patch_grid == (10, 12)
    assert list(out.token_counts) == model.config.token_counts(image_size=(40, 48))


@pytest.mark.parametrize(
    "depth, spans",
    [(12, [[3, 4, 5], [3, 4, 5, 6, 7, 8]]), (4, [[1], [1, 2]]), (6, [[2, 3], [2, 3, 4]]), (2, [[1], [1]])],
)
def test_skipat_operating_points_scale_the_papers_fraction_of_the_depth(depth, spans):
    """At 12 layers SkipAt reuses blocks 3-8 (half the depth, from the end of the first quarter on) and, milder, 3-5;
    other depths keep those fractions (rounding the 12-layer indices would give [1, 2, 3] at 4 layers), never
    layer 0 (Phi needs an attention output to reuse)."""
    from types import SimpleNamespace

    from hf_tokenprune.models.attention_reuse import SkipAtPhi

    config = SimpleNamespace(num_hidden_layers=depth)
    assert [SkipAtPhi.operating_point(f, config)["layers"] for f in SkipAtPhi.operating_points[1]] == spans
