"""Export a classifier (ViT, DeiT with teacher, DINOv2 with or without registers) for deployment: ONNX
(onnxruntime, TensorRT) or a ``torch.export`` program.

Every plan keeps a number of tokens per layer that depends only on the plan and the image size, so a model exports
as one static graph per resolution, with a dynamic batch dimension. The exported function is
``pixel_values (B, C, H, W) -> logits (B, labels)`` and is checked against the PyTorch model after export.

ONNX graphs are also audited for two silent traps: a reducing scatter (``scatter_add``, ``scatter_reduce``) that
the exporter turned into a plain overwrite (``scatter_reduce(reduce="mean")`` is emitted with ``reduction='none'``),
and a TopK whose k is computed at run time (what a sort becomes; TensorRT refuses it). The models avoid both
(``topk`` with a constant k; sums divided by counts), and the audit keeps it that way.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._lazy import LazyModule

# torch is imported on first use, so listing the CLI's subcommands stays fast.
torch = LazyModule("torch")
nn = LazyModule("torch.nn")

__all__ = ["FORMATS", "ExportReport", "LogitsOnly", "add_cli", "audit_onnx_graph", "export_model", "run_exported"]  # noqa: F822 (LogitsOnly: module __getattr__)

FORMATS = ("onnx", "torch-export")
SUFFIXES = {"onnx": ".onnx", "torch-export": ".pt2"}
# Ops whose meaning is "combine into the destination"; ONNX must keep a reduction for each of them.
REDUCING_SCATTERS = ("scatter_add", "scatter_reduce", "index_add", "index_reduce")
# model_type -> the classifier class that exports (pixel_values -> logits), as (module, class) in hf_tokenprune.models
CLASSIFIERS = {
    "tokenprune_vit": ("modeling_tokenprune_vit", "TokenPruneViTForImageClassification"),
    "tokenprune_deit": ("modeling_tokenprune_deit", "TokenPruneDeiTForImageClassificationWithTeacher"),
    "tokenprune_dinov2": ("modeling_tokenprune_dinov2", "TokenPruneDinov2ForImageClassification"),
    "tokenprune_dinov2_with_registers": (
        "modeling_tokenprune_dinov2",
        "TokenPruneDinov2WithRegistersForImageClassification",
    ),
}


@dataclass
class ExportReport:
    """What was written and how closely it reproduces the PyTorch model."""

    path: str
    format: str
    image_size: tuple[int, int]
    dynamic_batch: bool
    max_abs_diff: dict[int, float] = field(default_factory=dict)  # batch -> max |exported - PyTorch| of the logits

    def summary(self) -> str:
        batch = "dynamic batch" if self.dynamic_batch else "fixed batch"
        checks = ", ".join(f"batch {b}: {d:.1e}" for b, d in sorted(self.max_abs_diff.items()))
        size = f"{self.image_size[0]}x{self.image_size[1]}"
        return f"wrote {self.path} ({self.format}, {size}, {batch}); max |logits - PyTorch| {checks or 'not checked'}"


@functools.cache
def _logits_only_class() -> type:
    """`LogitsOnly`, defined on first use (it subclasses ``torch.nn.Module``)."""

    class LogitsOnly(nn.Module):
        """The classifier as a deployable function: pixel values (B, C, H, W) -> logits (B, labels)."""

        def __init__(self, model: nn.Module, keep_rate: float | None = None, interpolate: bool = False):
            super().__init__()
            self.model, self.kwargs = model, {} if keep_rate is None else {"keep_rate": keep_rate}
            if interpolate and "interpolate_pos_encoding" in inspect.signature(model.forward).parameters:
                self.kwargs["interpolate_pos_encoding"] = True  # DINOv2 always interpolates: it has no such flag

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values, **self.kwargs).logits

    return LogitsOnly


def __getattr__(name: str) -> Any:
    if name == "LogitsOnly":
        return _logits_only_class()
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
    check_exportable(getattr(config, "model_type", None), type(model).__name__)
    height, width = _pair(config.image_size if image_size is None else image_size)
    patch = _pair(config.patch_size)
    if height % patch[0] or width % patch[1] or height < patch[0] or width < patch[1]:
        raise ValueError(
            f"--image-size {height}x{width} cannot export: it must be a positive multiple of the patch size "
            f"{patch[0]}x{patch[1]} (the token counts of every layer are fixed by the resolution)."
        )
    from .models.modeling_tokenprune_common import plan_in_force

    plan_in_force(config, model.base_model.built_plans, keep_rate)  # a keep rate the plan has no use for, or bad
    if fmt == "onnx":
        _require("onnx", "onnxscript")
    return height, width


def check_exportable(model_type: str | None, class_name: str) -> None:
    """Refuses, in one line, a model that is not one of the classifiers that export (`CLASSIFIERS`)."""
    allowed = CLASSIFIERS.get(model_type, (None, None))[1]
    if class_name != allowed:
        names = ", ".join(name for _, name in CLASSIFIERS.values())
        raise ValueError(
            f"export needs a classifier (pixel_values -> logits); {class_name} ({model_type!r}) cannot export: "
            f"the classes that do are {names} (CLIP and SigLIP towers and base models have no logits)."
        )


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
    return torch.randn(batch, model.config.num_channels, *size, generator=generator).to(dtype)


def _export(wrapper: nn.Module, example: torch.Tensor, fmt: str, output: Path, dynamic: bool) -> None:
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
        output_names=["logits"],
        verbose=False,
    )
    problems = audit_onnx_graph(onnx_program.model_proto, getattr(onnx_program, "exported_program", None))
    if problems:
        raise ValueError(f"the ONNX graph cannot be used as exported: {'; '.join(problems)}.")
    onnx_program.save(str(output))


def run_exported(path: str | Path, fmt: str, pixel_values: torch.Tensor) -> torch.Tensor:
    """Logits of an exported model: onnxruntime for ONNX, the loaded program for torch.export."""
    if fmt == "torch-export":
        return torch.export.load(str(path)).module()(pixel_values)
    _require("onnxruntime")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"pixel_values": pixel_values.cpu().numpy()})
    return torch.from_numpy(logits)


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
    """Exports ``model`` (a classifier of `CLASSIFIERS`: ViT, DeiT with teacher, DINOv2) and checks it against
    PyTorch.

    Args:
        output: the file to write (``.onnx`` or ``.pt2``).
        fmt: ``"onnx"`` (dynamo exporter) or ``"torch-export"``.
        batch_size: the batch the export is checked at (and fixed to, without ``dynamic_batch``); the check also
            runs at batch 1.
        image_size: the fixed input resolution (default: the config's); another multiple of the patch size
            interpolates the position embeddings.
        keep_rate: a runtime keep rate baked into the graph (methods with a keep rate).
        atol: the largest allowed difference of the logits from PyTorch; ``None`` skips the check.
    """
    size = check_export_request(model, fmt, batch_size, image_size, keep_rate)
    implementation = model.config._attn_implementation
    if implementation not in ("sdpa", "eager"):  # flex and the flash kernels do not export; the logits are the same
        model.set_attn_implementation("sdpa")
    try:
        return _export_and_check(model.eval(), output, fmt, batch_size, size, keep_rate, dynamic_batch, atol)
    finally:
        if model.config._attn_implementation != implementation:
            model.set_attn_implementation(implementation)


def _export_and_check(model, output, fmt, batch_size, size, keep_rate, dynamic_batch, atol) -> ExportReport:
    wrapper = _logits_only_class()(model, keep_rate, interpolate=size != _pair(model.config.image_size)).eval()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    trace_batch = max(batch_size, 2) if dynamic_batch else batch_size  # export specialises a batch of 1
    with torch.no_grad():
        _export(wrapper, _example(model, trace_batch, size), fmt, output, dynamic_batch)
    report = ExportReport(str(output), fmt, size, dynamic_batch)
    if atol is not None:
        for batch in sorted({1, batch_size}) if dynamic_batch else [batch_size]:
            pixels = _example(model, batch, size, seed=batch)
            with torch.no_grad():
                difference = (run_exported(output, fmt, pixels).float() - wrapper(pixels).float()).abs().max().item()
            report.max_abs_diff[batch] = difference
            if not difference <= atol:  # also refuses NaN
                raise ValueError(
                    f"the exported {fmt} model differs from PyTorch by {difference:.2e} at batch {batch} "
                    f"(allowed {atol:g}); {output} was written but should not be used."
                )
    return report


def _export_command(args: Any) -> int:
    if not Path(args.folder).is_dir():
        raise ValueError(f"FOLDER {args.folder!r} is not a checkpoint folder.")
    output = args.output or str(Path(args.folder) / f"model{SUFFIXES.get(args.format, '')}")
    model = _classifier_class(Path(args.folder)).from_pretrained(args.folder, attn_implementation="sdpa")
    report = export_model(
        model,
        output,
        fmt=args.format,
        batch_size=args.batch_size,
        image_size=args.image_size,
        keep_rate=args.keep_rate,
        dynamic_batch=not args.static_batch,
        atol=None if args.no_check else args.atol,
    )
    print(report.summary())
    return 0


def _classifier_class(folder: Path) -> type:
    """The class that exports the checkpoint in ``folder``: the family's classifier, TokenPruneViT for a stock ViT
    (refused in one line for a family or class that cannot export)."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ValueError(
            f"FOLDER '{folder}' has no readable config.json; give a folder written by save_pretrained."
        ) from None
    model_type = config.get("model_type")
    if model_type in (None, "vit", "tokenprune_vit"):  # any ViT checkpoint loads into the TokenPruneViT classifier
        return _import_class(*CLASSIFIERS["tokenprune_vit"])
    stock = model_type in {m.removeprefix("tokenprune_") for m in CLASSIFIERS}  # a stock checkpoint loads into ours
    model_type = f"tokenprune_{model_type}" if stock else model_type
    name = (config.get("architectures") or ["no architecture"])[0]
    check_exportable(model_type, f"TokenPrune{name}" if stock else name)
    return _import_class(*CLASSIFIERS[model_type])


def _import_class(module: str, name: str) -> type:
    import importlib

    return getattr(importlib.import_module(f"hf_tokenprune.models.{module}"), name)


def add_cli(commands: Any) -> None:
    """Adds ``hf-tokenprune export`` to the CLI's subcommands."""
    parser = commands.add_parser(
        "export",
        help="export a checkpoint to ONNX or torch.export (fixed resolution, dynamic batch), checked against PyTorch",
        description="Exports pixel_values -> logits at a fixed resolution with a dynamic batch dimension, then runs "
        "the exported model (onnxruntime for ONNX) at batch 1 and --batch-size and compares it with PyTorch.",
    )
    parser.add_argument(
        "folder", help="a checkpoint folder (save_pretrained) of a ViT, DeiT (with teacher) or DINOv2 classifier"
    )
    parser.add_argument("--format", default="onnx", choices=FORMATS, help="onnx (default) or torch-export (.pt2)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch checked (and fixed with --static-batch)")
    parser.add_argument("--output", default=None, help="file to write (default: FOLDER/model.onnx or model.pt2)")
    parser.add_argument("--image-size", type=int, default=None, help="input resolution (default: the model's)")
    parser.add_argument("--keep-rate", type=float, default=None, help="runtime keep rate baked into the graph")
    parser.add_argument("--static-batch", action="store_true", help="fix the batch to --batch-size")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed |logits - PyTorch| (fp32)")
    parser.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch")
    parser.set_defaults(func=_export_command)
