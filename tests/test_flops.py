"""The analytic FLOPs of `hf_tokenprune.flops` against `torch.utils.flop_counter.FlopCounterMode`.

The counter sees every matmul, linear and convolution that really runs. It does not see elementwise work
(LayerNorm, softmax, GELU, residual additions, gathers and scatters), and on the CPU it does not see the fused SDPA
kernel either, so the models here use eager attention: then both count the same operations.
"""

import pytest
import torch
from conftest import REDUCING_PLANS, TINY, VARIANT_PLANS, tiny_config
from torch.utils.flop_counter import FlopCounterMode
from transformers import ViTConfig, ViTForImageClassification

from hf_tokenprune import REDUCTION_METHODS, TokenPruneViTForImageClassification
from hf_tokenprune.flops import count_flops, format_report

TOLERANCE = 0.03  # relative; the methods' small elementwise extras (e.g. EViT's fused sum) are all that may differ
BATCH = 2


pytestmark = pytest.mark.usefixtures("one_thread")


def _eager_model(**config) -> TokenPruneViTForImageClassification:
    torch.manual_seed(0)
    config = tiny_config(**config)
    config._attn_implementation = "eager"
    return TokenPruneViTForImageClassification(config).eval()


def _counted_flops(model, pixel_values, **kwargs) -> tuple[float, object]:
    """FLOPs per image that the counter sees in one forward pass, and the outputs."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        outputs = model(pixel_values, **kwargs)
    return counter.get_total_flops() / pixel_values.shape[0], outputs


def _pixels(size: int = 32) -> torch.Tensor:
    return torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(2))


def _reuse_plans() -> dict:
    """conftest's REUSE_PLANS (wrapped entries: attention_reuse and maybe token_reduction), once the lead adds them."""
    import conftest

    return getattr(conftest, "REUSE_PLANS", {})


def test_stock_model_matches_counter():
    torch.manual_seed(0)
    stock_config = ViTConfig(**TINY)
    stock_config._attn_implementation = "eager"
    counted, _ = _counted_flops(ViTForImageClassification(stock_config).eval(), _pixels())
    report = count_flops(tiny_config())
    assert report.flops == pytest.approx(counted, rel=1e-6)
    assert report.stock_gflops == pytest.approx(counted / 1e9, rel=1e-6)
    assert report.ideal_speedup == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(REDUCTION_METHODS))
def test_every_method_matches_counter(name):
    if name not in REDUCING_PLANS:
        pytest.skip(f"{name} has no row in conftest.REDUCING_PLANS yet (the matrix test reports it)")
    model = _eager_model(token_reduction=REDUCING_PLANS[name])
    counted, outputs = _counted_flops(model, _pixels())
    report = count_flops(model.config)
    assert report.flops == pytest.approx(counted, rel=TOLERANCE)
    assert report.ideal_speedup > 1.0  # the plan really removes work
    assert report.ideal_speedup == pytest.approx(report.stock_gflops / report.gflops)
    # The per-layer counts of a real forward give the same report as the plan.
    from_outputs = count_flops(model.config, token_counts=outputs.token_counts)
    assert from_outputs.token_counts == report.token_counts
    assert from_outputs.flops == report.flops


@pytest.mark.parametrize("name", sorted(VARIANT_PLANS))
def test_plan_variants_match_counter(name):
    model = _eager_model(token_reduction=VARIANT_PLANS[name])
    counted, outputs = _counted_flops(model, _pixels())
    assert count_flops(model.config).flops == pytest.approx(counted, rel=TOLERANCE)
    assert [tuple(c) for c in outputs.token_counts] == count_flops(model.config).token_counts


@pytest.mark.parametrize("name", sorted(_reuse_plans()))
def test_attention_reuse_matches_counter(name):
    model = _eager_model(**_reuse_plans()[name])
    counted, outputs = _counted_flops(model, _pixels())
    report = count_flops(model.config)
    assert report.flops == pytest.approx(counted, rel=TOLERANCE)
    assert report.ideal_speedup > 1.0  # skipped attention is work saved
    assert count_flops(model.config, token_counts=outputs.token_counts).flops == report.flops


@pytest.mark.parametrize("name", sorted(n for n, cls in REDUCTION_METHODS.items() if cls.uses_keep_rate))
def test_runtime_keep_rate_matches_counter(name):
    if name not in REDUCING_PLANS:
        pytest.skip(f"{name} has no row in conftest.REDUCING_PLANS yet")
    model = _eager_model(token_reduction=REDUCING_PLANS[name])
    counted, outputs = _counted_flops(model, _pixels(), keep_rate=0.3)
    report = count_flops(model.config, keep_rate=0.3)
    assert report.flops == pytest.approx(counted, rel=TOLERANCE)
    assert report.token_counts == [tuple(c) for c in outputs.token_counts]
    assert report.gflops < count_flops(model.config).gflops  # a lower keep rate costs less


def test_other_image_size_matches_counter():
    model = _eager_model(token_reduction=REDUCING_PLANS["evit"])
    counted, _ = _counted_flops(model, _pixels(48), interpolate_pos_encoding=True)
    report = count_flops(model.config, image_size=48)
    assert report.image_size == (48, 48)
    assert report.flops == pytest.approx(counted, rel=TOLERANCE)
    assert report.stock_gflops > count_flops(tiny_config()).stock_gflops  # 144 patches cost more than 64


def test_report_is_consistent():
    report = count_flops(tiny_config(token_reduction=REDUCING_PLANS["tome"]))
    data = report.to_dict()
    assert data["gflops"] == pytest.approx(
        sum(data["layer_gflops"]) + 2 * (report.embedding_macs + report.head_macs) / 1e9
    )
    assert report.flops == 2 * report.macs
    assert len(report.layers) == TINY["num_hidden_layers"]
    text = format_report(report)
    assert len(text.splitlines()) == TINY["num_hidden_layers"] + 3  # header, layers, total, what tokens count
    assert f"{report.ideal_speedup:.2f}x" in text
    assert "MFLOPs" in text and "0.000" not in text and "CLS" in text  # a tiny model in readable units
    assert f"total {report.flops / 1e6:.4g} MFLOPs" in text


def test_flops_refuse_keep_rates_and_image_sizes_the_model_refuses():
    config = tiny_config(token_reduction=REDUCING_PLANS["evit"])
    for keep_rate in (-1, 0, 5):
        with pytest.raises(ValueError, match=r"keep_rate = .* outside the allowed range \(0, 1\]"):
            count_flops(config, keep_rate=keep_rate)
    for size in (0, 30, -4):
        with pytest.raises(ValueError, match=f"image_size = {size} must be a positive multiple of the patch size 4"):
            count_flops(config, image_size=size)
    assert count_flops(config, image_size=36).image_size == (36, 36)
