"""Every attention backend transformers offers on this machine, with every plan.

eager, sdpa and flex_attention give the same logits for every method at keep-all and at a reducing setting;
a backend that cannot take ToMe's proportional-attention bias is refused (at build, by set_attn_implementation and
at forward), never silently run without it; DynamicViT's masked training uses its own masked softmax whatever the
backend. flex_attention on CPU compiles its kernel once per process (a few seconds), then follows every length.
"""

import pytest
import torch
from conftest import KEEP_ALL_PLANS, REDUCING_PLANS, REUSE_PLANS, pruned_model, tiny_config
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from hf_tokenprune import TokenPruneViTForImageClassification

BACKENDS = ("eager", "sdpa", "flex_attention")
CASES = [(f"{name}-keep-all", {"token_reduction": KEEP_ALL_PLANS[name]}) for name in sorted(KEEP_ALL_PLANS)]
CASES += [(name, {"token_reduction": REDUCING_PLANS[name]}) for name in sorted(REDUCING_PLANS)]
CASES += [(name, plans) for name, plans in sorted(REUSE_PLANS.items())]
TOME = {"method": "tome", "r": 6}
BIAS_FREE = "bias_free_test"  # stands for the flash kernels: takes no additive mask


def ignore_mask_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention that, like the flash kernels, has no way to take an additive float mask."""
    return sdpa_attention_forward(module, query, key, value, None, **kwargs)


@pytest.fixture
def bias_free_backend():
    AttentionInterface.register(BIAS_FREE, ignore_mask_attention)
    yield BIAS_FREE
    AttentionInterface._global_mapping.pop(BIAS_FREE, None)


def logits_under(model, implementation, pixels):
    model.set_attn_implementation(implementation)
    assert model.config._attn_implementation == implementation
    with torch.no_grad():
        return model(pixels).logits


@pytest.mark.parametrize("name, plans", CASES, ids=[name for name, _ in CASES])
def test_every_backend_gives_the_same_logits(stock_model, pixels, one_thread, name, plans):
    model = pruned_model(stock_model, **plans)
    reference = logits_under(model, "sdpa", pixels)
    for implementation in BACKENDS:
        torch.testing.assert_close(logits_under(model, implementation, pixels), reference, atol=1e-5, rtol=0)
    if name in REDUCING_PLANS:  # the plan really changed the sequence, under every backend
        with torch.no_grad():
            assert model(pixels).token_counts != tuple((65, 65) for _ in range(4))


def test_set_attn_implementation_works_like_choosing_it_at_load_time(stock_model, pixels, one_thread, tmp_path):
    pruned_model(stock_model, token_reduction=TOME).save_pretrained(tmp_path)
    at_load = TokenPruneViTForImageClassification.from_pretrained(tmp_path, attn_implementation="flex_attention")
    switched = TokenPruneViTForImageClassification.from_pretrained(tmp_path, attn_implementation="sdpa")
    sdpa_logits = logits_under(switched.eval(), "sdpa", pixels)
    switched.set_attn_implementation("flex_attention")
    assert at_load.config._attn_implementation == switched.config._attn_implementation == "flex_attention"
    assert switched.vit.config._attn_implementation == "flex_attention"
    with torch.no_grad():
        from_load, from_switch = at_load.eval()(pixels).logits, switched(pixels).logits
    torch.testing.assert_close(from_switch, from_load, atol=1e-6, rtol=0)
    torch.testing.assert_close(from_switch, sdpa_logits, atol=1e-5, rtol=0)


def test_a_backend_without_bias_is_refused_when_tome_needs_one(bias_free_backend):
    with pytest.raises(ValueError, match=r"attn_implementation='bias_free_test' cannot add tome's proportional"):
        TokenPruneViTForImageClassification(tiny_config(token_reduction=TOME, attn_implementation=bias_free_backend))


def test_set_attn_implementation_refuses_it_too_and_keeps_the_backend(stock_model, pixels, bias_free_backend):
    model = pruned_model(stock_model, token_reduction=TOME)
    with pytest.raises(ValueError, match="proportional_attention'\\]=False, or load with attn_implementation='sdpa'"):
        model.set_attn_implementation(bias_free_backend)
    assert model.config._attn_implementation == "sdpa"


def test_without_proportional_attention_any_backend_runs(stock_model, pixels, bias_free_backend):
    plan = {**TOME, "proportional_attention": False}
    model = pruned_model(stock_model, token_reduction=plan)
    reference = logits_under(model, "sdpa", pixels)
    torch.testing.assert_close(logits_under(model, bias_free_backend, pixels), reference, atol=1e-5, rtol=0)


def test_a_bias_that_appears_at_runtime_is_refused_at_forward(stock_model, pixels, bias_free_backend):
    model = pruned_model(stock_model, token_reduction={"method": "tome", "r": 0})  # no bias: any backend
    model.set_attn_implementation(bias_free_backend)
    model(pixels)
    model.config.token_reduction = {**model.config.token_reduction, "r": [6, 6, 6, 6]}  # a runtime option
    with pytest.raises(ValueError, match="attn_implementation='bias_free_test' cannot add tome's proportional"):
        model(pixels)


def test_flash_attention_is_refused_at_forward_rather_than_dropping_the_bias(stock_model, pixels):
    # No flash kernel runs on this CPU, so set the name directly: the refusal comes before any layer runs.
    model = pruned_model(stock_model, token_reduction=TOME)
    model.config._attn_implementation_internal = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2' cannot add"):
        model(pixels)


@pytest.mark.parametrize("implementation", BACKENDS)
def test_dynamicvit_masked_training_uses_its_own_softmax_on_every_backend(stock_model, pixels, implementation):
    plan = {**REDUCING_PLANS["dynamicvit"], "train_mode": "mask"}
    model = pruned_model(stock_model, token_reduction=plan)
    outputs = {}
    for backend in ("sdpa", implementation):
        model.set_attn_implementation(backend)
        model.train()
        torch.manual_seed(3)  # the same Gumbel decisions
        with torch.no_grad():
            outputs[backend] = model(pixels)
    torch.testing.assert_close(outputs[implementation].logits, outputs["sdpa"].logits, atol=1e-5, rtol=0)
    assert outputs[implementation].token_counts == tuple((65, 65) for _ in range(4))  # masked, not gathered
