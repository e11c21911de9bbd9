"""Export of the other families: the classifiers (DeiT with teacher, DINOv2 with and without registers) give the
PyTorch logits, CLIP's vision tower with projection its image embeddings and SigLIP's vision tower its pooled output,
at batch 1 and 2 (fp32, atol 1e-4); the classes without such an output get a one-line error.

Exports are slow (five to twenty seconds each here): the classifiers run one method and one format each, the two
towers ToMe in both formats and one pruning method (`TOWER_CASES`), all marked slow; the refusals run by default.
"""

from dataclasses import replace

import pytest
import torch
from conftest import REDUCING_PLANS
from families import FAMILIES, PIXELS, fits, ours, stock_models
from transformers import CLIPModel, CLIPVisionModelWithProjection

from hf_tokenprune import TokenPruneCLIPModel, TokenPruneCLIPVisionModelWithProjection
from hf_tokenprune.commands.main import main
from hf_tokenprune.families import FAMILIES as FAMILY_TABLE
from hf_tokenprune.sharing.export import export_model, run_exported

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.usefixtures("one_thread")

CLASSIFIER_CASES = [("deit", "evit", "onnx"), ("dinov2", "tome", "torch-export"), ("dinov2-registers", "tome", "onnx")]
# The towers as they export: CLIP's with its projection (image embeddings), SigLIP's with its pooling head.
TOWERS = {
    "clip": replace(
        FAMILIES["clip"],
        stock_model=CLIPVisionModelWithProjection,
        model=TokenPruneCLIPVisionModelWithProjection,
        output="image_embeds",
    ),
    "siglip": replace(
        FAMILIES["siglip"], overrides={**FAMILIES["siglip"].overrides, "vision_use_head": True}, output="pooler_output"
    ),
}


# (family, method, format): ToMe in both formats (merging and its attention bias), and one pruning method each: EViT
# on CLIP (it ranks by the CLS attention row), Cropr on SigLIP (no CLS token). Every method's export is checked on
# ViT (test_export.py); here what is the tower's own: its output and its prefix tokens.
TOWER_CASES = [
    ("clip", "tome", "onnx"), ("clip", "tome", "torch-export"), ("clip", "evit", "onnx"),
    ("siglip", "tome", "onnx"), ("siglip", "tome", "torch-export"), ("siglip", "cropr", "onnx"),
]  # fmt: skip


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    return stock_models(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "method", "fmt"), CLASSIFIER_CASES)
def test_exported_family_classifier_gives_the_pytorch_logits_at_batch_1_and_2(stock, tmp_path, name, method, fmt):
    model = ours(name, stock(name)[0], token_reduction=REDUCING_PLANS[method])
    report = export_model(model, tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt2'}", fmt=fmt, batch_size=2)
    assert report.dynamic_batch and sorted(report.max_abs_diff) == [1, 2]
    for batch in (PIXELS[:1], PIXELS):
        with torch.no_grad():
            expected = model(batch).logits
        assert model(batch).token_counts[-1][1] < model(batch, disable_plans=True).token_counts[-1][1]
        torch.testing.assert_close(run_exported(report.path, fmt, batch), expected, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_cli_exports_a_stock_dinov2_folder_as_ours(stock, tmp_path, capsys):
    _, folder = stock("dinov2")  # a stock Dinov2ForImageClassification checkpoint: loads into ours, no plan
    output = tmp_path / "dinov2.pt2"
    assert main(["export", str(folder), "--format", "torch-export", "--batch-size", "2", "--output", str(output)]) == 0
    assert f"wrote {output} (torch-export, 32x32, dynamic batch)" in capsys.readouterr().out
    with torch.no_grad():
        expected = stock("dinov2")[0](PIXELS).logits
    torch.testing.assert_close(run_exported(output, "torch-export", PIXELS), expected, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    return stock_models(tmp_path_factory, TOWERS)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "method", "fmt"), TOWER_CASES)
def test_exported_tower_gives_the_pytorch_embeddings_at_batch_1_and_2(towers, tmp_path, name, method, fmt):
    output = TOWERS[name].output
    model = ours(name, towers(name)[0], TOWERS, token_reduction=REDUCING_PLANS[method])
    report = export_model(model, tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt2'}", fmt=fmt, batch_size=2)
    assert report.output == output and sorted(report.max_abs_diff) == [1, 2]
    assert f"max |{output} - PyTorch| batch 1:" in report.summary()
    for batch in (PIXELS[:1], PIXELS):
        with torch.no_grad():
            outputs = model(batch)
        full = model(batch, disable_plans=True).token_counts
        assert sum(mlp for _, mlp in outputs.token_counts) < sum(mlp for _, mlp in full)  # the plan reduces
        torch.testing.assert_close(run_exported(report.path, fmt, batch), getattr(outputs, output), atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TOWERS))
def test_cli_exports_a_stock_tower_folder_as_ours(towers, tmp_path, capsys, name):
    stock_model, folder = towers(name)  # a stock CLIPVisionModelWithProjection / SiglipVisionModel checkpoint
    output = tmp_path / f"{name}.pt2"
    assert main(["export", str(folder), "--format", "torch-export", "--batch-size", "2", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {output} (torch-export, 32x32, dynamic batch); max |{TOWERS[name].output} - PyTorch|" in printed
    with torch.no_grad():
        expected = getattr(stock_model(PIXELS), TOWERS[name].output)
    torch.testing.assert_close(run_exported(output, "torch-export", PIXELS), expected, atol=1e-4, rtol=0)


def test_the_tower_cases_are_methods_their_tower_runs():
    assert all(fits(name, REDUCING_PLANS[method]) for name, method, _ in TOWER_CASES)


def test_every_exported_class_is_public_and_of_its_model_type():
    import hf_tokenprune

    for row in FAMILY_TABLE.values():
        if row.can("export"):
            assert getattr(hf_tokenprune, row.model).config_class.model_type == row.model_type


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_towers_without_their_output_head_are_refused_in_one_line(stock, tmp_path, capsys, name):
    model = ours(name, stock(name)[0], token_reduction=REDUCING_PLANS["tome"])  # no projection / no pooling head
    reason = "cannot export: the classes that do are" if name == "clip" else "no pooler_output to export: its config"
    with pytest.raises(ValueError, match=reason) as error:
        export_model(model, tmp_path / "model.onnx")
    assert type(model).__name__ in str(error.value) and "\n" not in str(error.value)
    model.save_pretrained(tmp_path / name)
    assert main(["export", str(tmp_path / name)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # before it: save_pretrained's progress bar
    assert last.startswith("error: ") and reason in last
    assert not (tmp_path / name / "model.onnx").exists()


def test_the_full_clip_model_is_refused(tmp_path, capsys):
    from families import tiny_clip

    CLIPModel(tiny_clip()).save_pretrained(tmp_path)
    model = TokenPruneCLIPModel.from_pretrained(tmp_path, token_reduction=REDUCING_PLANS["tome"])
    with pytest.raises(ValueError, match=r"CLIP models have no export .*: export its vision tower"):
        export_model(model, tmp_path / "model.onnx")
    assert main(["export", str(tmp_path), "--format", "torch-export"]) == 2
    assert "TokenPruneCLIPModel ('tokenprune_clip_vision_model') cannot export" in capsys.readouterr().err


def test_a_base_model_without_a_classifier_is_refused(tmp_path, capsys):
    spec = FAMILIES["dinov2"]
    spec.base(spec.config(**spec.settings())).save_pretrained(tmp_path)
    assert main(["export", str(tmp_path), "--format", "torch-export"]) == 2
    assert "TokenPruneDinov2Model ('tokenprune_dinov2') cannot export" in capsys.readouterr().err
