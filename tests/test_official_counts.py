"""Token counts of every method with official code, checked against the numbers the official code computes.

The expected values below were computed with the official code (facebookresearch/ToMe ``parse_r``,
raoyongming/DynamicViT ``num_keep_node``, lmbxmu/SuperViT ``important_token_num``, YifanXu74/Evo-ViT ``N_``,
youweiliang/evit ``left_tokens``) at ViT-B/16, 224 pixels (196 patch tokens). The runtime must agree with
``token_counts`` (the FLOPs and the validation use it), so each plan is also run on a tiny model.
"""

import pytest
import torch
from conftest import TINY

from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForImageClassification
from hf_tokenprune.flops import count_flops


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
