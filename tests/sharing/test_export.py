"""ONNX and torch.export: every method and attention reuse exports at a fixed resolution with a dynamic batch, and
the exported model gives the PyTorch output at batch 1 and batch 2 or 4 (fp32, atol 1e-4), for ViT and for each
family that exports (its row's class and output); the classes that cannot export are refused in one line.

Each case is exported once per module (ONNX takes ten to twenty seconds on this machine); the exports are marked
slow, the refusals and the graph audit run in the fast loop."""

import warnings

import pytest
import torch
from conftest import REDUCING_PLANS, pruned_model
from family_matrix import FAMILIES, PIXELS, Family, fits, ours, stock_models
from transformers import CLIPModel

from hf_tokenprune import TokenPruneCLIPModel
from hf_tokenprune.commands.main import main
from hf_tokenprune.families import FAMILIES as FAMILY_TABLE
from hf_tokenprune.sharing.export import LogitsOnly, audit_onnx_graph, export_model, run_exported

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

CASES = {name: {"token_reduction": plan} for name, plan in REDUCING_PLANS.items()}
CASES["skipat"] = {"attention_reuse": {"method": "skipat", "layers": [1, 2]}}
CASES["skipat+tome"] = {
    "attention_reuse": {"method": "skipat", "layers": [1]},
    "token_reduction": {"method": "tome", "r": [0, 0, 8, 8]},
}
FAST = ("tome",)  # it ranks and merges: the sort and the scatter traps
PARAMS = [pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in sorted(CASES)]
# ONNX (the format users deploy) for every case. The ONNX exporter traces through torch.export, so a case that exports
# to ONNX has a torch.export graph; the .pt2 format's own path (save, load, dynamic batch) runs for ToMe (merging) and
# DynamicViT (top-k and gather).
FORMAT_CASES = [(name, "onnx") for name in sorted(CASES)] + [(name, "torch-export") for name in ("dynamicvit", "tome")]


@pytest.fixture(scope="module")
def exports(stock_model, tmp_path_factory):
    """Exports each (case, format) on first use; later tests reuse the file."""
    folder, cache = tmp_path_factory.mktemp("exports"), {}

    def get(name, fmt):
        if (name, fmt) not in cache:
            model = pruned_model(stock_model, **CASES[name])
            path = folder / f"{name}.{'onnx' if fmt == 'onnx' else 'pt2'}"
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                report = export_model(model, path, fmt=fmt, batch_size=4, atol=None)  # the tests compare
            finally:
                torch.set_num_threads(threads)
            cache[name, fmt] = model, report
        return cache[name, fmt]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(("name", "fmt"), FORMAT_CASES)
def test_exported_model_gives_the_pytorch_logits_at_batch_1_and_4(exports, pixels, name, fmt):
    model, report = exports(name, fmt)
    assert report.dynamic_batch and report.image_size == (32, 32)
    batch4 = torch.cat([pixels, pixels[:1].flip(-1)])
    for batch in (pixels[:1], batch4):
        with torch.no_grad():
            expected = model(batch).logits
        torch.testing.assert_close(run_exported(report.path, fmt, batch), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", PARAMS)
def test_onnx_graph_has_constant_topk_and_keeps_every_reduction(exports, name):
    _, onnx_report = exports(name, "onnx")
    _, program_report = exports(name, "torch-export")
    graph = onnx.load(onnx_report.path)
    assert audit_onnx_graph(graph, torch.export.load(program_report.path)) == []
    if "tome" in name:  # the merge sums really are reducing scatters in the ONNX graph
        reductions = [
            attribute.s
            for node in graph.graph.node
            if node.op_type in ("ScatterElements", "ScatterND")
            for attribute in node.attribute
            if attribute.name == "reduction"
        ]
        assert b"add" in reductions  # (the others are plain writes: -inf into the prefix rows of the scores)


class _Traps(torch.nn.Module):
    """What the models avoid: a sort (TopK with a run-time k) and a mean scatter_reduce (exported as 'none')."""

    def forward(self, x):
        groups = x.argsort(dim=1, descending=True) % 3
        return x.new_zeros(x.shape[0], 3).scatter_reduce(1, groups, x, reduce="mean", include_self=False)


TIED = dict(image_size=112, patch_size=16, hidden_size=32, num_hidden_layers=6, num_attention_heads=2,
             intermediate_size=64, num_labels=5)  # fmt: skip


def tied_dynamicvit(spread: float):
    """DynamicViT whose predictors give every token the same score (``spread`` 0: exact ties, as an untrained
    predictor nearly does) or scores ``spread`` apart."""
    from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForImageClassification

    torch.manual_seed(0)
    config = TokenPruneViTConfig(**TIED, token_reduction={"method": "dynamicvit", "layers": [1, 3], "keep_rate": 0.6})
    model = TokenPruneViTForImageClassification(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("predictor.classify.4.weight"):
                parameter.mul_(spread)
    return model


def test_equal_scores_keep_the_same_tokens_in_pytorch_and_onnxruntime(tmp_path):
    # Before ties went in position order, PyTorch's top-k kept other tokens than ONNX's TopK: 2.2e-2 apart.
    from hf_tokenprune.models.token_reduction import descending_order

    assert descending_order(torch.zeros(2, 9)).tolist() == [list(range(9))] * 2
    report = export_model(tied_dynamicvit(0.0), tmp_path / "tied.onnx", batch_size=2)
    assert max(report.max_abs_diff.values()) < 1e-5


def test_a_selection_decided_by_rounding_is_named_when_an_export_differs():
    from hf_tokenprune.sharing.export import _output_only_class, _tie_diagnosis

    pixels = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    near_ties = _output_only_class()(tied_dynamicvit(1e-7))
    assert "the selection is decided by rounding" in _tie_diagnosis(near_ties, pixels, 1e-4)
    assert _tie_diagnosis(_output_only_class()(tied_dynamicvit(1e3)), pixels, 1e-4) == ""


def test_the_audit_catches_both_traps():
    batch = ({0: torch.export.Dim("batch")},)  # as the models export: with a dynamic batch
    exported = torch.onnx.export(
        _Traps().eval(), (torch.randn(4, 10),), dynamo=True, dynamic_shapes=batch, verbose=False
    )
    problems = audit_onnx_graph(exported.model_proto, exported.exported_program)
    assert any("TopK" in p and "run-time" in p for p in problems)
    assert any("reduction='none'" in p for p in problems)


@pytest.mark.slow
@pytest.mark.parametrize("fmt, suffix", [("onnx", "onnx")])  # the .pt2 path: test_exported_model_gives_...
def test_cli_exports_a_checkpoint_folder_and_prints_only_its_own_lines(stock_model, tmp_path, capfd, fmt, suffix):
    pruned_model(stock_model, **CASES["evit"]).save_pretrained(tmp_path / "ckpt")
    output = tmp_path / f"evit.{suffix}"
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["export", str(tmp_path / "ckpt"), "--format", fmt, "--batch-size", "3", "--output", str(output)])
    assert code == 0 and output.is_file()
    printed = capfd.readouterr()
    assert "dynamic batch" in printed.out and "batch 1:" in printed.out and "batch 3:" in printed.out
    assert "torchvision" not in printed.out + printed.err and "Loading weights" not in printed.out + printed.err
    assert not [w for w in caught if "LeafSpec" in str(w.message)]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"image_size": 30}, "--image-size 30x30 cannot export: it must be a positive multiple of the patch size"),
        ({"batch_size": 0}, "--batch-size 0 must be a positive integer"),
        ({"fmt": "tflite"}, "--format 'tflite' is not supported"),
        ({"keep_rate": 1.5}, "keep_rate = 1.5 is outside the allowed range"),
    ],
)
def test_a_request_that_cannot_export_gets_a_clear_error(stock_model, tmp_path, options, message):
    model = pruned_model(stock_model, **CASES["evit"])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        export_model(model, tmp_path / "out.onnx", **options)
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.slow
def test_a_keep_rate_is_baked_into_the_graph(stock_model, pixels, tmp_path):
    model = pruned_model(stock_model, **CASES["evit"])
    report = export_model(model, tmp_path / "evit.pt2", fmt="torch-export", keep_rate=0.3)
    with torch.no_grad():
        expected = LogitsOnly(model, keep_rate=0.3)(pixels)
    torch.testing.assert_close(run_exported(report.path, "torch-export", pixels), expected, atol=1e-4, rtol=0)


pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.usefixtures("one_thread")

CLASSIFIER_CASES = [("deit", "evit", "onnx"), ("dinov2-registers", "tome", "onnx")]
# The towers, as they export (their rows' model and output): CLIP's with its projection (image embeddings), SigLIP's
# with its pooling head (pooled output).
TOWERS = {
    "clip": Family(FAMILIES["clip"].row, FAMILIES["clip"].overrides),
    "siglip": Family(FAMILIES["siglip"].row, {**FAMILIES["siglip"].overrides, "vision_use_head": True}),
}


# (family, method, format): ToMe (merging and its attention bias) in ONNX on both and as .pt2 on CLIP, and one pruning
# method each: EViT on CLIP (it ranks by the CLS attention row), Cropr on SigLIP (no CLS token). Every method's export
# is checked on ViT (above); here what is the tower's own: its output and its prefix tokens.
# Each tower's output head through ONNX with ToMe (a merge and a sort); the other methods export on ViT, and the
# .pt2 format is checked with ViT's ToMe and DynamicViT (a tower adds nothing to either).
TOWER_CASES = [("clip", "tome", "onnx"), ("siglip", "tome", "onnx")]


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
    from family_matrix import tiny_clip

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
