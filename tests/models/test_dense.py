"""Dense prediction: the backbone's full-grid feature maps, UperNet, the segmentation model, loading and bad input."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import ALL_REDUCING, KEEP_ALL_PLANS, REDUCING_PLANS, REUSE_PLANS, TINY, pruned_model, tiny_config
from transformers import (
    AutoBackbone,
    AutoConfig,
    SegformerImageProcessor,
    Trainer,
    TrainingArguments,
    UperNetConfig,
    UperNetForSemanticSegmentation,
    ViTModel,
)

from hf_tokenprune import TokenPruneViTBackbone, TokenPruneViTForSemanticSegmentation
from hf_tokenprune.data import digit_segmentation_arrays

STAGES = [0, 1, 2, 3, 4]  # "stem" and every layer of the 4-layer tiny model
PLANS = {name: {"token_reduction": plan} for name, plan in ALL_REDUCING.items()}
PLANS.update(REUSE_PLANS)


def dense_plan(plan: dict) -> dict:
    """The segmentation form of a plan: Cropr's auxiliary head predicts every patch (its segmentation variant)."""
    reduction = plan.get("token_reduction")
    if reduction is not None and reduction["method"] == "cropr":
        plan = {**plan, "token_reduction": {**reduction, "aux_head": "per_query"}}
    return plan


def with_stock_weights(model, stock_model):
    torch.manual_seed(0)
    missing, unexpected = model.load_state_dict(stock_model.state_dict(), strict=False)
    assert not [key for key in missing if key.startswith(("vit.embeddings", "vit.layers.0.attention"))]
    assert set(unexpected) <= {"classifier.weight", "classifier.bias"}
    return model.eval()


@pytest.mark.parametrize("name", sorted(PLANS))
def test_backbone_gives_full_grid_maps_from_every_stage(name, pixels, one_thread):
    torch.manual_seed(0)
    config = tiny_config(**PLANS[name], restore_tokens=True, out_indices=STAGES)
    backbone = TokenPruneViTBackbone(config).eval()
    with torch.no_grad():
        maps = backbone(pixels).feature_maps
    assert [tuple(m.shape) for m in maps] == [(3, 48, 8, 8)] * len(STAGES)
    assert backbone.channels == [48] * len(STAGES)
    for stage, feature_map in enumerate(maps):
        # A hole in the grid would be a zero token, which the final LayerNorm (weight 1, bias 0) keeps at zero.
        assert (feature_map.abs().sum(dim=1) > 0).all(), f"stage {stage} has patches with no token"
        assert torch.isfinite(feature_map).all()


@pytest.mark.parametrize("name", sorted(KEEP_ALL_PLANS))
def test_keep_all_backbone_equals_stock_vit_hidden_states(name, stock_model, pixels):
    config = tiny_config(token_reduction=KEEP_ALL_PLANS[name], restore_tokens=True, out_indices=STAGES)
    backbone = with_stock_weights(TokenPruneViTBackbone(config), stock_model)
    stock = ViTModel(stock_model.config, add_pooling_layer=False).eval()
    stock.load_state_dict(stock_model.vit.state_dict())
    with torch.no_grad():
        maps = backbone(pixels).feature_maps
        hidden = stock(pixels, output_hidden_states=True).hidden_states
    for stage, feature_map in zip(STAGES, maps):
        expected = stock.layernorm(hidden[stage])[:, 1:].transpose(1, 2).reshape(3, 48, 8, 8)
        torch.testing.assert_close(feature_map, expected, atol=1e-5, rtol=0)


def test_merged_tokens_are_copied_to_every_patch_they_stand_for(pixels):
    torch.manual_seed(0)
    config = tiny_config(token_reduction={"method": "tome", "r": 12}, restore_tokens=True, out_indices=[4])
    with torch.no_grad():
        feature_map = TokenPruneViTBackbone(config).eval()(pixels).feature_maps[0]
    tokens = feature_map.flatten(2).transpose(1, 2)  # (B, 64, C)
    distinct = [torch.unique(tokens[b], dim=0).shape[0] for b in range(3)]
    assert distinct == [64 - 4 * 12 + 1 - 1] * 3  # 64 patches merged by 12 per layer: 16 tokens hold them all


def test_backbone_plugs_into_upernet_through_backbone_config(pixels):
    torch.manual_seed(0)
    backbone_config = tiny_config(
        token_reduction=REDUCING_PLANS["evit"], restore_tokens=True, out_features=["stage1", "stage2", "stage4"]
    )
    config = UperNetConfig(backbone_config=backbone_config, num_labels=4, hidden_size=16, auxiliary_in_channels=48)
    model = UperNetForSemanticSegmentation(config)
    assert type(model.backbone) is TokenPruneViTBackbone
    labels = torch.randint(0, 4, (3, 32, 32))
    out = model(pixels, labels=labels)
    assert out.logits.shape == (3, 4, 32, 32) and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.backbone.vit.embeddings.patch_embeddings.projection.weight.grad is not None


def test_stock_checkpoint_loads_into_backbone_and_segmentation_model(tmp_path, stock_model):
    stock_model.save_pretrained(tmp_path)
    plan = {"token_reduction": REDUCING_PLANS["evit"], "restore_tokens": True}
    backbone, info = TokenPruneViTBackbone.from_pretrained(tmp_path, **plan, output_loading_info=True)
    assert not info["missing_keys"] and set(info["unexpected_keys"]) == {"classifier.weight", "classifier.bias"}
    model, info = TokenPruneViTForSemanticSegmentation.from_pretrained(tmp_path, **plan, output_loading_info=True)
    assert set(info["missing_keys"]) == {"segmentation_head.weight", "segmentation_head.bias"}


def test_auto_backbone_reads_a_tokenprune_classifier_folder(tmp_path, stock_model, pixels):
    classifier = pruned_model(stock_model, token_reduction=REDUCING_PLANS["skipvit"])
    classifier.save_pretrained(tmp_path)
    # AutoBackbone.from_pretrained treats every name as a Hub repo in transformers 5.24 (a local folder fails, for
    # DINOv2 too), so a folder goes through its config; from_config builds our backbone from it.
    config = AutoConfig.from_pretrained(str(tmp_path), out_indices=[2, 4], restore_tokens=True)
    assert type(AutoBackbone.from_config(config)) is TokenPruneViTBackbone
    backbone, info = TokenPruneViTBackbone.from_pretrained(
        tmp_path, out_indices=[2, 4], restore_tokens=True, output_loading_info=True
    )
    assert not info["missing_keys"] and backbone.out_features == ["stage2", "stage4"]
    with torch.no_grad():
        assert [tuple(m.shape) for m in backbone.eval()(pixels).feature_maps] == [(3, 48, 8, 8)] * 2


@pytest.mark.parametrize("name", ["none", "cropr", "tome", "skipat"])
def test_segmentation_model_save_load_round_trip(tmp_path, pixels, name):
    plan = dense_plan(PLANS.get(name, {}))
    torch.manual_seed(0)
    model = TokenPruneViTForSemanticSegmentation(tiny_config(**plan, restore_tokens=True)).eval()
    model.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForSemanticSegmentation"].endswith("dense.TokenPruneViTForSemanticSegmentation")
    assert auto_map["AutoBackbone"].endswith("dense.TokenPruneViTBackbone")
    loaded = TokenPruneViTForSemanticSegmentation.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits, model(pixels).logits, atol=0, rtol=0)


@pytest.mark.parametrize("name", sorted(PLANS))
def test_every_learned_parameter_gets_a_gradient(name, pixels, one_thread):
    torch.manual_seed(0)
    model = TokenPruneViTForSemanticSegmentation(tiny_config(**dense_plan(PLANS[name]), restore_tokens=True))
    labels = torch.randint(0, 5, (3, 32, 32))
    out = model.train()(pixels, labels=labels)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, missing
    assert out.logits.shape == (3, 5, 32, 32)


def test_cropr_per_query_head_trains_on_patch_labels(pixels):
    plan = {"method": "cropr", "tokens_per_layer": 8, "aux_head": "per_query"}
    model = TokenPruneViTForSemanticSegmentation(tiny_config(token_reduction=plan, restore_tokens=True)).train()
    assert model.config.token_reduction["num_queries"] == 64  # one query per patch, as the official code
    out = model(pixels, labels=torch.randint(0, 5, (3, 32, 32)))
    assert out.aux_loss is not None and out.aux_loss > 0 and out.loss > out.aux_loss


class SegmentationSet(torch.utils.data.Dataset):
    def __init__(self, images, masks):
        self.images, self.masks = images, masks

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        pixels = torch.from_numpy(self.images[index])[None].expand(3, -1, -1) * 2 - 1
        return {"pixel_values": pixels, "labels": torch.from_numpy(self.masks[index]).long()}


def test_stock_trainer_trains_the_segmentation_model(tmp_path, one_thread):
    arrays = digit_segmentation_arrays(canvas_size=32, digits_per_image=1, validation_fraction=0.5)
    images, masks = arrays["validation"]
    data = SegmentationSet(images[:32], masks[:32])
    plan = {"method": "cropr", "tokens_per_layer": 8, "aux_head": "per_query"}
    torch.manual_seed(0)
    model = TokenPruneViTForSemanticSegmentation(tiny_config(token_reduction=plan, restore_tokens=True, num_labels=11))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, learning_rate=1e-3,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=1,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=data)
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged, unchanged


def test_labels_of_the_wrong_shape_are_refused(pixels):
    model = TokenPruneViTForSemanticSegmentation(tiny_config())
    with pytest.raises(ValueError, match=r"labels must be an integer \(batch, height, width\)"):
        model(pixels, labels=torch.zeros(3, 16, 16, dtype=torch.long))


def test_out_indices_outside_the_model_are_refused():
    with pytest.raises(ValueError, match="out_indices must be valid indices for stage_names"):
        tiny_config(out_indices=[1, 9])


@pytest.mark.parametrize("cls", [TokenPruneViTBackbone, TokenPruneViTForSemanticSegmentation])
def test_a_dense_class_turns_on_restore_tokens_itself(cls, pixels):
    config = tiny_config(token_reduction=REDUCING_PLANS["evit"])  # restore_tokens not set
    model = cls(config).eval()
    assert model.config.restore_tokens  # the full grid needs every removed token
    with torch.no_grad():
        outputs = model(pixels)
    maps = outputs.feature_maps if cls is TokenPruneViTBackbone else (outputs.logits,)
    assert all(torch.isfinite(m).all() for m in maps)


def test_the_backbone_honours_the_configs_output_flags_as_dinov2s_does(pixels):
    config = tiny_config(token_reduction=REDUCING_PLANS["tome"], output_hidden_states=True, output_attentions=True)
    model = TokenPruneViTBackbone(config).eval()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        outputs = model(pixels)
        quiet = model(pixels, output_hidden_states=False, output_attentions=False)
    assert len(outputs.hidden_states) == TINY["num_hidden_layers"] + 1
    assert len(outputs.attentions) == TINY["num_hidden_layers"]
    assert quiet.hidden_states is None and not quiet.attentions
    assert len(quiet.feature_maps) == len(outputs.feature_maps)


def test_a_pooled_auxiliary_head_is_refused_by_the_dense_model(pixels):
    model = TokenPruneViTForSemanticSegmentation(
        tiny_config(token_reduction=REDUCING_PLANS["cropr"], restore_tokens=True)
    ).train()
    with pytest.raises(ValueError, match="aux_head='per_query'"):
        model(pixels, labels=torch.zeros(3, 32, 32, dtype=torch.long))


CLEAN_PROCESS = textwrap.dedent(
    """
    import json, sys, torch
    sys.modules["hf_tokenprune"] = None  # the package must not be importable
    from transformers import AutoBackbone, AutoConfig, AutoModelForSemanticSegmentation, pipeline
    from PIL import Image

    folder = sys.argv[1]
    pixels, expected = torch.load(folder + "/check.pt")
    model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True, out_indices=[1, 4])
    backbone_class = type(AutoBackbone.from_config(config, trust_remote_code=True))
    backbone = backbone_class.from_pretrained(folder, out_indices=[1, 4]).eval()
    with torch.no_grad():
        diff = (model(pixels).logits - expected).abs().max().item()
        shapes = [list(m.shape) for m in backbone(pixels).feature_maps]
    segment = pipeline("image-segmentation", model=folder, trust_remote_code=True)
    results = segment(Image.new("RGB", (40, 40), (120, 30, 200)))
    print(json.dumps({
        "diff": diff, "module": type(model).__module__, "shapes": shapes, "backbone": backbone_class.__module__,
        "labels": sorted(r["label"] for r in results), "mask_size": list(results[0]["mask"].size),
    }))
    """
)


@pytest.mark.slow
def test_remote_code_segmentation_and_backbone_in_a_clean_process(tmp_path, pixels):
    folder = tmp_path / "model"
    torch.manual_seed(0)
    config = tiny_config(token_reduction=REDUCING_PLANS["tome"], restore_tokens=True)
    config.id2label = {i: f"class-{i}" for i in range(5)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    model = TokenPruneViTForSemanticSegmentation(config).eval()
    model.save_pretrained(folder)
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    with torch.no_grad():
        torch.save((pixels, model(pixels).logits), folder / "check.pt")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, "-c", CLEAN_PROCESS, str(folder)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["diff"] == 0.0 and "transformers_modules" in report["module"]
    assert "transformers_modules" in report["backbone"]
    assert report["shapes"] == [[3, TINY["hidden_size"], 8, 8]] * 2
    assert set(report["labels"]) <= {f"class-{i}" for i in range(5)} and report["labels"]
    assert report["mask_size"] == [40, 40]
