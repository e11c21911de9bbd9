"""The family matrix: every case of tests/family_matrix.py (a row of the family table with a tiny config: ViT, DeiT
distilled, DINOv2 with and without registers, CLIP's and SigLIP's towers, and ViT-MSN, a family defined outside the
package) x every method gets the same guarantees: stock checkpoints load, keep-all reproduces the stock model,
static counts with the prefix first, save/load, Auto classes, FLOPs against the counter, attention reuse, recorded
hidden states, remote code in a clean process, compile. Then what each family adds: DeiT's two heads, DINOv2's
SwiGLU and resolutions, the full CLIP model, SigLIP's pooling head, pipelines and the stock Trainer."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ALL_REDUCING, KEEP_ALL_PLANS, REDUCING_PLANS, REUSE_PLANS, TINY
from family_matrix import (
    FAMILIES,
    PIPELINE_CLASSIFIERS,
    PIXELS,
    TEXT,
    cases,
    clip_checkpoint,
    fits,
    ours,
    output_of,
    pixels_of,
    save_classifier,
    save_text_and_image_processors,
    stock_models,
)
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoConfig,
    AutoModel,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    DeiTConfig,
    Dinov2WithRegistersModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from hf_tokenprune import (
    REDUCTION_METHODS,
    TokenPruneCLIPConfig,
    TokenPruneCLIPModel,
    TokenPruneCLIPVisionConfig,
    TokenPruneCLIPVisionModel,
    TokenPruneCLIPVisionModelWithProjection,
    TokenPruneDeiTConfig,
    TokenPruneDinov2Config,
    TokenPruneDinov2WithRegistersConfig,
    TokenPruneDinov2WithRegistersModel,
    TokenPruneSiglipVisionConfig,
    TokenPruneSiglipVisionModel,
)
from hf_tokenprune.families import FAMILIES as TABLE_ROWS
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
        full = output_of(name, model.eval()(pixels_of(name), disable_plans=True))
        torch.testing.assert_close(full, output_of(name, stock_model(pixels_of(name))), atol=1e-5, rtol=0)


@pytest.mark.parametrize("restore", [False, True])
@pytest.mark.parametrize(("name", "method"), cases(KEEP_ALL_PLANS))
def test_keep_all_reproduces_the_stock_family(stock, name, method, restore):
    stock_model, _ = stock(name)
    model = ours(name, stock_model, token_reduction=KEEP_ALL_PLANS[method], restore_tokens=restore)
    with torch.no_grad():
        outputs = model(pixels_of(name))
        torch.testing.assert_close(
            output_of(name, outputs), output_of(name, stock_model(pixels_of(name))), atol=1e-5, rtol=0
        )
    tokens = 64 + FAMILIES[name].num_prefix
    assert all(a == m == tokens for a, m in outputs.token_counts)


# The heads that average the final tokens: DINOv2's patch mean beside CLS, VideoMAE's mean (ViT's mean pooling reads
# the last layer before its final norm, unrestored either way: tests/models/test_methods.py tests it).
AVERAGING_HEADS = {"dinov2": {}, "dinov2-registers": {}, "videomae": {}}


@pytest.mark.parametrize("name", sorted(AVERAGING_HEADS))
def test_an_averaging_head_counts_each_merged_token_for_the_tokens_it_holds(stock, name):
    """ToMe's rule for average pooling (its MAE patch): the head on the merged sequence equals the head on the
    restored one, where each merged token is copied to every embedding token it holds."""
    stock_model, _ = stock(name)
    plan = {"method": "tome", "r": 8}
    merged, restored = (
        ours(name, stock_model, token_reduction=plan, restore_tokens=restore, **AVERAGING_HEADS[name])
        for restore in (False, True)
    )
    with torch.no_grad():
        out, full = merged(pixels_of(name)), restored(pixels_of(name))
    assert out.token_counts[-1][1] == 64 + FAMILIES[name].num_prefix - 8 * merged.config.num_hidden_layers
    torch.testing.assert_close(out.logits, full.logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("name", "plan"), cases(ALL_REDUCING))
def test_token_counts_are_static_and_prefix_tokens_stay_first(stock, name, plan):
    stock_model, _ = stock(name)
    model = ours(name, stock_model, token_reduction=ALL_REDUCING[plan])
    with torch.no_grad():
        outputs = model(pixels_of(name))
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
    assert family.island <= set(os.listdir(tmp_path)), "save_pretrained must write the remote code"
    loaded, info = family.model.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(
            output_of(name, loaded.eval()(pixels_of(name))), output_of(name, model(pixels_of(name))), atol=0, rtol=0
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
        outputs = model(pixels_of(name))
    counted = counter.get_total_flops() / pixels_of(name).shape[0]
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
        outputs = model(pixels_of(name))
        full = output_of(name, model(pixels_of(name), disable_plans=True))
    torch.testing.assert_close(full, output_of(name, stock_model(pixels_of(name))), atol=1e-5, rtol=0)
    assert list(outputs.token_counts) == model.config.token_counts()
    assert count_flops(model.config).ideal_speedup > 1.0
    assert model.drop_training_modules()
    model.save_pretrained(tmp_path)
    loaded, info = FAMILIES[name].model.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(
            output_of(name, loaded.eval()(pixels_of(name))), output_of(name, outputs), atol=0, rtol=0
        )


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_hidden_states_and_attentions_are_recorded_as_stock(stock, name):
    stock_model, _ = stock(name)
    model = ours(name, stock_model, token_reduction=KEEP_ALL_PLANS["tome"])
    for each in (model, stock_model):
        each.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            outputs = model(pixels_of(name), output_hidden_states=True, output_attentions=True)
            expected = stock_model(pixels_of(name), output_hidden_states=True, output_attentions=True)
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
        if not family.in_island:  # a family defined outside the package imports it: its checkpoints need it
            continue
        stock_model, _ = stock(name)
        for method in (m for m in ("tome", "evit", "dynamicvit") if fits(name, REDUCING_PLANS[m])):
            model = ours(name, stock_model, token_reduction=REDUCING_PLANS[method])
            save(tmp_path / f"{name}-{method}", model, family.auto, family.output, {"pixel_values": pixels_of(name)})
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


# One full graph with ToMe (merging, the prefix first) through aot_eager for each family with code of its own: ViT is
# tests/models/test_compile.py, ViT-MSN and DeiT run ViT's layers (DINOv2 with registers has a longer prefix than
# DeiT's two tokens), DINOv2 with registers covers plain DINOv2's.
SAME_CODE_AS = {"vit": "test_compile.py", "vit-msn": "vit", "deit": "vit", "dinov2": "dinov2-registers"}
COMPILED = [(name, "tome") for name in sorted(FAMILIES) if name not in SAME_CODE_AS]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "method"), [case for case in COMPILED if case[0] in FAMILIES])
def test_compiles_with_fullgraph(stock, name, method):
    """One full graph per family (aot_eager: the default backend's code generation takes tens of seconds per model on
    a 2-core machine and is tested on ViT, tests/models/test_compile.py)."""
    stock_model, _ = stock(name)
    model = ours(name, stock_model, token_reduction=REDUCING_PLANS[method])
    with torch.no_grad():
        expected = output_of(name, model(pixels_of(name)))
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # one full graph (test_compile.py)
        torch.testing.assert_close(output_of(name, compiled(pixels_of(name))), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["deit", "dinov2-registers", "clip"])
def test_benchmark_pairs_each_family_with_its_stock_class(name):
    from hf_tokenprune.measure.benchmark import BenchmarkSettings, build_models, parse_plans, run_benchmark

    base = FAMILIES[name].config(**FAMILIES[name].settings())
    modes = ("inference", "training") if name.startswith("dinov2") else ("inference",)
    settings = BenchmarkSettings(batch_size=2, rounds=1, warmup=0, progress=False, modes=modes)
    plans = parse_plans([None, REDUCING_PLANS["tome"]], base)
    stock_model, models = build_models(base, plans)
    assert type(stock_model) is FAMILIES[name].stock_model or name == "clip"  # CLIP: the tower with projection
    rows = run_benchmark(base, plans, settings)
    assert len(rows) == 2 * len(modes) and all(row["measured_speedup"] > 0 for row in rows)
    tome = next(row for row in rows if row["plan"])
    assert tome["ideal_speedup"] > 1.0 and tome["tokens_per_layer"] == [
        list(c)
        for c in base.__class__(**FAMILIES[name].settings(), token_reduction=REDUCING_PLANS["tome"]).token_counts()
    ]


def test_benchmark_refuses_training_without_labels_and_knows_the_new_architectures():
    from hf_tokenprune.families import build_config
    from hf_tokenprune.measure.benchmark import BenchmarkSettings, run_benchmark

    base = TokenPruneCLIPVisionConfig(**FAMILIES["clip"].settings())
    with pytest.raises(ValueError, match="'training'.*no training loss.*--modes inference,latency"):
        run_benchmark(base, [None], BenchmarkSettings(modes=("training",), progress=False))
    dinov2 = build_config(None, "dinov2-base-patch14-518", token_reduction={"method": "tome", "r": 16})
    assert type(dinov2) is TokenPruneDinov2Config and dinov2.num_patches == 1369
    assert count_flops(dinov2).token_counts[0] == (1370, 1354)
    clip = build_config(None, "clip-vit-base-patch16")
    assert type(clip) is TokenPruneCLIPVisionConfig and count_flops(clip).layers[0].attention_tokens == 197


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


def test_dinov2_stock_checkpoint_on_disk_fuses_the_swiglu_input(stock):
    from safetensors import safe_open

    _, folder = stock("dinov2-swiglu")
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert "dinov2.encoder.layer.0.mlp.weights_in.weight" in f.keys()


@pytest.mark.parametrize("method", ["tome", "evit", "dynamicvit"])
def test_dinov2_runs_a_plan_at_another_resolution(stock, method):
    """Position embeddings are interpolated, as in stock DINOv2: 40 px is 10 x 10 patches."""
    stock_model, _ = stock("dinov2-registers")
    model = ours("dinov2-registers", stock_model, token_reduction=REDUCING_PLANS[method])
    pixels = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        outputs = model(pixels)
        keep_all = model(pixels, disable_plans=True).logits
    assert outputs.patch_grid == (10, 10)
    assert list(outputs.token_counts) == model.config.token_counts(image_size=40)
    torch.testing.assert_close(keep_all, stock_model(pixels).logits, atol=1e-5, rtol=0)
    assert count_flops(model.config, image_size=40).token_counts == list(outputs.token_counts)


def test_dinov2_with_registers_base_model_matches_the_stock_one(stock):
    stock_model, _ = stock("dinov2-registers")
    torch.manual_seed(0)
    stock_base = Dinov2WithRegistersModel(stock_model.config).eval()
    stock_base.load_state_dict(stock_model.dinov2_with_registers.state_dict())
    config = TokenPruneDinov2WithRegistersConfig(
        **FAMILIES["dinov2-registers"].settings(), token_reduction=KEEP_ALL_PLANS["tome"]
    )
    model = TokenPruneDinov2WithRegistersModel(config).eval()
    model.load_state_dict(stock_base.state_dict())
    with torch.no_grad():
        expected, outputs = stock_base(PIXELS), model(PIXELS)
    torch.testing.assert_close(outputs.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs.pooler_output, expected.pooler_output, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["none", "tome", "evit", "cropr"])
def test_clip_model_vision_tower_follows_a_plan(clip_folder, method):
    stock_model, folder = clip_folder
    plan = REDUCING_PLANS.get(method)
    model, info = TokenPruneCLIPModel.from_pretrained(folder, token_reduction=plan, output_loading_info=True)
    new_parameters = {n for n, _ in model.named_parameters()} - set(stock_model.state_dict())
    assert set(info["missing_keys"]) == new_parameters and not info["unexpected_keys"]
    assert type(model.vision_model) is TokenPruneCLIPVisionModel
    assert model.config.vision_config.token_reduction == model.config.token_reduction
    model.eval()
    with torch.no_grad():
        outputs = model(input_ids=TEXT, pixel_values=PIXELS, return_loss=True)
        full = model.vision_model(PIXELS, disable_plans=True).pooler_output
    torch.testing.assert_close(full, stock_model.vision_model(PIXELS).pooler_output, atol=1e-5, rtol=0)
    counts = outputs.vision_model_output.token_counts
    assert list(counts) == model.config.vision_config.token_counts()
    assert (method == "none") == all(m == 65 for _, m in counts)
    assert torch.isfinite(outputs.loss)


@pytest.mark.parametrize("method", sorted(KEEP_ALL_PLANS))
def test_clip_model_keep_all_gives_the_stock_similarities(clip_folder, method):
    stock_model, folder = clip_folder
    model = TokenPruneCLIPModel.from_pretrained(folder, token_reduction=KEEP_ALL_PLANS[method]).eval()
    with torch.no_grad():
        expected = stock_model(input_ids=TEXT, pixel_values=PIXELS)
        outputs = model(input_ids=TEXT, pixel_values=PIXELS)
    torch.testing.assert_close(outputs.logits_per_image, expected.logits_per_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs.image_embeds, expected.image_embeds, atol=1e-5, rtol=0)


def test_clip_model_trains_with_the_contrastive_loss(clip_folder):
    _, folder = clip_folder
    model = TokenPruneCLIPModel.from_pretrained(folder, token_reduction=REDUCING_PLANS["dynamicvit"]).train()
    outputs = model(input_ids=TEXT, pixel_values=PIXELS, return_loss=True)
    outputs.loss.backward()
    assert model.vision_model.encoder.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert model.text_model.embeddings.token_embedding.weight.grad.abs().sum() > 0


def test_clip_model_round_trip_and_auto_classes(tmp_path, clip_folder):
    from transformers import AutoModelForZeroShotImageClassification

    _, folder = clip_folder
    model = TokenPruneCLIPModel.from_pretrained(folder, token_reduction=REDUCING_PLANS["tome"]).eval()
    model.save_pretrained(tmp_path)
    assert FAMILIES["clip"].island <= set(os.listdir(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vision_config"]["token_reduction"] == model.config.token_reduction
    loaded = AutoModelForZeroShotImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is TokenPruneCLIPModel and type(AutoConfig.from_pretrained(tmp_path)) is TokenPruneCLIPConfig
    with torch.no_grad():
        expected = model(input_ids=TEXT, pixel_values=PIXELS).logits_per_image
        torch.testing.assert_close(loaded(input_ids=TEXT, pixel_values=PIXELS).logits_per_image, expected)


@pytest.mark.parametrize("method", ["none", "tome", "supervit"])
def test_clip_image_embeddings_with_projection(method):
    torch.manual_seed(0)
    stock_model = CLIPVisionModelWithProjection(CLIPVisionConfig(**FAMILIES["clip"].settings())).eval()
    plan = {"token_reduction": REDUCING_PLANS.get(method)}
    model = TokenPruneCLIPVisionModelWithProjection(TokenPruneCLIPVisionConfig(**FAMILIES["clip"].settings(), **plan))
    missing, unexpected = model.load_state_dict(stock_model.state_dict(), strict=False)
    assert not unexpected and set(missing) == {n for n, _ in model.named_parameters()} - set(stock_model.state_dict())
    with torch.no_grad():
        outputs = model.eval()(PIXELS)
        full = model(PIXELS, disable_plans=True).image_embeds
    torch.testing.assert_close(full, stock_model(PIXELS).image_embeds, atol=1e-5, rtol=0)
    assert outputs.image_embeds.shape == (2, 24) and list(outputs.token_counts) == model.config.token_counts()


@pytest.mark.parametrize("method", sorted(m for m, cls in REDUCTION_METHODS.items() if "cls_token" in cls.needs))
def test_siglip_refuses_methods_that_rank_by_cls_attention(method):
    plan = REDUCING_PLANS[method]
    runs = sorted(m for m, cls in REDUCTION_METHODS.items() if "cls_token" not in cls.needs)
    with pytest.raises(ValueError, match=rf"'{method}' needs a CLS token .* the methods that run on it") as error:
        TokenPruneSiglipVisionConfig(**FAMILIES["siglip"].settings(), token_reduction=plan)
    assert str(error.value).endswith(f"{runs}.") and "\n" not in str(error.value)


@pytest.mark.parametrize("method", ["tome", "cropr", "dynamicvit"])
def test_siglip_pooling_head_reads_the_tokens_left(method):
    settings = {**FAMILIES["siglip"].settings(), "vision_use_head": True}
    torch.manual_seed(0)
    stock_model = SiglipVisionModel(SiglipVisionConfig(**settings)).eval()
    keep_all = TokenPruneSiglipVisionModel(
        TokenPruneSiglipVisionConfig(**settings, token_reduction=KEEP_ALL_PLANS[method])
    )
    reducing = TokenPruneSiglipVisionModel(
        TokenPruneSiglipVisionConfig(**settings, token_reduction=REDUCING_PLANS[method])
    )
    for model in (keep_all, reducing):
        missing, unexpected = model.load_state_dict(stock_model.state_dict(), strict=False)
        assert not unexpected and set(missing) == {n for n, _ in model.named_parameters()} - set(
            stock_model.state_dict()
        )
    with torch.no_grad():
        expected = stock_model(PIXELS).pooler_output
        torch.testing.assert_close(keep_all.eval()(PIXELS).pooler_output, expected, atol=1e-5, rtol=0)
        outputs = reducing.eval()(PIXELS)
    assert outputs.pooler_output.shape == expected.shape and torch.isfinite(outputs.pooler_output).all()
    assert outputs.last_hidden_state.shape[1] == outputs.token_counts[-1][1] < 64 or method == "cropr"


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_vision_tower_loads_from_a_full_checkpoint(tmp_path, name):
    """As the stock vision classes do: the vision part of a full CLIP / SigLIP checkpoint, no vision key missing."""
    from transformers import SiglipConfig, SiglipModel

    full_class, config_class = {"clip": (CLIPModel, CLIPConfig), "siglip": (SiglipModel, SiglipConfig)}[name]
    text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=99)
    torch.manual_seed(0)
    full = full_class(config_class(vision_config=FAMILIES[name].settings(), text_config=text)).eval()
    full.save_pretrained(tmp_path)
    model, info = FAMILIES[name].model.from_pretrained(
        tmp_path, token_reduction=KEEP_ALL_PLANS["tome"], output_loading_info=True
    )
    assert model.config.model_type == FAMILIES[name].config.model_type and model.config.token_reduction
    assert not info["missing_keys"] and all(
        key.startswith(("text_", "logit_", "visual_")) for key in info["unexpected_keys"]
    )
    with torch.no_grad():
        expected = full.vision_model(PIXELS).last_hidden_state
        torch.testing.assert_close(model.eval()(PIXELS).last_hidden_state, expected, atol=1e-5, rtol=0)


def test_zero_shot_pipeline_on_a_saved_folder(tmp_path, clip_folder):
    from PIL import Image
    from transformers import pipeline

    _, folder = clip_folder
    model = TokenPruneCLIPModel.from_pretrained(folder, token_reduction=REDUCING_PLANS["tome"])
    model.save_pretrained(tmp_path)
    save_text_and_image_processors(tmp_path)
    classify = pipeline("zero-shot-image-classification", model=str(tmp_path))
    assert (
        type(classify.model) is TokenPruneCLIPModel
        and classify.model.config.token_reduction["r"][0] == REDUCING_PLANS["tome"]["r"]
    )
    scores = classify(Image.new("RGB", (40, 40), (120, 30, 200)), candidate_labels=["cat", "dog", "car"])
    assert sorted(s["label"] for s in scores) == ["car", "cat", "dog"]
    assert sum(s["score"] for s in scores) == pytest.approx(1.0)


@pytest.mark.parametrize("name", PIPELINE_CLASSIFIERS)
def test_image_classification_pipeline_on_a_saved_folder(tmp_path, stock, name):
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor, pipeline

    model = ours(name, stock(name)[0], token_reduction=REDUCING_PLANS["tome"])
    save_classifier(tmp_path, model)
    classify = pipeline("image-classification", model=str(tmp_path), trust_remote_code=True)
    assert type(classify.model) is FAMILIES[name].model and classify.model.config.token_reduction["method"] == "tome"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    scores = {s["label"]: s["score"] for s in classify(image, top_k=TINY["num_labels"])}
    inputs = AutoImageProcessor.from_pretrained(tmp_path)(image, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits.softmax(-1)[0]
    assert scores == pytest.approx({f"class-{i}": p for i, p in enumerate(expected.tolist())}, abs=1e-6)


class TinyBatches(torch.utils.data.Dataset):
    """Random 32x32 images with labels (for CLIP, with a caption instead), deterministic."""

    def __init__(self, size: int = 8, captions: bool = False):
        generator = torch.Generator().manual_seed(0)
        self.pixels = torch.randn(size, 3, 32, 32, generator=generator)
        self.labels = torch.randint(0, TINY["num_labels"], (size,), generator=generator)
        self.captions = captions

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        if self.captions:
            return {"pixel_values": self.pixels[index], "input_ids": TEXT[index % 2]}
        return {"pixel_values": self.pixels[index], "labels": self.labels[index]}


def _train_two_steps(tmp_path, model, dataset):
    from transformers import Trainer, TrainingArguments, default_data_collator

    def collate(features):  # CLIP's contrastive loss is asked for per batch, as a flag
        batch = default_data_collator(features)
        return {**batch, "return_loss": True} if "input_ids" in batch else batch

    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
    )
    before = {name: value.detach().clone() for name, value in model.named_parameters() if value.requires_grad}
    result = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate).train()
    changed = [name for name, value in model.named_parameters() if name in before and not value.equal(before[name])]
    return result, changed


@pytest.mark.parametrize("name", ["deit", "dinov2", "dinov2-registers"])
def test_stock_trainer_trains_the_classifiers_with_a_plan(tmp_path, stock, name):
    stock_model, _ = stock(name)
    model = ours(name, stock_model, token_reduction=REDUCING_PLANS["dynamicvit"]).train()
    result, changed = _train_two_steps(tmp_path, model, TinyBatches())
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    assert any("token_reduction" in n for n in changed) and any("classifier" in n for n in changed)


def test_stock_trainer_trains_clip_with_the_contrastive_loss(tmp_path, clip_folder):
    _, folder = clip_folder
    model = TokenPruneCLIPModel.from_pretrained(folder, token_reduction=REDUCING_PLANS["tome"]).train()
    result, changed = _train_two_steps(tmp_path, model, TinyBatches(captions=True))
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    assert any(n.startswith("vision_model.encoder") for n in changed) and any(n.startswith("text_") for n in changed)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_configs_output_flags_are_honoured_as_by_the_stock_class(stock, name):
    """``config.output_hidden_states`` (set directly or as a from_pretrained keyword) gives hidden states as it does
    on the stock class, and the call's flag wins over the config's."""
    stock_model, folder = stock(name)
    model = FAMILIES[name].model.from_pretrained(folder, output_hidden_states=True).eval()
    stock_model.config.output_hidden_states = True
    try:
        with torch.no_grad():
            ours_out, stock_out = model(pixels_of(name)), stock_model(pixels_of(name))
            quiet = model(pixels_of(name), output_hidden_states=False)
    finally:
        stock_model.config.output_hidden_states = False
    assert stock_out.hidden_states is not None and len(ours_out.hidden_states) == len(stock_out.hidden_states)
    assert quiet.hidden_states is None


@pytest.mark.parametrize("name", sorted(TABLE_ROWS))
def test_every_forward_takes_transformers_typed_keyword_arguments(name):
    """transformers reads ``**kwargs: Unpack[TransformersKwargs]`` to know that a model can return attentions and
    hidden states; a bare ``**kwargs`` makes its machinery conclude it cannot."""
    import inspect

    from transformers.utils import TransformersKwargs

    row = TABLE_ROWS[name]
    for cls in {row.model_class(), *row.auto_mapping().values()}:
        keyword = next(p for p in inspect.signature(cls.forward).parameters.values() if p.kind is p.VAR_KEYWORD)
        assert TransformersKwargs in getattr(keyword.annotation, "__args__", ()), f"{cls.__name__}.forward"


def initialised_twice(model_class, config) -> tuple[dict, dict]:
    """The state of a model built by its constructor and of one loaded from an empty state dict (every weight
    initialised by ``_init_weights``), each module's initialisation seeded as transformers' own test does."""
    from transformers import PreTrainedModel, set_seed

    original = PreTrainedModel._initialize_weights

    def seeded(self, module, *args, **kwargs):
        set_seed(42)
        return original(self, module, *args, **kwargs)

    PreTrainedModel._initialize_weights = seeded
    try:
        built = model_class(config).state_dict()
        loaded = model_class.from_pretrained(None, config=config, state_dict={}).state_dict()
    finally:
        PreTrainedModel._initialize_weights = original
    return built, loaded


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("plan", [None, "dynamicvit"], ids=["no-plan", "dynamicvit"])
def test_weights_missing_from_a_checkpoint_are_initialised_as_by_the_constructor(name, plan):
    """transformers' test_can_init_all_missing_weights: loading from an empty state dict initialises every weight
    through ``_init_weights`` exactly as the constructor does (DINOv2 with registers once left its layer scales
    uninitialised: our layer uses DINOv2's layer-scale class, which the stock initialisation there did not know)."""
    family = FAMILIES[name]
    plans = {} if plan is None else {"token_reduction": REDUCING_PLANS[plan]}
    built, loaded = initialised_twice(family.model, family.config(**family.settings(), **plans))
    differ = [key for key in built if not torch.allclose(built[key].float(), loaded[key].float())]
    assert not differ, differ


def test_the_full_clip_model_initialises_its_towers_as_the_stock_model():
    """The stock branches of `_init_weights` for modules without parameters of their own (CLIP's attention and MLP)
    run for our classes too: transformers skips such modules for code outside transformers, which once left the text
    tower of a loaded TokenPruneCLIPModel at the generic initialisation. ``logit_scale`` too, which the stock
    CLIPModel's `_init_weights` leaves out (transformers skips the test for CLIP, a model file from before 2023)."""
    from family_matrix import tiny_clip

    built, loaded = initialised_twice(TokenPruneCLIPModel, TokenPruneCLIPConfig(**tiny_clip().to_dict()))
    differ = [key for key in built if not torch.allclose(built[key].float(), loaded[key].float())]
    assert differ == [], differ
    assert loaded["logit_scale"].item() == pytest.approx(tiny_clip().logit_scale_init_value)
    stock_built, _ = initialised_twice(CLIPModel, tiny_clip())
    for key in ("text_model.encoder.layers.0.self_attn.q_proj.weight", "vision_model.encoder.layers.0.mlp.fc1.weight"):
        assert built[key].std().item() == pytest.approx(stock_built[key].std().item(), rel=0.3), key
