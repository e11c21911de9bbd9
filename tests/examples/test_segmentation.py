"""The segmentation example and benchmark: the example trains, compares and writes a loadable folder; the
benchmark's CI-sized run writes a well-formed table and results file."""

import json
import os
import sys

import pytest

from hf_tokenprune import TokenPruneViTForSemanticSegmentation

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))


@pytest.mark.slow
def test_tiny_segmentation_benchmark_writes_a_well_formed_file(tmp_path, one_thread):
    import benchmark_segmentation as benchmark

    results = benchmark.run(benchmark.parse_args(["--tiny", "--output-dir", str(tmp_path)]))
    written = json.loads((tmp_path / "segmentation_benchmark.json").read_text())
    assert written["rows"] == results["rows"]
    expected = ["stock ViT"] + [method for method, points in benchmark.POINTS.items() for _ in points]
    assert [row["method"] for row in written["rows"]] == expected
    for row in written["rows"]:
        assert 0.0 <= row["mean_iou"] <= 1.0 and 0.0 <= row["pixel_accuracy"] <= 1.0
        assert row["speedup"] > 0 and row["ideal_speedup"] >= 0.99
    table = (tmp_path / "SEGMENTATION.md").read_text().splitlines()
    assert len([line for line in table if line.startswith("| ")]) == 1 + len(expected)


def test_speed_row_measures_every_plan_against_stock(tmp_path, one_thread, monkeypatch):
    import benchmark_segmentation as benchmark

    tiny = dict(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=12, num_attention_heads=2,
                intermediate_size=37, num_labels=5)  # fmt: skip
    points = {"cropr": [{"tokens_per_layer": 2, "aux_head": "per_query"}], "tome": [{"r": 2}], "skipat": [{}]}
    monkeypatch.setattr(benchmark, "VIT_B_512", tiny)
    monkeypatch.setattr(benchmark, "SPEED_POINTS", points)
    args = benchmark.parse_args(["--speed-only", "--rounds", "2", "--output-dir", str(tmp_path)])
    results = benchmark.run_speed(args)
    written = json.loads((tmp_path / "segmentation_speed_vit_b.json").read_text())
    assert [row["label"] for row in written["rows"]] == [
        "no reduction", "cropr tokens_per_layer=2", "tome r=2", "skipat (its defaults)"
    ]  # fmt: skip
    assert written["rows"] == results["rows"] and written["batch_size"] == 1
    for row in written["rows"]:
        assert row["measured_speedup"] > 0 and len(row["round_speedups"]) == 2
        assert row["ideal_speedup"] == pytest.approx(row["stock_gflops"] / row["gflops"])
    assert written["rows"][1]["ideal_speedup"] > 1.0  # the pruning plan costs fewer FLOPs than stock
    table = (tmp_path / "SEGMENTATION_SPEED.md").read_text().splitlines()
    assert len([line for line in table if line.startswith("| ")]) == 1 + len(written["rows"])


@pytest.mark.slow
def test_segmentation_example_trains_compares_and_writes_a_loadable_folder(tmp_path, one_thread):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
    import run_semantic_segmentation as example

    results = example.main(
        ["--token-reduction", json.dumps({"method": "tome", "r": 4}), "--output_dir", str(tmp_path),
         "--max_train_samples", "16", "--max_eval_samples", "16", "--num_train_epochs", "1",
         "--benchmark_rounds", "1", "--disable_tqdm", "true", "--digits_copies", "1", "--pretrain_epochs", "1"]
    )  # fmt: skip
    assert (tmp_path / "backbone" / "config.json").exists()  # the digit-classification backbone it started from
    assert results["plan"]["r"] == [4] * 4
    names = [row["model"] for row in results["rows"]]
    assert names == ["TokenPruneViT, plan", "same weights, plan off", "stock HF ViT"]
    assert all(0.0 <= row["mean_iou"] <= 1.0 and row["speedup"] > 0 for row in results["rows"])
    assert (tmp_path / "segmentation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["rows"] == results["rows"]
    loaded = TokenPruneViTForSemanticSegmentation.from_pretrained(tmp_path)
    assert loaded.config.token_reduction == results["plan"] and loaded.config.num_labels == 11
