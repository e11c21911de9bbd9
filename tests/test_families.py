"""Every plan on the other model families (DeiT distilled, ...): the same guarantees as ViT, parametrized over
families x methods. Stock checkpoints come from tiny random stock HF models of each family, saved to disk."""

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field

import pytest
import torch
from conftest import ALL_REDUCING, KEEP_ALL_PLANS, REDUCING_PLANS, TINY
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModel, DeiTConfig
from transformers import DeiTForImageClassificationWithTeacher as StockDeiTWithTeacher

from hf_tokenprune import TokenPruneDeiTConfig, TokenPruneDeiTForImageClassificationWithTeacher, TokenPruneDeiTModel
from hf_tokenprune.flops import count_flops

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class Family:
    """A model family under test: the stock HF classes, ours, a tiny config and the output both must agree on."""

    stock_config: type
    stock_model: type
    config: type
    model: type
    base: type
    num_prefix: int
    output: str = "logits"
    auto: str = "AutoModelForImageClassification"
    overrides: dict = field(default_factory=dict)
    island: set = field(default_factory=set)

    def settings(self) -> dict:
        return {**TINY, **self.overrides}


FAMILIES = {
    "deit": Family(
        stock_config=DeiTConfig,
        stock_model=StockDeiTWithTeacher,
        config=TokenPruneDeiTConfig,
        model=TokenPruneDeiTForImageClassificationWithTeacher,
        base=TokenPruneDeiTModel,
        num_prefix=2,
        island={"configuration_tokenprune_deit.py", "modeling_tokenprune_deit.py"},
    ),
}
SHARED_ISLAND = {
    "configuration_tokenprune_common.py",
    "modeling_tokenprune_common.py",
    "token_reduction.py",
    "attention_reuse.py",
    "attention_backends.py",
}
PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    """family name -> (stock model, folder it is saved in); built once per family."""
    cache = {}

    def get(name):
        if name not in cache:
            family = FAMILIES[name]
            torch.manual_seed(0)
            model = family.stock_model(family.stock_config(**family.settings())).eval()
            folder = tmp_path_factory.mktemp(f"stock-{name}")
            model.save_pretrained(folder)
            cache[name] = (model, folder)
        return cache[name]

    return get


def ours(name, stock_model, **config):
    """Our model of a family with the stock model's weights (new parameters seeded, so two calls agree)."""
    family = FAMILIES[name]
    torch.manual_seed(0)
    model = family.model(family.config(**family.settings(), **config)).eval()
    missing, unexpected = model.load_state_dict(stock_model.state_dict(), strict=False)
    new = {n for n, _ in model.named_parameters()} - set(stock_model.state_dict())
    assert set(missing) == new and not unexpected
    return model


def output_of(name, outputs):
    return getattr(outputs, FAMILIES[name].output)


@pytest.mark.parametrize("method", ["none"] + sorted(REDUCING_PLANS))
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_stock_checkpoint_loads_with_no_missing_or_unexpected_keys(stock, name, method):
    stock_model, folder = stock(name)
    family = FAMILIES[name]
    model, info = family.model.from_pretrained(
        folder, token_reduction=REDUCING_PLANS.get(method), output_loading_info=True
    )
    new_parameters = {n for n, _ in model.named_parameters()} - set(stock_model.state_dict())
    assert set(info["missing_keys"]) == new_parameters
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        full = output_of(name, model.eval()(PIXELS, disable_plans=True))
        torch.testing.assert_close(full, output_of(name, stock_model(PIXELS)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("restore", [False, True])
@pytest.mark.parametrize("method", sorted(KEEP_ALL_PLANS))
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_keep_all_reproduces_the_stock_family(stock, name, method, restore):
    stock_model, _ = stock(name)
    model = ours(name, stock_model, token_reduction=KEEP_ALL_PLANS[method], restore_tokens=restore)
    with torch.no_grad():
        outputs = model(PIXELS)
        torch.testing.assert_close(output_of(name, outputs), output_of(name, stock_model(PIXELS)), atol=1e-5, rtol=0)
    tokens = 64 + FAMILIES[name].num_prefix
    assert all(a == m == tokens for a, m in outputs.token_counts)


@pytest.mark.parametrize("plan", sorted(ALL_REDUCING))
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_token_counts_are_static_and_prefix_tokens_stay_first(stock, name, plan):
    if ALL_REDUCING[plan].get("two_heads") and name == "deit":
        pytest.skip("DeiT refuses Evo-ViT's second head (test_deit_refuses_a_second_cls_head)")
    stock_model, _ = stock(name)
    model = ours(name, stock_model, token_reduction=ALL_REDUCING[plan])
    with torch.no_grad():
        outputs = model(PIXELS)
    assert list(outputs.token_counts) == model.config.token_counts()
    prefix = FAMILIES[name].num_prefix
    for (_, mlp_tokens), positions in zip(outputs.token_counts, outputs.token_positions):
        assert positions.shape == (2, mlp_tokens)
        assert (positions[:, :prefix] == torch.arange(prefix)).all(), "prefix tokens must stay first, in order"
    assert torch.isfinite(output_of(name, outputs)).all()


@pytest.mark.parametrize("method", sorted(REDUCING_PLANS))
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_save_and_load_round_trip(tmp_path, stock, name, method):
    stock_model, _ = stock(name)
    family = FAMILIES[name]
    model = ours(name, stock_model, token_reduction=REDUCING_PLANS[method])
    model.save_pretrained(tmp_path)
    assert SHARED_ISLAND | family.island <= set(os.listdir(tmp_path)), "save_pretrained must write the remote code"
    loaded, info = family.model.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(
            output_of(name, loaded.eval()(PIXELS)), output_of(name, model(PIXELS)), atol=0, rtol=0
        )
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map[family.auto].endswith(family.model.__name__)
    assert auto_map["AutoModel"].endswith(family.base.__name__)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_installed_package_registers_the_auto_classes(tmp_path, stock, name):
    stock_model, _ = stock(name)
    family = FAMILIES[name]
    ours(name, stock_model, token_reduction=REDUCING_PLANS["tome"]).save_pretrained(tmp_path)
    assert type(getattr(__import__("transformers"), family.auto).from_pretrained(tmp_path)) is family.model
    assert type(AutoModel.from_pretrained(tmp_path)) is family.base
    assert type(AutoConfig.from_pretrained(tmp_path)) is family.config


@pytest.mark.parametrize("method", ["none"] + sorted(REDUCING_PLANS))
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_count_flops_matches_the_counter(stock, name, method):
    """As tests/test_flops.py for ViT: the analytic count against FlopCounterMode on eager attention."""
    stock_model, _ = stock(name)
    model = ours(name, stock_model, token_reduction=REDUCING_PLANS.get(method))
    model.set_attn_implementation("eager")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        outputs = model(PIXELS)
    counted = counter.get_total_flops() / PIXELS.shape[0]
    report = count_flops(model.config)
    assert report.flops == pytest.approx(counted, rel=0.03 if method != "none" else 1e-6)
    assert report.token_counts == [tuple(c) for c in outputs.token_counts]


def test_deit_refuses_a_second_cls_head():
    with pytest.raises(ValueError, match="two_heads"):
        TokenPruneDeiTConfig(**TINY, token_reduction={"method": "evo_vit", "keep_rate": 0.5, "two_heads": True})


def test_deit_reads_stock_deit_configs_and_refuses_other_families(tmp_path):
    DeiTConfig(**TINY).save_pretrained(tmp_path / "deit")
    config = TokenPruneDeiTConfig.from_pretrained(tmp_path / "deit", token_reduction={"method": "tome", "r": 4})
    assert config.model_type == "tokenprune_deit" and config.num_prefix_tokens == 2
    from transformers import ViTConfig

    ViTConfig(**TINY).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="'vit' checkpoint.*TokenPruneViTConfig"):
        TokenPruneDeiTConfig.from_pretrained(tmp_path / "vit")


def test_deit_trains_both_heads_with_a_plan(stock):
    stock_model, _ = stock("deit")
    model = ours("deit", stock_model, token_reduction=REDUCING_PLANS["cropr"]).train()
    labels, teacher = torch.tensor([0, 3]), torch.tensor([1, 3])
    outputs = model(PIXELS, labels=labels, distillation_labels=teacher)
    assert outputs.aux_loss is not None and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    assert model.cls_classifier.weight.grad.abs().sum() > 0
    assert model.distillation_classifier.weight.grad.abs().sum() > 0
    with torch.no_grad():  # the distillation head follows its own targets
        ce = torch.nn.functional.cross_entropy
        expected = 0.5 * ce(outputs.cls_logits, labels) + 0.5 * ce(outputs.distillation_logits, teacher)
        torch.testing.assert_close(outputs.loss - outputs.aux_loss, expected)


CLEAN_PROCESS = textwrap.dedent(
    """
    import json, sys, torch
    sys.modules["hf_tokenprune"] = None  # the package must not be importable
    import transformers

    results = {}
    for folder, auto in json.loads(sys.argv[1]).items():
        pixels, expected = torch.load(folder + "/check.pt")
        model = getattr(transformers, auto).from_pretrained(folder, trust_remote_code=True).eval()
        base = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)
        with torch.no_grad():
            outputs = model(pixels)
        diff = (outputs[expected[0]] - expected[1]).abs().max().item()
        results[folder] = {"diff": diff, "module": type(model).__module__, "base": type(base).__name__}
    print(json.dumps(results))
    """
)


@pytest.mark.slow
def test_remote_code_loads_in_a_clean_offline_process(tmp_path, stock):
    folders, expected = {}, {}
    for name, family in FAMILIES.items():
        stock_model, _ = stock(name)
        for method in ("tome", "evit"):
            folder = tmp_path / f"{name}-{method}"
            model = ours(name, stock_model, token_reduction=REDUCING_PLANS[method])
            model.save_pretrained(folder)
            with torch.no_grad():
                torch.save((PIXELS, (family.output, output_of(name, model(PIXELS)))), folder / "check.pt")
            folders[str(folder)] = family.auto
            expected[str(folder)] = family.base.__name__
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, "-c", CLEAN_PROCESS, json.dumps(folders)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for folder, base in expected.items():
        assert report[folder]["diff"] == 0.0
        assert "transformers_modules" in report[folder]["module"]
        assert report[folder]["base"] == base


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_compiles_with_fullgraph(stock, name):
    stock_model, _ = stock(name)
    for method in ("tome", "evit"):
        model = ours(name, stock_model, token_reduction=REDUCING_PLANS[method])
        with torch.no_grad():
            expected = output_of(name, model(PIXELS))
            compiled = torch.compile(model, fullgraph=True)
            torch.testing.assert_close(output_of(name, compiled(PIXELS)), expected, atol=1e-5, rtol=1e-4)
