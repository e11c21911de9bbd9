"""The batch-1 latency breakdown (examples/benchmark_latency_bound.py): its bound really runs stock ViT's layers at
the plan's token counts, and the tiny run writes a well-formed table. No speed is asserted."""

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
import benchmark_latency_bound as bound  # noqa: E402

from hf_tokenprune.flops import count_flops  # noqa: E402
from hf_tokenprune.measure.onnx_runtime import resize_tokens  # noqa: E402


@pytest.mark.parametrize("plan", bound.DEFAULT_PLANS, ids=lambda plan: plan["method"])
def test_bound_runs_the_stock_layers_at_the_plans_token_counts(plan):
    stock, built = bound.build(bound.ViTConfig(**bound.TINY), [plan])
    item = built[bound.plan_label(plan)]
    assert item["counts"] == count_flops(item["model"].config).token_counts
    seen = []  # (tokens into the attention, tokens into the MLP) per layer
    hooks = [
        module.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[1]))
        for layer in stock.vit.layers
        for module in (layer.attention, layer.mlp)
    ]
    try:
        logits = bound.token_count_bound(stock, item["counts"])(torch.randn(2, 3, 96, 96))
    finally:
        for hook in hooks:
            hook.remove()
    assert [tuple(seen[i : i + 2]) for i in range(0, len(seen), 2)] == [tuple(c) for c in item["counts"]]
    assert logits.shape == (2, stock.config.num_labels)
    assert any(a > m for a, m in item["counts"])  # the plan reduces: the bound is not the stock model


def test_resize_grows_a_rejoined_sequence_and_cuts_a_reduced_one():
    hidden = torch.arange(3.0).reshape(1, 3, 1)
    assert resize_tokens(hidden, 2).flatten().tolist() == [0.0, 1.0]
    assert resize_tokens(hidden, 7).flatten().tolist() == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0]


def test_tiny_run_writes_a_well_formed_table(tmp_path):
    results = bound.main(["--tiny", "--rounds", "1", "--threads", "1", "--output-dir", str(tmp_path)])
    written = json.loads((tmp_path / "latency_bound.json").read_text())
    assert written["results"] == json.loads(json.dumps(results))
    rows = results[0]["rows"]
    assert [row["plan"] for row in rows] == [bound.plan_label(plan) for plan in bound.DEFAULT_PLANS]
    for row in rows:
        assert row["measured"] > 0 and row["bound"] > 0 and row["ideal"] > 1
        assert row["measured_of_bound"] == pytest.approx(row["measured"] / row["bound"])
    table = (tmp_path / "LATENCY_BOUND.md").read_text()
    assert table.count("\n| 1 | False |") == len(rows)


def test_bad_options_stop_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bound.main(["--output-dir", str(tmp_path / "missing")])
    assert "--output-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bound.main(["--output-dir", str(tmp_path), "--threads", "two"])
    assert "--threads" in capsys.readouterr().err
