"""Every plan on the other model families (DeiT distilled, DINOv2 with and without registers, CLIP, SigLIP): the same
guarantees as ViT, parametrized over families x methods (the family rows live in tests/families.py)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ALL_REDUCING, KEEP_ALL_PLANS, REDUCING_PLANS, REUSE_PLANS, TINY
from families import (
    FAMILIES,
    PIPELINE_CLASSIFIERS,
    PIXELS,
    SHARED_ISLAND,
    TEXT,
    cases,
    clip_checkpoint,
    fits,
    ours,
    output_of,
    save_classifier,
    save_text_and_image_processors,
    stock_models,
)
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModel

from hf_tokenprune import TokenPruneCLIPModel
from hf_tokenprune.flops import count_flops

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    return stock_models(tmp_path_factory)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return clip_checkpoint(tmp_path_factory)


@pytest.mark.parametrize(("name", "method"), cases(REDUCING_PLANS, with_none=True))
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
@pytest.mark.parametrize(("name", "method"), cases(KEEP_ALL_PLANS))
def test_keep_all_reproduces_the_stock_family(stock, name, method, restore):
    stock_model, _ = stock(name)
    model = ours(name, stock_model, token_reduction=KEEP_ALL_PLANS[method], restore_tokens=restore)
    with torch.no_grad():
        outputs = model(PIXELS)
        torch.testing.assert_close(output_of(name, outputs), output_of(name, stock_model(PIXELS)), atol=1e-5, rtol=0)
    tokens = 64 + FAMILIES[name].num_prefix
    assert all(a == m == tokens for a, m in outputs.token_counts)


@pytest.mark.parametrize(("name", "plan"), cases(ALL_REDUCING))
def test_token_counts_are_static_and_prefix_tokens_stay_first(stock, name, plan):
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


@pytest.mark.parametrize(("name", "method"), cases(REDUCING_PLANS))
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


@pytest.mark.parametrize(("name", "method"), cases(REDUCING_PLANS, with_none=True))
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


@pytest.mark.parametrize(
    ("name", "plan"),
    [(f, n) for f in sorted(FAMILIES) for n in sorted(REUSE_PLANS) if fits(f, REUSE_PLANS[n].get("token_reduction"))],
)
def test_attention_reuse_runs_and_disables(tmp_path, stock, name, plan):
    """SkipAt alone and with a later reduction: the reused layers' own attention stays loadable and frozen, the
    full model comes back with disable_plans, and an inference checkpoint drops the replaced attention."""
    stock_model, _ = stock(name)
    model = ours(name, stock_model, **REUSE_PLANS[plan])
    with torch.no_grad():
        outputs = model(PIXELS)
        full = output_of(name, model(PIXELS, disable_plans=True))
    torch.testing.assert_close(full, output_of(name, stock_model(PIXELS)), atol=1e-5, rtol=0)
    assert list(outputs.token_counts) == model.config.token_counts()
    assert count_flops(model.config).ideal_speedup > 1.0
    assert model.drop_training_modules()
    model.save_pretrained(tmp_path)
    loaded, info = FAMILIES[name].model.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(output_of(name, loaded.eval()(PIXELS)), output_of(name, outputs), atol=0, rtol=0)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_hidden_states_and_attentions_are_recorded_as_stock(stock, name):
    stock_model, _ = stock(name)
    model = ours(name, stock_model, token_reduction=KEEP_ALL_PLANS["tome"])
    for each in (model, stock_model):
        each.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            outputs = model(PIXELS, output_hidden_states=True, output_attentions=True)
            expected = stock_model(PIXELS, output_hidden_states=True, output_attentions=True)
    finally:
        stock_model.set_attn_implementation("sdpa")
    assert len(outputs.hidden_states) == len(expected.hidden_states) == TINY["num_hidden_layers"] + 1
    assert len(outputs.attentions) == len(expected.attentions) == TINY["num_hidden_layers"]
    for ours_state, stock_state in zip(outputs.hidden_states, expected.hidden_states):
        torch.testing.assert_close(ours_state, stock_state, atol=1e-5, rtol=0)


CLEAN_PROCESS = textwrap.dedent(
    """
    import json, os, sys, torch
    sys.modules["hf_tokenprune"] = None  # the package must not be importable
    import transformers

    results = {}
    for folder, auto in json.loads(sys.argv[1]).items():
        inputs, expected = torch.load(folder + "/check.pt")
        model = getattr(transformers, auto).from_pretrained(folder, trust_remote_code=True).eval()
        base = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)
        with torch.no_grad():
            outputs = model(**inputs)
        diff = (outputs[expected[0]] - expected[1]).abs().max().item()
        results[folder] = {"diff": diff, "module": type(model).__module__, "base": type(base).__name__}
        if auto == "AutoModelForZeroShotImageClassification":
            from PIL import Image

            classify = transformers.pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
            image = Image.new("RGB", (40, 40), (120, 30, 200))
            results[folder]["labels"] = sorted(p["label"] for p in classify(image, candidate_labels=["cat", "dog"]))
        if auto == "AutoModelForImageClassification" and os.path.exists(folder + "/preprocessor_config.json"):
            from PIL import Image

            classify = transformers.pipeline("image-classification", model=folder, trust_remote_code=True)
            scores = classify(Image.new("RGB", (40, 48), (120, 30, 200)), top_k=None)
            results[folder]["scores"] = {p["label"]: p["score"] for p in scores}
    print(json.dumps(results))
    """
)


@pytest.mark.slow
def test_remote_code_loads_in_a_clean_offline_process(tmp_path, stock, clip_folder):
    from PIL import Image
    from transformers import pipeline

    folders, expected, pipeline_scores = {}, {}, {}

    def save(folder, model, auto, output, inputs):
        model.save_pretrained(folder)
        with torch.no_grad():
            torch.save((inputs, (output, getattr(model(**inputs), output))), folder / "check.pt")
        folders[str(folder)] = auto
        expected[str(folder)] = type(AutoModel.from_pretrained(folder)).__name__  # what the package would give

    for name, family in FAMILIES.items():
        stock_model, _ = stock(name)
        for method in (m for m in ("tome", "evit", "dynamicvit") if fits(name, REDUCING_PLANS[m])):
            model = ours(name, stock_model, token_reduction=REDUCING_PLANS[method])
            save(tmp_path / f"{name}-{method}", model, family.auto, family.output, {"pixel_values": PIXELS})
            if name in PIPELINE_CLASSIFIERS and method == "tome":  # with labels and a processor: the pipeline runs
                save_classifier(tmp_path / f"{name}-{method}", model)
                classify = pipeline("image-classification", model=str(tmp_path / f"{name}-{method}"))
                scores = classify(Image.new("RGB", (40, 48), (120, 30, 200)), top_k=None)
                pipeline_scores[str(tmp_path / f"{name}-{method}")] = {p["label"]: p["score"] for p in scores}
    clip = TokenPruneCLIPModel.from_pretrained(clip_folder[1], token_reduction=REDUCING_PLANS["tome"]).eval()
    clip_inputs = {"pixel_values": PIXELS, "input_ids": TEXT}
    save(tmp_path / "clip-full", clip, "AutoModelForZeroShotImageClassification", "logits_per_image", clip_inputs)
    save_text_and_image_processors(tmp_path / "clip-full")
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
        assert report[folder]["diff"] <= 1e-5, folder  # two processes may order a threaded sum differently
        assert "transformers_modules" in report[folder]["module"]
        assert report[folder]["base"] == base
    assert report[str(tmp_path / "clip-full")]["labels"] == ["cat", "dog"]
    assert len(pipeline_scores) == len(PIPELINE_CLASSIFIERS)
    for folder, scores in pipeline_scores.items():  # the remote code's pipeline gives the package's scores
        assert report[folder]["scores"] == pytest.approx(scores, abs=1e-6)


COMPILED = [("deit", "evit"), ("deit", "tome"), ("dinov2-registers", "tome"), ("clip", "tome"), ("siglip", "tome")]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "method"), [case for case in COMPILED if case[0] in FAMILIES])
def test_compiles_with_fullgraph(stock, name, method):
    """One plan per family layout (compiling a tiny model takes from seconds to minutes on a loaded CPU)."""
    stock_model, _ = stock(name)
    model = ours(name, stock_model, token_reduction=REDUCING_PLANS[method])
    with torch.no_grad():
        expected = output_of(name, model(PIXELS))
        compiled = torch.compile(model, fullgraph=True)
        torch.testing.assert_close(output_of(name, compiled(PIXELS)), expected, atol=1e-5, rtol=1e-4)
