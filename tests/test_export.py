"""ONNX and torch.export: every method and attention reuse exports at a fixed resolution with a dynamic batch, and
the exported model gives the PyTorch logits at batch 1 and batch 4 (fp32, atol 1e-4).

Each case is exported once per module (ONNX takes ten to twenty seconds on this machine); ToMe, which both sorts
and merges, runs by default, the others are marked slow.
"""

import pytest
import torch
from conftest import REDUCING_PLANS, pruned_model

from hf_tokenprune.commands.main import main
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
FORMATS = ("onnx", "torch-export")


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


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", PARAMS)
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


def test_the_audit_catches_both_traps():
    batch = ({0: torch.export.Dim("batch")},)  # as the models export: with a dynamic batch
    exported = torch.onnx.export(
        _Traps().eval(), (torch.randn(4, 10),), dynamo=True, dynamic_shapes=batch, verbose=False
    )
    problems = audit_onnx_graph(exported.model_proto, exported.exported_program)
    assert any("TopK" in p and "run-time" in p for p in problems)
    assert any("reduction='none'" in p for p in problems)


def test_cli_exports_a_checkpoint_folder(stock_model, tmp_path, capsys):
    pruned_model(stock_model, **CASES["evit"]).save_pretrained(tmp_path / "ckpt")
    output = tmp_path / "evit.pt2"
    code = main(
        ["export", str(tmp_path / "ckpt"), "--format", "torch-export", "--batch-size", "3", "--output", str(output)]
    )
    assert code == 0 and output.is_file()
    printed = capsys.readouterr().out
    assert "dynamic batch" in printed and "batch 1:" in printed and "batch 3:" in printed


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


def test_a_keep_rate_is_baked_into_the_graph(stock_model, pixels, tmp_path):
    model = pruned_model(stock_model, **CASES["evit"])
    report = export_model(model, tmp_path / "evit.pt2", fmt="torch-export", keep_rate=0.3)
    with torch.no_grad():
        expected = LogitsOnly(model, keep_rate=0.3)(pixels)
    torch.testing.assert_close(run_exported(report.path, "torch-export", pixels), expected, atol=1e-4, rtol=0)
