"""TokenPruneViTConfig: plan validation with clear errors, defaults, and round trips."""

import json

import pytest
from conftest import ALL_REDUCING, TINY, tiny_config
from transformers import ViTConfig, ViTForImageClassification

from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForImageClassification

BAD_PLANS = [
    (
        {"method": "nope"},
        r"token_reduction\['method'\] = 'nope' is not a known method; allowed: \['cropr', 'dynamicvit', 'evit'",
    ),
    ({"layers": [1]}, r"must be None or a dict with a 'method' key; allowed methods"),
    ({"method": "evit", "layers": [1, 7]}, r"token_reduction\['layers'\] = 7 must be an integer in \[0, 3\]"),
    ({"method": "evit", "layers": [2, 1]}, r"token_reduction\['layers'\] = \[2, 1\] must be strictly increasing"),
    ({"method": "evit", "layers": [1, 1]}, r"must be strictly increasing \(no repeated"),
    (
        {"method": "evit", "keep_rate": 0.0},
        r"token_reduction\['keep_rate'\] = 0.0 is outside the allowed range \(0, 1\]",
    ),
    ({"method": "evit", "keep_rate": 1.2}, r"token_reduction\['keep_rate'\] = 1.2 is outside"),
    ({"method": "evit", "fuse": "yes"}, r"token_reduction\['fuse'\] = 'yes' must be true or false"),
    (
        {"method": "evit", "keep": 0.5},
        r"unknown option\(s\) \['keep'\] for method 'evit'; allowed: \['fuse', 'keep_rate', 'layers'\]",
    ),
    ({"method": "tome", "r": 40}, r"asks layer 0 to merge 40 tokens, but it holds 65 tokens and can merge at most 32"),
    ({"method": "tome", "r": [20, 20, 20, 20]}, r"asks layer 2 to merge 20 tokens, but it holds 25 tokens"),
    ({"method": "tome", "r": [1, 2, 3]}, r"a list of 4 per-layer ints"),
    ({"method": "tome", "r": (8, 2.0)}, r"the inflection must be in \[-1, 1\]"),
    ({"method": "skipvit", "drop_layer": 3}, r"token_reduction\['drop_layer'\] = 3 must be an integer in \[0, 2\]"),
    (
        {"method": "skipvit", "drop_layer": 2, "rejoin_layer": 2},
        r"token_reduction\['rejoin_layer'\] = 2 must be an integer in \[3, 4\]",
    ),
    (
        {"method": "evo_vit", "stages": [[1, 3], [2, 4]]},
        r"stage \[2, 4\) must satisfy 3 <= start < end <= 4; stages are ordered, do not overlap",
    ),
    ({"method": "evo_vit", "stages": [[2, 4], [1, 2]]}, r"stages are ordered"),
    ({"method": "evo_vit", "stages": [[0, 2]]}, r"the first starts at layer 1 or later"),
    ({"method": "evo_vit", "layers": [1], "stages": [[1, 2]]}, r"gives both 'stages' and 'layers'"),
    (
        {"method": "evo_vit", "placeholder_update": "fast"},
        r"placeholder_update'\] = 'fast' is not allowed; allowed: \['none', 'representative'\]",
    ),
]


@pytest.mark.parametrize("plan, message", BAD_PLANS, ids=[str(i) for i in range(len(BAD_PLANS))])
def test_bad_plan_raises_at_construction(plan, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(token_reduction=plan)


@pytest.mark.parametrize("plan, message", BAD_PLANS[:4] + BAD_PLANS[9:10] + BAD_PLANS[15:16])
def test_bad_plan_raises_as_a_from_pretrained_keyword(tmp_path, plan, message):
    ViTForImageClassification(ViTConfig(**TINY)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        TokenPruneViTForImageClassification.from_pretrained(tmp_path, token_reduction=plan)
    with pytest.raises(ValueError, match=message):
        TokenPruneViTConfig.from_pretrained(tmp_path, token_reduction=plan)


def test_bad_plan_raises_when_set_after_construction():
    config = tiny_config()
    with pytest.raises(ValueError, match=r"keep_rate'\] = 2 is outside"):
        config.token_reduction = {"method": "evit", "keep_rate": 2}
    with pytest.raises(ValueError, match="restore_tokens = 'no' must be true or false"):
        config.restore_tokens = "no"
    with pytest.raises(ValueError, match="attention_reuse = .* must be None or a dict"):
        config.attention_reuse = {"method": "unknown"}


def test_defaults_are_filled_and_scaled_to_depth():
    config = tiny_config(token_reduction={"method": "evit"})
    assert config.token_reduction == {"method": "evit", "layers": [1, 2, 3], "keep_rate": 0.7, "fuse": True}
    base = TokenPruneViTConfig(token_reduction={"method": "evit"})
    assert base.token_reduction["layers"] == [3, 6, 9]
    evo = TokenPruneViTConfig(token_reduction={"method": "evo_vit"})
    assert evo.token_reduction["stages"] == [[4, 8], [8, 12]]
    skip = TokenPruneViTConfig(token_reduction={"method": "skipvit"})
    assert (skip.token_reduction["drop_layer"], skip.token_reduction["rejoin_layer"]) == (3, 11)
    tome = TokenPruneViTConfig(token_reduction={"method": "tome", "r": (8, -1.0)})
    assert tome.token_reduction["r"][0] == 16 and tome.token_reduction["r"][-1] == 0


def test_user_plan_dict_is_not_mutated():
    plan = {"method": "evo_vit", "layers": [1]}
    tiny_config(token_reduction=plan)
    assert plan == {"method": "evo_vit", "layers": [1]}


@pytest.mark.parametrize("name", sorted(ALL_REDUCING))
def test_config_round_trips(tmp_path, name):
    config = tiny_config(token_reduction=ALL_REDUCING[name], restore_tokens=True)
    config.save_pretrained(tmp_path)
    loaded = TokenPruneViTConfig.from_pretrained(tmp_path)
    assert loaded.token_reduction == config.token_reduction
    assert loaded.restore_tokens is True
    assert TokenPruneViTConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "tokenprune_vit"
    assert saved["token_reduction"] == config.token_reduction


def test_token_counts_helper_matches_the_plan():
    config = TokenPruneViTConfig(token_reduction={"method": "evit", "layers": [3, 6, 9], "keep_rate": 0.7})
    counts = config.token_counts()
    assert counts[3] == (197, 140) and counts[6] == (140, 100) and counts[9] == (100, 72)
    assert config.token_counts(keep_rate=1.0) == [(197, 197)] * 12


def test_non_vit_checkpoints_are_refused(tmp_path):
    from transformers import DeiTConfig

    DeiTConfig(**TINY).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'deit' checkpoint.*distillation token"):
        TokenPruneViTConfig.from_pretrained(tmp_path)


def test_supervit_plan_is_checked():
    with pytest.raises(
        ValueError, match=r"resolutions'\] = \[20, 30\]: every size must be a multiple of the patch size 4"
    ):
        tiny_config(token_reduction={"method": "supervit", "resolutions": [20, 30]})
    with pytest.raises(ValueError, match=r"keep_rates'\] = 0.0 is outside"):
        tiny_config(token_reduction={"method": "supervit", "keep_rates": [0.5, 0.0]})
    base = TokenPruneViTConfig(token_reduction={"method": "supervit"})
    assert base.token_reduction["resolutions"] == [128, 160, 192, 224]
    assert base.token_reduction["layers"] == [3, 6, 9]
