"""The video example: trains with a plan, compares with the plan off and stock VideoMAE, draws the kept tubelets,
and writes a folder that remote code loads; the method comparison fine-tunes every method that runs on VideoMAE."""

import json
import os
import sys

import pytest
import torch
from transformers import AutoModelForVideoClassification

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))

FAST = ["--epochs", "1", "--finetune_epochs", "1", "--copies", "1", "--max_digits", "48", "--benchmark_rounds", "2"]


@pytest.mark.slow
def test_the_example_trains_compares_and_writes_a_loadable_folder(tmp_path, one_thread, monkeypatch):
    import run_video_classification as example

    monkeypatch.setattr(example, "MODEL", dict(example.MODEL, hidden_size=24, num_attention_heads=2))
    results = example.main([*FAST, "--output_dir", str(tmp_path)])
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["rows"] == results["rows"] and written["commit"] and written["command"]
    plan, off = written["rows"]["plan"], written["rows"]["plan off"]
    assert plan["gflops"] < off["gflops"] and plan["ideal_speedup"] == pytest.approx(off["gflops"] / plan["gflops"])
    assert plan["speedup"] > 0 and len(plan["speedup_range"]) == 2
    assert os.path.getsize(tmp_path / written["picture"]) > 10_000
    model = AutoModelForVideoClassification.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert model.config.token_reduction["method"] == "tome" and model.config.id2label[0] == "0"
    with torch.no_grad():
        assert model(torch.zeros(1, 8, 3, 48, 48)).token_counts[-1][1] == 144 - 4 * 24


@pytest.mark.slow
def test_the_method_comparison_fine_tunes_each_method_from_one_model(tmp_path, one_thread, monkeypatch):
    import run_video_classification as example

    monkeypatch.setattr(example, "MODEL", dict(example.MODEL, hidden_size=24, num_attention_heads=2))
    results = example.main([*FAST, "--compare_methods", "--output_dir", str(tmp_path)])
    rows = results["rows"]
    assert list(rows) == ["no reduction", *example.COMPARED_PLANS, *example.COMPARED_REUSE]
    assert rows["no reduction"]["ideal_speedup"] == 1.0
    for name, row in rows.items():
        assert 0.0 <= row["accuracy"] <= 1.0 and row["speedup"] > 0, name
        assert name == "no reduction" or row["ideal_speedup"] > 1.05, name


def test_a_plan_that_needs_a_cls_token_is_refused_before_any_data_is_made(capsys):
    import run_video_classification as example

    with pytest.raises(ValueError, match="needs a CLS token"):
        example.parse_args(["--plan", '{"method": "evit"}'])
