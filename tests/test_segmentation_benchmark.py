"""The segmentation benchmark's CI-sized run writes a well-formed table and results file."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))


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
