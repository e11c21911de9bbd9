"""Our methods against their official implementations: the same kept tokens and logits on identical weights
(reference fixtures), the official token counts, and the official defaults of the learned scorers.

Each ``tests/fixtures/*.safetensors`` was written by ``scripts/make_reference_fixtures.py`` from the official code
(the repository and commit are in the file's metadata): weights under our names, inputs, the official logits in
float64 and float32, and per layer what the official code kept (embedding positions of the kept patch tokens) or
merged (ToMe: which token holds each input token). Our model must keep or merge the same tokens and give the same
logits."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY
from safetensors import safe_open

from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForImageClassification
from hf_tokenprune.flops import count_flops
from hf_tokenprune.models.reduction_cropr import CroprReduction
from hf_tokenprune.models.reduction_dynamicvit import DynamicViTReduction

FIXTURES = sorted((Path(__file__).parents[1] / "fixtures").glob("*.safetensors"))
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5}


def load(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as file:
        return file.metadata(), {key: file.get_tensor(key) for key in file.keys()}


def canonical(owner: torch.Tensor) -> torch.Tensor:
    """Relabels each row's groups by order of first appearance: equal partitions give equal tensors."""
    rows = []
    for row in owner.tolist():
        labels: dict[int, int] = {}
        rows.append([labels.setdefault(value, len(labels)) for value in row])
    return torch.tensor(rows)


def reference_model(metadata: dict, tensors: dict) -> TokenPruneViTForImageClassification:
    config = TokenPruneViTConfig(**json.loads(metadata["config"]))
    model = TokenPruneViTForImageClassification(config).eval()
    weights = {key.removeprefix("weights."): value for key, value in tensors.items() if key.startswith("weights.")}
    model.load_state_dict(weights, strict=True)
    return model


def check_selections(out, metadata: dict, tensors: dict) -> int:
    """Asserts our kept/merged tokens equal the official ones at every recorded layer; returns how many."""
    kind, checked = metadata["selection"], 0
    fused = (json.loads(metadata["config"]).get("token_reduction") or {}).get("fuse", False)
    for key, official in tensors.items():
        if not key.startswith(kind + "."):
            continue
        layer = int(key.split(".")[1])
        if kind == "owner":
            assert torch.equal(canonical(out.token_owner[layer]), canonical(official)), f"merges differ at {layer}"
        else:
            ours = out.token_positions[layer][:, 1:]  # CLS first, then the kept patch tokens
            ours = ours[:, :-1] if fused else ours  # EViT's new fused token last (an earlier one may be kept: -1)
            assert ours.shape == official.shape, (
                f"layer {layer} keeps {ours.shape[1]} tokens, officially {official.shape[1]}"
            )
            assert torch.equal(ours.sort(dim=1).values, official.sort(dim=1).values), f"kept differ at {layer}"
        checked += 1
    return checked


@pytest.mark.parametrize("path", FIXTURES, ids=[path.stem for path in FIXTURES])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_same_selections_and_logits_as_the_official_code(path, dtype):
    metadata, tensors = load(path)
    model = reference_model(metadata, tensors).to(dtype)
    with torch.no_grad():
        out = model(tensors["pixel_values"].to(dtype), interpolate_pos_encoding=True)  # a smaller side: its table
    if metadata["selection"] == "none":  # attention reuse selects nothing: the logits below are the evidence
        assert metadata["method"] == "skipat" and model.config.attention_reuse["layers"]
    else:
        assert check_selections(out, metadata, tensors) >= 3
    official = tensors["logits_fp64" if dtype == torch.float64 else "logits_fp32"].to(dtype)
    torch.testing.assert_close(out.logits, official, atol=TOLERANCE[dtype], rtol=0)


def test_every_method_with_a_fixture_has_two_operating_points():
    methods = [load(path)[0]["method"] for path in FIXTURES]
    assert {"tome", "evit", "dynamicvit", "supervit", "evo_vit", "cropr", "skipat"} <= set(methods)
    assert all(methods.count(method) >= 2 for method in set(methods))


def vit_b(plan: dict) -> TokenPruneViTConfig:
    return TokenPruneViTConfig(token_reduction=plan)  # ViT-B/16 at 224 by default


def mlp_tokens(plan: dict) -> list[int]:
    return [m for _, m in vit_b(plan).token_counts()]


def test_dynamicvit_keeps_the_floor_of_n_times_rate_to_the_stage():
    # int(196 * 0.7) = 137, int(196 * 0.7 ** 2) = 96, int(196 * 0.7 ** 3) = 67 patch tokens, plus CLS.
    counts = mlp_tokens({"method": "dynamicvit", "keep_rate": 0.7})
    assert counts == [197] * 3 + [138] * 3 + [97] * 3 + [68] * 3
    counts = mlp_tokens({"method": "dynamicvit", "keep_rate": 0.5})  # 98, 49, 24 (ceil would give 25)
    assert counts == [197] * 3 + [99] * 3 + [50] * 3 + [25] * 3


def test_supervit_counts_the_cls_token_in():
    # ceil(0.7 * 197) = 138, ceil(0.7 * 139) = 98, ceil(0.7 * 99) = 70 patch tokens: 139, 99, 71 with CLS.
    counts = mlp_tokens({"method": "supervit", "keep_rate": 0.7})
    assert [counts[3], counts[6], counts[9]] == [139, 99, 71]
    assert counts == [197] * 3 + [139] * 3 + [99] * 3 + [71] * 3
    assert mlp_tokens({"method": "supervit", "keep_rate": 0.5})[9] == 1 + 26  # ceil(.5*197)=99, 50, 26


def test_evit_keeps_the_ceiling_of_the_current_patch_tokens():
    counts = mlp_tokens({"method": "evit", "keep_rate": 0.7, "fuse": False})
    assert [counts[3], counts[6], counts[9]] == [1 + 138, 1 + 97, 1 + 68]


@pytest.mark.parametrize("rate, patches", [(0.56, 25), (0.56, 50), (0.56, 100), (0.55, 100), (0.55, 180)])
def test_evit_keeps_the_official_ceiling_where_float_error_rounds_up(rate, patches):
    # youweiliang/evit: left_tokens = math.ceil(keep_rate * (N - 1)); 0.56 * 25 is 14.000000000000002 there: 15 kept
    from hf_tokenprune.models.reduction_evit import EViTReduction

    assert EViTReduction.num_kept(patches, rate) == math.ceil(rate * patches) == round(rate * patches) + 1


def test_evo_vit_keeps_the_floor_of_n_times_rate():
    counts = vit_b({"method": "evo_vit", "keep_rate": 0.7}).token_counts()
    assert counts[4] == (1 + 137, 1 + 137) and counts[8] == (138, 138)  # int(196 * 0.7) = 137 informative tokens
    assert counts[3] == (197, 197)


@pytest.mark.parametrize(
    "ramp, official",
    [
        ((13, -0.5), [19, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7]),  # 151 merges (the old rounding gave 150)
        ((8, 1.0), [0, 1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16]),
        ((13, 0.3), [9, 9, 10, 11, 11, 12, 13, 14, 14, 15, 16, 17]),
        ((8, 0.0), [8] * 12),
    ],
)
def test_tome_ramp_follows_parse_r(ramp, official):
    config = vit_b({"method": "tome", "r": ramp})
    assert config.token_reduction["r"] == official
    merged = [a - m for a, m in config.token_counts()]
    assert merged == official


@pytest.mark.parametrize(
    "plan",
    [
        {"method": "dynamicvit", "layers": [1, 2, 3], "keep_rate": 0.7},
        {"method": "supervit", "layers": [1, 2, 3], "keep_rate": 0.7},
        {"method": "evo_vit", "layers": [1, 3], "keep_rate": 0.7},
        {"method": "tome", "r": (6, -0.5)},
    ],
    ids=lambda plan: plan["method"],
)
def test_runtime_matches_token_counts_and_flops(plan):
    torch.manual_seed(0)
    model = TokenPruneViTForImageClassification(TokenPruneViTConfig(**TINY, token_reduction=plan)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert list(out.token_counts) == model.config.token_counts()
    assert count_flops(model.config).gflops < count_flops(TokenPruneViTConfig(**TINY)).gflops


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
