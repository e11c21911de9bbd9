"""Export of the other families' classifiers (DeiT with teacher, DINOv2 with and without registers): the exported
model gives the PyTorch logits at batch 1 and 2 (fp32, atol 1e-4); the families without logits get a one-line error.

Exports are slow (five to ten seconds each here): one method and one format per family, marked slow; the refusals
run by default.
"""

import pytest
import torch
from conftest import REDUCING_PLANS
from families import FAMILIES, PIXELS, ours, stock_models

from hf_tokenprune.cli import main
from hf_tokenprune.export import export_model, run_exported

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.usefixtures("one_thread")

EXPORTED = [("deit", "evit", "onnx"), ("dinov2", "tome", "torch-export"), ("dinov2-registers", "tome", "onnx")]


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    return stock_models(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "method", "fmt"), EXPORTED)
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


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_families_without_logits_are_refused_in_one_line(stock, tmp_path, capsys, name):
    model = ours(name, stock(name)[0], token_reduction=REDUCING_PLANS["tome"])
    with pytest.raises(ValueError, match=f"{type(model).__name__} .* cannot export: the classes that do are") as error:
        export_model(model, tmp_path / "model.onnx")
    assert "\n" not in str(error.value)
    model.save_pretrained(tmp_path / name)
    assert main(["export", str(tmp_path / name)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # before it: save_pretrained's progress bar
    assert last.startswith("error: export needs a classifier") and "TokenPruneDinov2ForImageClassification" in last
    assert not (tmp_path / name / "model.onnx").exists()


def test_a_base_model_without_a_classifier_is_refused(tmp_path, capsys):
    spec = FAMILIES["dinov2"]
    spec.base(spec.config(**spec.settings())).save_pretrained(tmp_path)
    assert main(["export", str(tmp_path), "--format", "torch-export"]) == 2
    assert "TokenPruneDinov2Model ('tokenprune_dinov2') cannot export" in capsys.readouterr().err
