"""Checkpoints: stock weights load with no missing keys, save/load round trips, remote code in a clean process,
and folders saved by the previous layout of the package (tests/fixtures/legacy_layout) still load."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import ALL_REDUCING, BUILT_IN, REDUCING_PLANS, REUSE_PLANS, TINY, pruned_model, tiny_config
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from hf_tokenprune import TokenPruneViTForImageClassification, TokenPruneViTModel

ISLAND = {
    "configuration_tokenprune_vit.py",
    "modeling_tokenprune_vit.py",
    "token_reduction.py",
    "attention_reuse.py",
    "attention_backends.py",
}


@pytest.fixture(scope="module")
def stock_folder(tmp_path_factory, stock_model):
    folder = tmp_path_factory.mktemp("stock")
    stock_model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", ["none"] + sorted(REDUCING_PLANS))
def test_stock_checkpoint_loads_with_no_missing_or_unexpected_keys(stock_folder, stock_model, pixels, name):
    plan = REDUCING_PLANS.get(name)
    model, info = TokenPruneViTForImageClassification.from_pretrained(
        stock_folder, token_reduction=plan, output_loading_info=True
    )
    new_parameters = {n for n, _ in model.named_parameters()} - set(stock_model.state_dict())
    assert set(info["missing_keys"]) == new_parameters
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        keep_all = model.eval()(pixels, disable_plans=True)
    torch.testing.assert_close(keep_all.logits, stock_model(pixels).logits, atol=1e-5, rtol=0)


def test_stock_checkpoint_on_disk_uses_the_4x_layout(stock_folder):
    from safetensors import safe_open

    with safe_open(stock_folder / "model.safetensors", "pt") as f:
        assert "vit.encoder.layer.0.attention.attention.query.weight" in f.keys()


def test_in_memory_5x_names_load_strictly(stock_model):
    model = TokenPruneViTForImageClassification(tiny_config(token_reduction=REDUCING_PLANS["evit"]))
    model.load_state_dict(stock_model.state_dict(), strict=True)


def test_base_model_loads_from_a_classifier_checkpoint(stock_folder):
    model, info = TokenPruneViTModel.from_pretrained(stock_folder, add_pooling_layer=False, output_loading_info=True)
    assert not info["missing_keys"]
    assert set(info["unexpected_keys"]) == {"classifier.weight", "classifier.bias"}


@pytest.mark.parametrize("name", sorted(ALL_REDUCING))
def test_save_and_load_round_trip_gives_identical_logits(tmp_path, stock_model, pixels, name):
    model = pruned_model(stock_model, token_reduction=ALL_REDUCING[name], restore_tokens=True)
    model.save_pretrained(tmp_path)
    assert ISLAND <= set(os.listdir(tmp_path)), "save_pretrained must write the remote code"
    loaded, info = TokenPruneViTForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(pixels).logits, model(pixels).logits, atol=0, rtol=0)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_tokenprune_vit.TokenPruneViTConfig",
        "AutoModel": "modeling_tokenprune_vit.TokenPruneViTModel",
        "AutoModelForImageClassification": "modeling_tokenprune_vit.TokenPruneViTForImageClassification",
    }


CLEAN_PROCESS = textwrap.dedent(
    """
    import json, sys, torch
    sys.modules["hf_tokenprune"] = None  # the package must not be importable
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, pipeline
    from PIL import Image

    results = {}
    for folder in json.loads(sys.argv[1]):
        pixels, expected = torch.load(folder + "/check.pt")
        try:
            model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        except ValueError as error:  # a plan the checkpoint's code does not hold
            results[folder] = {"error": str(error)}
            continue
        assert "transformers_modules" in type(model).__module__, type(model).__module__
        with torch.no_grad():
            logits_diff = (model(pixels).logits - expected).abs().max().item()
        base = AutoModel.from_pretrained(folder, trust_remote_code=True)
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        classify = pipeline("image-classification", model=folder, trust_remote_code=True)
        predictions = classify(Image.new("RGB", (40, 40), (120, 30, 200)))
        results[folder] = {
            "logits_diff": logits_diff,
            "base": type(base).__name__,
            "plan": config.token_reduction,
            "labels": sorted(p["label"] for p in predictions),
        }
    print(json.dumps(results))
    """
)


@pytest.mark.slow
def test_remote_code_loads_in_a_clean_offline_process(tmp_path, stock_model, pixels):
    """Every built-in method's plan travels with its code; a method defined outside the package (the tests'
    ``random_keep``) does not: the clean process refuses it in one line that names it."""
    folders, plans = [], {}
    cases = {name: {"token_reduction": plan} for name, plan in REDUCING_PLANS.items()}
    cases.update(REUSE_PLANS)
    cases["cropr-inference"] = {"token_reduction": REDUCING_PLANS["cropr"]}
    for name, plan in cases.items():
        folder = tmp_path / name
        model = pruned_model(stock_model, **plan)
        if name.endswith("-inference"):
            assert model.drop_training_modules()
        model.config.id2label = {i: f"class-{i}" for i in range(5)}
        model.config.label2id = {v: k for k, v in model.config.id2label.items()}
        model.save_pretrained(folder)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
        with torch.no_grad():
            torch.save((pixels, model(pixels).logits), folder / "check.pt")
        folders.append(str(folder))
        plans[str(folder)] = model.config.token_reduction
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
    for folder in folders:
        if plans[folder] and plans[folder]["method"] not in BUILT_IN:
            assert (
                "is not a known method" in report[folder]["error"]
                and plans[folder]["method"] in report[folder]["error"]
            )
            continue
        assert report[folder]["logits_diff"] == 0.0
        assert report[folder]["base"] == "TokenPruneViTModel"
        assert report[folder]["plan"] == plans[folder]
        assert report[folder]["labels"] == [f"class-{i}" for i in range(5)]


def test_installed_package_registers_the_auto_classes(tmp_path, stock_model, pixels):
    from transformers import AutoConfig, AutoModelForImageClassification

    model = pruned_model(stock_model, token_reduction=REDUCING_PLANS["tome"])
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)  # no trust_remote_code needed
    assert type(loaded) is TokenPruneViTForImageClassification
    assert AutoConfig.for_model("tokenprune_vit").model_type == "tokenprune_vit"
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(pixels).logits, model(pixels).logits)


def test_stock_vit_config_is_read_as_ours(tmp_path):
    from hf_tokenprune import TokenPruneViTConfig

    ViTConfig(**TINY).save_pretrained(tmp_path)
    config = TokenPruneViTConfig.from_pretrained(tmp_path, token_reduction={"method": "tome", "r": 4})
    assert config.model_type == "tokenprune_vit" and config.token_reduction["r"] == [4, 4, 4, 4]
    model = TokenPruneViTForImageClassification(config)
    assert isinstance(model, ViTForImageClassification) and isinstance(model.vit, TokenPruneViTModel)


LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_layout"
LEGACY_CLASSES = {
    "vit_evit": "TokenPruneViTForImageClassification",
    "dinov2_tome": "TokenPruneDinov2ForImageClassification",
}


def _legacy_expected(today=False):
    """The pixels and, per folder, the logits its own saved code computes or (``today``) those of today's classes,
    which differ where a head was meant to change (the fixture's README says which and why)."""
    record = json.loads((LEGACY / "expected_logits.json").read_text())
    pixels = torch.randn(*record["pixels_shape"], generator=torch.Generator().manual_seed(record["pixels_seed"]))
    changed = record["today"] if today else {}
    return pixels, {name: torch.tensor(changed.get(name, record[name])) for name in LEGACY_CLASSES}


@pytest.mark.parametrize("name", sorted(LEGACY_CLASSES))
def test_a_folder_saved_by_the_previous_layout_loads_into_our_classes(name):
    """Folders saved before the package was laid out by purpose (tests/fixtures/legacy_layout: a ViT with EViT and a
    DINOv2 with ToMe, their island files included) load into today's classes with every weight and the same logits
    (those recorded for today's classes where a head was meant to change), through the class and the Auto class."""
    from transformers import AutoModelForImageClassification

    import hf_tokenprune

    pixels, expected = _legacy_expected(today=True)
    model, info = getattr(hf_tokenprune, LEGACY_CLASSES[name]).from_pretrained(LEGACY / name, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    auto = AutoModelForImageClassification.from_pretrained(LEGACY / name, trust_remote_code=True)
    assert type(auto) is type(model)  # the installed package's classes win over the folder's code
    with torch.no_grad():
        for each in (model, auto):
            torch.testing.assert_close(each.eval()(pixel_values=pixels).logits, expected[name], atol=1e-5, rtol=0)


LEGACY_REMOTE = """
import json, sys, torch
sys.modules["hf_tokenprune"] = None  # the package must not be importable
from transformers import AutoModelForImageClassification
folder, pixels_seed, shape = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
pixels = torch.randn(*shape, generator=torch.Generator().manual_seed(pixels_seed))
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
with torch.no_grad():
    print(json.dumps({"module": type(model).__module__, "logits": model(pixel_values=pixels).logits.tolist()}))
"""


@pytest.mark.slow
def test_a_folder_saved_by_the_previous_layout_loads_as_remote_code_in_a_clean_process(tmp_path):
    import shutil

    record = json.loads((LEGACY / "expected_logits.json").read_text())
    _, expected = _legacy_expected()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH="", OMP_NUM_THREADS="1")
    for name in sorted(LEGACY_CLASSES):
        folder = shutil.copytree(LEGACY / name, tmp_path / name)
        args = [str(folder), str(record["pixels_seed"]), json.dumps(record["pixels_shape"])]
        result = subprocess.run(
            [sys.executable, "-c", LEGACY_REMOTE, *args], env=env, cwd=tmp_path, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert "transformers_modules" in report["module"]
        torch.testing.assert_close(torch.tensor(report["logits"]), expected[name], atol=1e-5, rtol=0)
