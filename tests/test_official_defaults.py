"""Defaults that follow the official code: Cropr's scorer and first module, DynamicViT's predictor norm."""

import torch
from conftest import TINY

from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForImageClassification
from hf_tokenprune.models.reduction_cropr import CroprReduction
from hf_tokenprune.models.reduction_dynamicvit import DynamicViTReduction


def cropr_module(**options):
    config = TokenPruneViTConfig(token_reduction={"method": "cropr", **options})  # ViT-B/16, 224
    return CroprReduction.build(config.token_reduction, config, 0), config


def test_cropr_official_scorer_is_the_queries_alone():
    module, config = cropr_module(training_heads=False)
    assert config.token_reduction["scorer"] == "official"
    params = {name: p.numel() for name, p in module.named_parameters()}
    assert params == {"scorer.queries": 768}  # one query of width 768: no norm, no projections
    tokens = torch.randn(2, 197, 768)
    expected = tokens @ module.scorer.queries[0, 0]  # the raw query-key logit of one head
    torch.testing.assert_close(module.scorer.fast_scores(tokens), expected)


def test_cropr_official_scorer_trains_through_one_head_of_detached_tokens():
    module, _ = cropr_module()
    assert module.scorer.num_heads == 1 and isinstance(module.scorer.aux_head.v_proj, torch.nn.Identity)
    assert module.scorer.aux_head.mlp_norm.eps == 1e-6 and module.scorer.aux_head.head_norm.eps == 1e-5
    tokens = torch.randn(2, 197, 768, requires_grad=True)
    scores, logits = module.scorer(tokens)
    torch.testing.assert_close(scores, module.scorer.fast_scores(tokens.detach()))
    logits.sum().backward()
    assert tokens.grad is None and module.scorer.queries.grad.abs().sum() > 0


def test_cropr_projected_scorer_by_name():
    module, config = cropr_module(scorer="projected", training_heads=False)
    assert module.scorer.num_heads == config.num_attention_heads
    scorer_params = sum(p.numel() for p in module.parameters())
    assert scorer_params == 768 + 2 * 768 + 2 * (768 * 768 + 768)  # queries, LayerNorm, q and k projections


def test_cropr_first_module_removes_one_more():
    config = TokenPruneViTConfig(token_reduction={"method": "cropr", "tokens_per_layer": 8})
    assert config.token_reduction["tokens_per_layer"] == [9] + [8] * 9  # 10 modules with last-layer fusion
    counts = [m for _, m in config.token_counts()]
    assert counts == [197, 188, 180, 172, 164, 156, 148, 140, 132, 124, 116, 197]
    large = TokenPruneViTConfig(
        num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096,
        token_reduction={"method": "cropr", "tokens_per_layer": 8},
    )  # fmt: skip
    assert large.token_counts()[-2] == (20, 20)  # ViT-L: 197 -> 20 tokens, as the paper and the official code
    keep_all = TokenPruneViTConfig(token_reduction={"method": "cropr", "tokens_per_layer": 0})
    assert keep_all.token_reduction["tokens_per_layer"] == [0] * 10


def test_dynamicvit_predictor_layer_norm_eps_is_pytorchs_default():
    config = TokenPruneViTConfig(**TINY, layer_norm_eps=1e-12, token_reduction={"method": "dynamicvit"})
    model = TokenPruneViTForImageClassification(config)
    norms = [m.predictor.project[0] for m in model.modules() if isinstance(m, DynamicViTReduction)]
    assert norms and all(norm.eps == 1e-5 for norm in norms)
    assert model.vit.layernorm.eps == 1e-12
