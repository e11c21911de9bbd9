"""`hf-tokenprune benchmark --model FOLDER` on a saved checkpoint of each family other than ViT: the folder's weights
are measured against the stock HF class of its family (one round; the rows are checked, never the speed)."""

import json

import pytest
from conftest import REDUCING_PLANS
from families import FAMILIES, ours, stock_models

from hf_tokenprune.commands.main import main

pytestmark = pytest.mark.usefixtures("one_thread")

STOCK_CLASSES = {  # what each family is measured against (CLIP: the tower with its projection, image embeddings)
    "deit": "DeiTForImageClassificationWithTeacher",
    "dinov2": "Dinov2ForImageClassification",
    "dinov2-registers": "Dinov2WithRegistersForImageClassification",
    "clip": "CLIPVisionModelWithProjection",
    "siglip": "SiglipVisionModel",
}
ARGS = ["--device", "cpu", "--batch-size", "2", "--rounds", "1", "--latency-rounds", "1", "--warmup", "0"]


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    return stock_models(tmp_path_factory)


def _benchmark(folder, output, *extra) -> dict:
    argv = ["benchmark", "--model", str(folder), *ARGS, *extra, "--no-progress", "--output-dir", str(output)]
    assert main(argv) == 0
    return json.loads((output / "benchmark.json").read_text())


@pytest.mark.parametrize("name", sorted(STOCK_CLASSES))
def test_a_saved_family_checkpoint_is_measured_against_its_stock_class(stock, tmp_path, capsys, name):
    ours(name, stock(name)[0], token_reduction=REDUCING_PLANS["tome"]).save_pretrained(tmp_path / "ckpt")
    results = _benchmark(tmp_path / "ckpt", tmp_path / "out")  # default plans: none and the saved one
    rows = results["rows"]
    expected_modes = ["inference", "latency"] + ([] if name in ("deit", "clip", "siglip") else ["training"])
    labels = list(dict.fromkeys(row["label"] for row in rows))
    assert labels[0] == "no reduction" and labels[1].startswith("tome r=6") and len(labels) == 2
    assert [(row["label"], row["mode"]) for row in rows] == [(lab, mode) for lab in labels for mode in expected_modes]
    assert {row["stock_class"] for row in rows} == {STOCK_CLASSES[name]}
    tome = rows[-1]
    config = FAMILIES[name].config(**FAMILIES[name].settings(), token_reduction=REDUCING_PLANS["tome"])
    assert tome["plan"] == config.token_reduction and tome["ideal_speedup"] > 1.0
    assert tome["tokens_per_layer"] == [list(counts) for counts in config.token_counts()]
    printed = capsys.readouterr().out
    assert "| no reduction |" in printed and f"| {labels[1]} |" in printed
    assert f"against stock {STOCK_CLASSES[name]}; device: " in printed
    assert f"against stock {STOCK_CLASSES[name]};" in (tmp_path / "out" / "benchmark.md").read_text()


def test_a_stock_family_folder_is_benchmarked_as_ours(stock, tmp_path):
    _, folder = stock("dinov2")  # a stock Dinov2ForImageClassification checkpoint, no plan
    plans = json.dumps([None, {"token_reduction": REDUCING_PLANS["evit"], "label": "evit"}])
    rows = _benchmark(folder, tmp_path, "--plans", plans, "--modes", "inference")["rows"]
    assert [(row["label"], row["stock_class"]) for row in rows] == [
        ("no reduction", "Dinov2ForImageClassification"),
        ("evit", "Dinov2ForImageClassification"),
    ]
    assert rows[1]["gflops"] < rows[0]["gflops"] == rows[0]["stock_gflops"]


def test_a_full_clip_folder_is_benchmarked_by_its_vision_tower(tmp_path_factory, tmp_path):
    from families import clip_checkpoint

    _, folder = clip_checkpoint(tmp_path_factory)  # a stock CLIPModel: the tower and its projection are measured
    plans = json.dumps([None, REDUCING_PLANS["tome"]])
    rows = _benchmark(folder, tmp_path, "--plans", plans, "--modes", "inference")["rows"]
    assert [row["stock_class"] for row in rows] == ["CLIPVisionModelWithProjection"] * 2
    assert rows[1]["tokens_per_layer"][0][0] == 1 + (32 // FAMILIES["clip"].settings()["patch_size"]) ** 2


def test_training_is_refused_for_a_family_without_a_training_loss(stock, tmp_path, capsys):
    _, folder = stock("siglip")
    assert main(["benchmark", "--model", str(folder), "--modes", "training", "--output-dir", str(tmp_path)]) == 2
    assert "has no training loss" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_the_default_plans_of_siglip_are_the_methods_it_runs():
    from hf_tokenprune.measure.benchmark import parse_plans

    spec = FAMILIES["siglip"]
    labels = [entry.label.split()[0] for entry, _ in parse_plans(None, spec.config(**spec.settings()))]
    assert labels == ["no", "cropr", "dynamicvit", "tome", "skipat"]  # no CLS: no EViT, Evo-ViT, SkipViT, SuperViT


def test_the_plan_command_reads_a_family_folder(stock, capsys):
    _, folder = stock("siglip")
    assert main(["plan", "--model", str(folder), "--token-reduction", json.dumps(REDUCING_PLANS["tome"])]) == 0
    assert '"method": "tome"' in capsys.readouterr().out
