"""Export a model for deployment: ONNX (onnxruntime, TensorRT) or a ``torch.export`` program.

Every plan keeps a number of tokens per layer that depends only on the plan and the image size, so a model exports
as one static graph per resolution, with a dynamic batch dimension. The exported function is ``pixel_values
(B, C, H, W) -> one output`` and is checked against the PyTorch model after export; What exports, per family:
the logits of the classifiers (ViT, DeiT with teacher, DINOv2 with or without
registers), the image embeddings of CLIP's vision tower with projection, the pooled output of SigLIP's. Which
class and output export is each family's row of the family table (``model``, ``output``); a family that cannot
export says why there (``gaps``).

ONNX graphs are also audited for two silent traps: a reducing scatter (``scatter_add``, ``scatter_reduce``) that
the exporter turned into a plain overwrite (``scatter_reduce(reduce="mean")`` is emitted with ``reduction='none'``),
and a TopK whose k is computed at run time (what a sort becomes; TensorRT refuses it). The models avoid both
(``topk`` with a constant k; sums divided by counts), and the audit keeps it that way.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._lazy import LazyModule
from ..families import FAMILIES, Family, family_for_checkpoint, family_of

# torch is imported on first use, so listing the CLI's subcommands stays fast.
torch = LazyModule("torch")
nn = LazyModule("torch.nn")

__all__ = [  # noqa: F822 (OutputOnly, LogitsOnly: module __getattr__)
    "FORMATS",
    "SUFFIXES",
    "ExportReport",
    "LogitsOnly",
    "OutputOnly",
    "audit_onnx_graph",
    "exported_class",
    "export_model",
    "run_exported",
]

FORMATS = ("onnx", "torch-export")
SUFFIXES = {"onnx": ".onnx", "torch-export": ".pt2"}
# Ops whose meaning is "combine into the destination"; ONNX must keep a reduction for each of them.
REDUCING_SCATTERS = ("scatter_add", "scatter_reduce", "index_add", "index_reduce")


@dataclass
class ExportReport:
    """What was written and how closely it reproduces the PyTorch model."""

    path: str
    format: str
    image_size: tuple[int, int]
    dynamic_batch: bool
    max_abs_diff: dict[int, float] = field(default_factory=dict)  # batch -> max |exported - PyTorch| of the output
    output: str = "logits"  # the model output that was exported

    def summary(self) -> str:
        batch = "dynamic batch" if self.dynamic_batch else "fixed batch"
        checks = ", ".join(f"batch {b}: {d:.1e}" for b, d in sorted(self.max_abs_diff.items()))
        size = f"{self.image_size[0]}x{self.image_size[1]}"
        difference = f"max |{self.output} - PyTorch| {checks or 'not checked'}"
        return f"wrote {self.path} ({self.format}, {size}, {batch}); {difference}"


@functools.cache
def _output_only_class() -> type:
    """`OutputOnly`, defined on first use (it subclasses ``torch.nn.Module``)."""

    class OutputOnly(nn.Module):
        """A model as a deployable function: pixel values (B, C, H, W) -> one of its outputs (by default the
        logits; ``LogitsOnly`` is the same class)."""

        def __init__(
            self, model: nn.Module, keep_rate: float | None = None, interpolate: bool = False, output: str = "logits"
        ):
            super().__init__()
            self.model, self.output = model, output
            self.kwargs = {} if keep_rate is None else {"keep_rate": keep_rate}
            if interpolate and "interpolate_pos_encoding" in inspect.signature(model.forward).parameters:
                self.kwargs["interpolate_pos_encoding"] = True  # DINOv2 always interpolates: it has no such flag

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return getattr(self.model(pixel_values, **self.kwargs), self.output)

    return OutputOnly


def __getattr__(name: str) -> Any:
    if name in ("OutputOnly", "LogitsOnly"):
        return _output_only_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _pair(value: Any) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def check_export_request(
    model: nn.Module, fmt: str, batch_size: int, image_size: Any, keep_rate: Any
) -> tuple[int, int]:
    """One-line errors for a request that cannot export, before any slow work. Returns the (height, width)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is not supported; allowed: {list(FORMATS)}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size {batch_size!r} must be a positive integer.")
    config = model.config
    row = check_exportable(getattr(config, "model_type", None), type(model).__name__)
    if row.output_needs is not None and not getattr(config, row.output_needs):
        raise ValueError(
            f"{type(model).__name__} has no {row.output} to export: its config sets {row.output_needs}=False."
        )
    height, width = _pair(config.image_size if image_size is None else image_size)
    patch = _pair(config.patch_size)
    if height % patch[0] or width % patch[1] or height < patch[0] or width < patch[1]:
        raise ValueError(
            f"--image-size {height}x{width} cannot export: it must be a positive multiple of the patch size "
            f"{patch[0]}x{patch[1]} (the token counts of every layer are fixed by the resolution)."
        )
    from ..models.modeling_tokenprune_common import plan_in_force

    plan_in_force(config, model.base_model.built_plans, keep_rate)  # a keep rate the plan has no use for, or bad
    if fmt == "onnx":
        _require("onnx", "onnxscript")
    return height, width


def check_exportable(model_type: str | None, class_name: str) -> Family:
    """The family row of a model that exports (its class is the row's ``model``); refuses any other class in one
    line that names the classes that do."""
    row = family_of(model_type, "export")
    if class_name != row.model:
        names = ", ".join(f"{r.model} ({r.output})" for r in FAMILIES.values() if r.can("export"))
        raise ValueError(
            f"{class_name} ({model_type!r}) cannot export: the classes that do are {names}; base models without a "
            "head and CLIPVisionModel without its projection do not."
        )
    return row


def exported_class(folder: Path) -> type:
    """The class that exports the checkpoint in ``folder``: its family's ``model`` (ours for a stock checkpoint of a
    family: TokenPruneViTForImageClassification for a stock ViT); refused in one line for a family or class that
    cannot export."""
    import json

    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ValueError(
            f"FOLDER '{folder}' has no readable config.json; give a folder written by save_pretrained."
        ) from None
    model_type = config.get("model_type")
    row = family_for_checkpoint(model_type, "export")
    if model_type not in (None, "vit", row.model_type):  # a stock checkpoint of another class of the family
        name = (config.get("architectures") or ["no architecture"])[0]
        check_exportable(row.model_type, f"TokenPrune{name}")
    elif model_type == row.model_type:
        check_exportable(row.model_type, (config.get("architectures") or [row.model])[0])
    return row.model_class()


def _require(*modules: str) -> None:
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            raise ValueError(
                f"this export needs the {module!r} package: pip install 'hf-tokenprune[export]'."
            ) from None


def audit_onnx_graph(model_proto: Any, exported_program: Any = None) -> list[str]:
    """Problems in an exported ONNX graph that would make it silently wrong or unusable in TensorRT.

    - a TopK whose k is not a constant (a sort exported with its length read from a shape at run time);
    - fewer reducing ScatterElements/ScatterND nodes than reducing scatters in ``exported_program`` (the
      ``torch.export`` program the graph came from): a reduction was emitted as ``reduction='none'``.
    """
    graph = model_proto.graph
    constants = {i.name for i in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    problems = [
        f"TopK node {node.name!r} takes its k from a run-time value ({node.input[1]!r}), not a constant"
        for node in graph.node
        if node.op_type == "TopK" and node.input[1] not in constants
    ]
    if exported_program is not None:
        meant = sum(_is_reducing_scatter(node) for node in exported_program.graph.nodes)
        kept = sum(
            any(a.name == "reduction" and a.s not in (b"", b"none") for a in node.attribute)
            for node in graph.node
            if node.op_type in ("ScatterElements", "ScatterND")
        )
        if kept < meant:
            problems.append(
                f"{meant} reducing scatter(s) in the PyTorch program but {kept} reducing ScatterElements/ScatterND "
                "in ONNX: a reduction was exported as reduction='none' (use scatter_add and divide by counts)"
            )
    return problems


def _is_reducing_scatter(node: Any) -> bool:
    if node.op != "call_function":
        return False
    name = getattr(node.target, "__name__", str(node.target))
    if name.startswith("index_put"):
        return len(node.args) > 3 and bool(node.args[3])  # accumulate=True
    return name.split(".")[0] in REDUCING_SCATTERS


def _example(model: nn.Module, batch: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    dtype = model.dtype
    return torch.randn(batch, *model.config.input_shape(size), generator=generator).to(dtype)


@contextlib.contextmanager
def quiet_exporter():
    """Silences, for the export only, what is not the user's business: torch's ONNX exporter logs "torchvision is
    not installed. Skipping torchvision::..." for each torchvision operator it knows (none is exported here), and
    torch.export warns that its own ``LeafSpec`` is deprecated."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _export(wrapper: nn.Module, example: torch.Tensor, fmt: str, output: Path, dynamic: bool) -> None:
    """Writes ``output``; the ONNX graph's input is ``pixel_values`` and its output the wrapper's output name."""
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic else None
    if fmt == "torch-export":
        program = torch.export.export(wrapper, (example,), dynamic_shapes=dynamic_shapes)
        torch.export.save(program, str(output))
        return
    onnx_program = torch.onnx.export(
        wrapper,
        (example,),
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        input_names=["pixel_values"],
        output_names=[wrapper.output],
        verbose=False,
    )
    problems = audit_onnx_graph(onnx_program.model_proto, getattr(onnx_program, "exported_program", None))
    if problems:
        raise ValueError(f"the ONNX graph cannot be used as exported: {'; '.join(problems)}.")
    onnx_program.save(str(output))


def run_exported(path: str | Path, fmt: str, pixel_values: torch.Tensor) -> torch.Tensor:
    """The output of an exported model: onnxruntime for ONNX, the loaded program for torch.export."""
    if fmt == "torch-export":
        with quiet_exporter():
            return torch.export.load(str(path)).module()(pixel_values)
    _require("onnxruntime")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"pixel_values": pixel_values.cpu().numpy()})
    return torch.from_numpy(output)


def export_model(
    model: nn.Module,
    output: str | Path,
    fmt: str = "onnx",
    batch_size: int = 1,
    image_size: Any = None,
    keep_rate: float | None = None,
    dynamic_batch: bool = True,
    atol: float | None = 1e-4,
) -> ExportReport:
    """Exports ``model`` (its family's ``model`` class: the classifiers, CLIP's vision tower with projection,
    SigLIP's vision tower) and checks its output (logits, image embeddings or pooled output) against PyTorch.

    Args:
        output: the file to write (``.onnx`` or ``.pt2``).
        fmt: ``"onnx"`` (dynamo exporter) or ``"torch-export"``.
        batch_size: the batch the export is checked at (and fixed to, without ``dynamic_batch``); the check also
            runs at batch 1.
        image_size: the fixed input resolution (default: the config's); another multiple of the patch size
            interpolates the position embeddings.
        keep_rate: a runtime keep rate baked into the graph (methods with a keep rate).
        atol: the largest allowed difference of the output from PyTorch; ``None`` skips the check.
    """
    size = check_export_request(model, fmt, batch_size, image_size, keep_rate)
    implementation = model.config._attn_implementation
    if implementation not in ("sdpa", "eager"):  # flex and the flash kernels do not export; the output is the same
        model.set_attn_implementation("sdpa")
    try:
        with quiet_exporter():
            return _export_and_check(model.eval(), output, fmt, batch_size, size, keep_rate, dynamic_batch, atol)
    finally:
        if model.config._attn_implementation != implementation:
            model.set_attn_implementation(implementation)


def _export_and_check(model, output, fmt, batch_size, size, keep_rate, dynamic_batch, atol) -> ExportReport:
    output_name = family_of(model.config.model_type).output
    interpolate = size != _pair(model.config.image_size)
    wrapper = _output_only_class()(model, keep_rate, interpolate, output_name).eval()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    trace_batch = max(batch_size, 2) if dynamic_batch else batch_size  # export specialises a batch of 1
    with torch.no_grad():
        _export(wrapper, _example(model, trace_batch, size), fmt, output, dynamic_batch)
    report = ExportReport(str(output), fmt, size, dynamic_batch, output=output_name)
    if atol is not None:
        for batch in sorted({1, batch_size}) if dynamic_batch else [batch_size]:
            pixels = _example(model, batch, size, seed=batch)
            with torch.no_grad():
                difference = (run_exported(output, fmt, pixels).float() - wrapper(pixels).float()).abs().max().item()
            report.max_abs_diff[batch] = difference
            if not difference <= atol:  # also refuses NaN
                why = _tie_diagnosis(wrapper, pixels, atol)
                raise ValueError(
                    f"the exported {fmt} model differs from PyTorch by {difference:.2e} at batch {batch} "
                    f"(allowed {atol:g}); {output} was written but should not be used{why}."
                )
    return report


def _tie_diagnosis(wrapper: nn.Module, pixels: torch.Tensor, atol: float) -> str:
    """Why an export can differ although every op matches: a selection decided by rounding. When PyTorch's own
    output moves by more than ``atol`` between float32 and float64, tokens' scores tie within rounding (an untrained
    scorer gives nearly equal scores), and another runtime, which rounds differently, keeps other tokens."""
    import copy

    with torch.no_grad():
        exact = copy.deepcopy(wrapper).double()(pixels.double())
        moved = (exact.float() - wrapper(pixels).float()).abs().max().item()
    if not moved > atol:
        return ""
    return (
        f": PyTorch's own output moves by {moved:.2e} between float32 and float64, so the tokens' scores tie within "
        "rounding and the selection is decided by rounding (an untrained or random scorer does this); another "
        "runtime rounds differently and keeps other tokens. Export trained weights, whose scores are apart"
    )
