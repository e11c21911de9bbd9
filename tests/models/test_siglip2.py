"""SigLIP 2's vision tower (NaFlex inputs: each image's own patch grid, padded to a number of slots): the family
guarantees (stock checkpoints load, keep-all reproduces the stock tower, save/load, FLOPs, compile, remote code) and
what padding adds: padding never changes a real output, is never kept over a real token and never counts in one
(ToMe merges padding pairs first), and an image's output does not depend on the other images of its batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
from family_matrix import SIGLIP2_TINY
from test_families import CLEAN_PROCESS
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModel, Siglip2VisionConfig, Siglip2VisionModel

from hf_tokenprune import TokenPruneSiglip2VisionConfig, TokenPruneSiglip2VisionModel
from hf_tokenprune.flops import count_flops
from hf_tokenprune.models import reduction_cropr, reduction_dynamicvit, reduction_tome

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = SIGLIP2_TINY
SLOTS = 20  # the processor's max_num_patches: more slots than the position grid has patches, as NaFlex allows
SHAPES = [(4, 4), (3, 5), (2, 3)]  # 16, 15 and 6 real patches: 4, 5 and 14 padding slots
PLANS = {
    "tome": {"method": "tome", "r": 3},
    "cropr": {"method": "cropr", "tokens_per_layer": 2},
    "dynamicvit": {"method": "dynamicvit", "keep_rate": 0.7},
}
KEEP_ALL = {
    "none": None,
    "tome": {"method": "tome", "r": 0},
    "cropr": {"method": "cropr", "tokens_per_layer": 0},
    "dynamicvit": {"method": "dynamicvit", "keep_rate": 1.0},
}
ISLAND = {
    "configuration_tokenprune_siglip2.py",
    "modeling_tokenprune_siglip2.py",
    "configuration_tokenprune_clip.py",
    "modeling_tokenprune_clip.py",
    "modeling_tokenprune_common.py",
    "token_reduction.py",
    "methods.py",
}


def naflex(shapes=SHAPES, slots=SLOTS, seed=1):
    """Patchified pixels, the padding mask and the grids, as Siglip2ImageProcessor returns them."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(len(shapes), slots, 3 * TINY["patch_size"] ** 2, generator=generator)
    mask = torch.zeros(len(shapes), slots, dtype=torch.long)
    for index, (rows, columns) in enumerate(shapes):
        mask[index, : rows * columns] = 1
    return {"pixel_values": pixel_values, "pixel_attention_mask": mask, "spatial_shapes": torch.tensor(shapes)}


def with_noisy_padding(inputs, seed=7):
    """The same inputs with large random values in every padding slot."""
    real = inputs["pixel_attention_mask"].bool()[..., None]
    noise = 10 * torch.randn(inputs["pixel_values"].shape, generator=torch.Generator().manual_seed(seed))
    return {**inputs, "pixel_values": torch.where(real, inputs["pixel_values"], noise)}


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    torch.manual_seed(0)
    model = Siglip2VisionModel(Siglip2VisionConfig(**TINY)).eval()
    folder = tmp_path_factory.mktemp("stock-siglip2")
    model.save_pretrained(folder)
    return model, folder


def ours(folder, plan, **config):
    torch.manual_seed(0)
    return TokenPruneSiglip2VisionModel.from_pretrained(folder, token_reduction=plan, **config).eval()


@pytest.mark.parametrize("method", sorted(KEEP_ALL))
def test_stock_checkpoint_loads_with_only_the_methods_modules_new(stock, method):
    stock_model, folder = stock
    model, info = TokenPruneSiglip2VisionModel.from_pretrained(
        folder, token_reduction=PLANS.get(method), output_loading_info=True
    )
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert all(".token_reduction." in key for key in info["missing_keys"])
    assert set(stock_model.state_dict()) <= set(model.state_dict())


@pytest.mark.parametrize("restore", [False, True])
@pytest.mark.parametrize("method", sorted(KEEP_ALL))
def test_keep_all_reproduces_the_stock_tower_with_padding(stock, method, restore):
    stock_model, folder = stock
    model = ours(folder, KEEP_ALL[method], restore_tokens=restore)
    inputs = naflex()
    with torch.no_grad():
        expected, outputs = stock_model(**inputs), model(**inputs)
    real = inputs["pixel_attention_mask"].bool()
    torch.testing.assert_close(outputs.pooler_output, expected.pooler_output, atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs.last_hidden_state[real], expected.last_hidden_state[real], atol=1e-5, rtol=0)
    assert outputs.patch_grid == (1, SLOTS)


@pytest.mark.parametrize("method", sorted(PLANS))
def test_padding_values_never_reach_a_real_output(stock, method, monkeypatch):
    """Large noise in the padding slots leaves the pooled output of every image unchanged; the same check on a
    method that ignores padding (its `padding_of` patched out) fails, so the check can see a leak."""
    _, folder = stock
    model = ours(folder, PLANS[method])
    inputs = naflex()
    with torch.no_grad():
        clean, noisy = model(**inputs).pooler_output, model(**with_noisy_padding(inputs)).pooler_output
    torch.testing.assert_close(noisy, clean, atol=1e-6, rtol=0)

    module = {"tome": reduction_tome, "cropr": reduction_cropr, "dynamicvit": reduction_dynamicvit}[method]
    monkeypatch.setattr(module, "padding_of", lambda state: None)
    if hasattr(module, "padding_ranked_last"):
        monkeypatch.setattr(module, "padding_ranked_last", lambda scores, state: scores)
    with torch.no_grad():
        clean, noisy = model(**inputs).pooler_output, model(**with_noisy_padding(inputs)).pooler_output
    assert (noisy - clean).abs().max() > 1e-3, "a method that ignores padding must change the output"


@pytest.mark.parametrize("method", ["cropr", "dynamicvit"])
def test_padding_is_never_kept_over_a_real_token(stock, method):
    _, folder = stock
    model = ours(folder, PLANS[method])
    inputs = naflex()
    with torch.no_grad():
        outputs = model(**inputs)
    real_counts = inputs["pixel_attention_mask"].sum(dim=1)
    for (_, kept), positions in zip(outputs.token_counts, outputs.token_positions):
        kept_real = (positions < real_counts[:, None]).sum(dim=1)  # real patches come first in the slots
        assert torch.equal(kept_real, torch.clamp(real_counts, max=kept))
    assert any(kept < SLOTS for _, kept in outputs.token_counts)


def test_tome_merges_padding_only_with_padding_and_first(stock):
    _, folder = stock
    model = ours(folder, PLANS["tome"])
    inputs = naflex()
    with torch.no_grad():
        outputs = model(**inputs)
    padding = inputs["pixel_attention_mask"] == 0
    for owner in outputs.token_owner:
        for image in range(len(SHAPES)):
            groups = {}
            for slot, token in enumerate(owner[image].tolist()):
                groups.setdefault(token, set()).add(bool(padding[image, slot]))
            assert all(len(kinds) == 1 for kinds in groups.values()), "a token holds padding and real patches"
    # The third image has 14 padding slots, 7 in each set: the first layer's 3 merges all go to padding, while the
    # first image (4 padding slots) merges padding and then real patches.
    assert len(set(outputs.token_owner[0][2, :6].tolist())) == 6, "padding pairs are merged first"
    assert len(set(outputs.token_owner[0][0, :16].tolist())) < 16


@pytest.mark.parametrize("method", sorted(PLANS))
def test_an_image_gives_the_same_output_alone_and_in_a_batch(stock, method):
    _, folder = stock
    model = ours(folder, PLANS[method])
    inputs = naflex()
    with torch.no_grad():
        batch = model(**inputs).pooler_output
        for image in range(len(SHAPES)):
            alone = model(**{key: value[image : image + 1] for key, value in inputs.items()}).pooler_output
            torch.testing.assert_close(alone[0], batch[image], atol=1e-5, rtol=0)


def test_training_ignores_padding(stock):
    """DynamicViT's masked training never keeps a padding slot and counts its ratio on the image's own patches;
    Cropr's auxiliary head does not see padding."""
    _, folder = stock
    inputs = naflex()
    model = ours(folder, PLANS["dynamicvit"]).train()
    outputs = model(**inputs)
    padding = inputs["pixel_attention_mask"] == 0
    assert outputs.token_policy[padding].sum() == 0
    assert outputs.token_policy[~padding].sum() > 0
    outputs.aux_loss.backward()
    assert model.encoder.layers[1].token_reduction.predictor.project[1].weight.grad.abs().sum() > 0

    model = ours(folder, PLANS["cropr"]).train()
    clean = model(**inputs).aux_logits
    noisy = model(**with_noisy_padding(inputs)).aux_logits
    for (logits, _), (noisy_logits, _) in zip(clean, noisy):
        torch.testing.assert_close(noisy_logits, logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", sorted(PLANS))
def test_save_and_load_round_trip(tmp_path, stock, method):
    _, folder = stock
    model = ours(folder, PLANS[method])
    model.save_pretrained(tmp_path)
    assert ISLAND <= set(os.listdir(tmp_path)), "save_pretrained must write the remote code"
    loaded, info = TokenPruneSiglip2VisionModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    inputs = naflex()
    with torch.no_grad():
        expected = model(**inputs).pooler_output
        torch.testing.assert_close(loaded.eval()(**inputs).pooler_output, expected, atol=0, rtol=0)
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"]["AutoModel"].endswith(
        "TokenPruneSiglip2VisionModel"
    )
    assert type(AutoModel.from_pretrained(tmp_path)) is TokenPruneSiglip2VisionModel
    assert type(AutoConfig.from_pretrained(tmp_path)) is TokenPruneSiglip2VisionConfig


@pytest.mark.parametrize("method", ["none", *sorted(PLANS)])
def test_count_flops_matches_the_counter(stock, method):
    """The analytic count (every slot computed, the pooling head left out as for SigLIP) against FlopCounterMode."""
    _, folder = stock
    model = ours(folder, PLANS.get(method), vision_use_head=False)
    model.set_attn_implementation("eager")
    inputs = naflex(slots=TINY["num_patches"])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        outputs = model(**inputs)
    counted = counter.get_total_flops() / len(SHAPES)
    report = count_flops(model.config)
    # The position-embedding resize is a (slots x grid) matrix product the analytic count leaves out.
    resize = 2 * TINY["num_patches"] ** 2 * TINY["hidden_size"]
    assert report.flops + resize == pytest.approx(counted, rel=0.03 if method != "none" else 1e-6)
    assert report.token_counts == [tuple(c) for c in outputs.token_counts]


def test_bad_inputs_and_plans_are_refused_in_one_line(stock):
    _, folder = stock
    model = ours(folder, PLANS["tome"])
    inputs = naflex()
    with pytest.raises(ValueError, match="pixel_values must be"):
        model(torch.randn(2, 3, 16, 16), inputs["pixel_attention_mask"][:2], inputs["spatial_shapes"][:2])
    with pytest.raises(ValueError, match="spatial_shapes must be"):
        model(inputs["pixel_values"], inputs["pixel_attention_mask"], None)
    with pytest.raises(ValueError, match="pixel_attention_mask must be"):
        model(inputs["pixel_values"], inputs["pixel_attention_mask"][:, :5], inputs["spatial_shapes"])
    with pytest.raises(ValueError, match="needs a CLS token"):
        TokenPruneSiglip2VisionConfig(**TINY, token_reduction={"method": "evit"})
    with pytest.raises(ValueError, match=r"'skipat' needs one patch grid .* no attention_reuse method runs on it"):
        TokenPruneSiglip2VisionConfig(**TINY, attention_reuse={"method": "skipat", "layers": [1]})


@pytest.mark.slow
def test_compiles_with_fullgraph(stock):
    _, folder = stock
    model = ours(folder, PLANS["tome"])
    inputs = naflex()
    with torch.no_grad():
        expected = model(**inputs).pooler_output
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # one full graph, padding included
        torch.testing.assert_close(compiled(**inputs).pooler_output, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_remote_code_loads_in_a_clean_offline_process(tmp_path, stock):
    _, folder = stock
    inputs = naflex()
    folders = {}
    for method in ("tome", "dynamicvit"):
        target = tmp_path / method
        model = ours(folder, PLANS[method])
        model.save_pretrained(target)
        with torch.no_grad():
            torch.save((inputs, ("pooler_output", model(**inputs).pooler_output)), target / "check.pt")
        folders[str(target)] = "AutoModel"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, "-c", CLEAN_PROCESS, json.dumps(folders)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for target in folders:
        assert report[target]["diff"] <= 1e-5
        assert "transformers_modules" in report[target]["module"]
        assert report[target]["base"] == "TokenPruneSiglip2VisionModel"


def test_feature_extraction_pipeline_on_a_saved_folder(tmp_path, stock):
    """The processor's NaFlex inputs of a real-sized photo go through the stock pipeline: the pooled features are the
    model's own."""
    from PIL import Image
    from transformers import Siglip2ImageProcessorPil, pipeline

    _, folder = stock
    model = ours(folder, PLANS["tome"])
    model.save_pretrained(tmp_path)
    processor = Siglip2ImageProcessorPil(patch_size=TINY["patch_size"], max_num_patches=SLOTS)
    processor.save_pretrained(tmp_path)
    image = Image.new("RGB", (40, 24), (120, 30, 200))
    inputs = processor(images=[image], return_tensors="pt")
    assert inputs["pixel_attention_mask"].sum() < SLOTS  # a wide image: its grid leaves padding slots
    with torch.no_grad():
        expected = model(**inputs).pooler_output
    features = pipeline("image-feature-extraction", model=str(tmp_path))(image, pool=True, return_tensors=True)
    torch.testing.assert_close(features, expected, atol=1e-6, rtol=0)


def test_a_full_siglip2_checkpoint_loads_its_vision_tower(tmp_path):
    """A full `Siglip2Model` folder (as on the Hub) gives its vision tower: no missing key, and the stock image
    features with the plan disabled."""
    from transformers import Siglip2Config, Siglip2Model

    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=99)
    text.update(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    full = Siglip2Model(Siglip2Config(vision_config=TINY, text_config=text)).eval()
    full.save_pretrained(tmp_path)
    model, info = TokenPruneSiglip2VisionModel.from_pretrained(
        tmp_path, token_reduction=PLANS["tome"], output_loading_info=True
    )
    assert not info["missing_keys"]
    assert not [key for key in info["unexpected_keys"] if "vision" in key or not key.startswith(("text_", "logit_"))]
    inputs = naflex()
    with torch.no_grad():
        expected = full.get_image_features(**inputs).pooler_output
        pooled = model.eval()(**inputs, disable_plans=True).pooler_output
    torch.testing.assert_close(pooled, expected, atol=1e-6, rtol=0)


def test_speed_example_measures_every_plan_against_the_stock_tower(capsys):
    """examples/benchmark_siglip2.py on its tiny tower: one row per plan with its ideal and a measured ratio; a bad
    option stops before any work."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "benchmark_siglip2.py"
    spec = importlib.util.spec_from_file_location("benchmark_siglip2", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rows = script.run(tiny=True, rounds=1)
    assert [row["plan"].split()[0] for row in rows] == ["method=tome", "method=dynamicvit", "method=cropr"]
    assert all(row["ideal_speedup"] > 1 and row["measured_speedup"] > 0 for row in rows)
    with pytest.raises(SystemExit):
        script.main(["--tiny", "--rounds", "0"])
    assert "--rounds 0 and --threads 1 must be at least 1" in capsys.readouterr().err


def test_tome_at_its_largest_r_keeps_real_tokens_real_and_free_of_padding(stock, monkeypatch):
    """Merging half the tokens in every layer leaves some A token with no partner of its own kind: a real token and a
    padding one are merged then, the padding weighing nothing and the token staying real. Padding noise still
    changes nothing, and every real slot is held by a real token in every layer (both fail without that rule)."""
    _, folder = stock
    model = ours(folder, {"method": "tome", "r": [8, 4, 2, 1]})  # 16 slots: 8, 4, 2, then 1 token left
    inputs = naflex(slots=TINY["num_patches"])
    real_counts = inputs["pixel_attention_mask"].sum(dim=1)

    def check():
        with torch.no_grad():
            clean, noisy = model(**inputs), model(**with_noisy_padding(inputs))
        holders_real = all(
            bool((positions[image].gather(0, owner[image, :count]) < count).all())
            for owner, positions in zip(clean.token_owner, clean.token_positions)
            for image, count in enumerate(real_counts.tolist())
        )
        return (noisy.pooler_output - clean.pooler_output).abs().max().item(), holders_real

    leak, holders_real = check()
    assert leak < 1e-6 and holders_real
    monkeypatch.setattr(reduction_tome, "counted_members", lambda padding, *args: torch.ones_like(padding)[..., None])
    monkeypatch.setattr(reduction_tome, "real_position_first", lambda new_positions, *args: new_positions)
    leak, holders_real = check()
    assert leak > 1e-3 and not holders_real
