"""The benchmark in onnxruntime: every plan exported to ONNX and timed against the exported stock model.

Each model (the stock class with the same weights, each plan, and for ViT each plan's token-count bound) is exported
once at the measured resolution with a dynamic batch (`hf_tokenprune.sharing.export`; the plans' exports are checked
against PyTorch), loaded in an onnxruntime session on the CPU with the process's torch thread count as its intra-op
threads and every graph optimisation on, and timed paired and interleaved like the PyTorch benchmark
(`measure_paired`).

The token-count bound is the stock model's own layers run at the plan's token counts (attention at the tokens entering
it, MLP at the tokens entering the MLP) and nothing else: what the matrix products lose with fewer rows, which no
implementation of the plan can beat with these kernels. Its ratio to the plan's time is what the plan's own work
(ranking, gathers) costs in the exported graph.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from .._lazy import LazyModule
from .timing import Speedups, measure_paired

torch = LazyModule("torch")
BOUND = " (bound)"


def resize_tokens(hidden_states: Any, length: int) -> Any:
    """The first ``length`` tokens, repeating the sequence when it is shorter (a rejoin grows it back)."""
    copies = math.ceil(length / hidden_states.shape[1])
    return (hidden_states if copies == 1 else hidden_states.repeat(1, copies, 1))[:, :length]


def token_count_bound(stock: Any, counts: list[tuple[int, int]]) -> Any:
    """A module running ``stock`` (a `ViTForImageClassification`) with its layers at the plan's token counts:
    (attention tokens, MLP tokens) per layer."""

    class TokenCountBound(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stock, self.output = stock, "logits"  # the output name an export gives the graph's output

        def forward(self, pixel_values):
            vit = self.stock.vit
            hidden_states = vit.embeddings(pixel_values)
            for layer, (attention_tokens, mlp_tokens) in zip(vit.layers, counts):
                hidden_states = resize_tokens(hidden_states, attention_tokens)
                hidden_states = hidden_states + layer.attention(layer.layernorm_before(hidden_states))[0]
                hidden_states = resize_tokens(hidden_states, mlp_tokens)
                hidden_states = hidden_states + layer.mlp(layer.layernorm_after(hidden_states))
            return self.stock.classifier(vit.layernorm(hidden_states)[:, 0])

    return TokenCountBound().eval()


def session(path: Path, threads: int) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads and every graph optimisation."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def exported_candidates(stock: Any, models: dict, counts: dict, config: Any, settings: Any, folder: Path) -> dict:
    """name -> callable(pixel_values) running the exported model in onnxruntime: ``stock``, every plan, and for a
    ViT every plan's token-count bound."""
    from ..families import family_of
    from ..sharing.export import _export, _output_only_class, _require, export_model, quiet_exporter

    _require("onnx", "onnxscript", "onnxruntime")
    output = family_of(config.model_type).output
    size = settings.image_size or config.image_size
    example = torch.randn(2, *config.input_shape(size))
    threads = torch.get_num_threads()
    modules = {"stock": _output_only_class()(stock, None, False, output).eval()}  # pixel_values -> the output
    for label, model in models.items():
        modules[label] = model
        if counts.get(label) is not None and hasattr(stock, "vit"):
            modules[label + BOUND] = token_count_bound(stock, counts[label])  # a module of the same signature
    candidates = {}
    for index, (name, module) in enumerate(modules.items()):
        path = folder / f"model-{index}.onnx"
        if name in models:  # the plans: exported and checked against PyTorch, as hf-tokenprune export does
            export_model(module, path, fmt="onnx", batch_size=2, image_size=settings.image_size)
        else:
            with quiet_exporter(), torch.no_grad():
                _export(module, example, "onnx", path, dynamic=True)
        run = session(path, threads)
        candidates[name] = lambda pixels, run=run: run.run(None, {"pixel_values": pixels.numpy()})
    return candidates


def measure_onnxruntime(stock, models, counts, config, settings, batch_sizes: dict[str, int]) -> dict:
    """mode -> label -> `Speedups` of the exported plan (and ``label + " (bound)"`` of its bound) against the
    exported stock model, for each mode's batch size (``{"inference": 8, "latency": 1}``)."""
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tokenprune-onnx-") as tmp:
        candidates = exported_candidates(stock, models, counts, config, settings, Path(tmp))
        size = settings.image_size or config.image_size
        generator = torch.Generator().manual_seed(settings.seed)
        for mode, batch in batch_sizes.items():
            pixels = torch.randn(batch, *config.input_shape(size), generator=generator)
            rounds = settings.rounds if mode == "inference" else settings.latency_rounds or 3 * settings.rounds
            stats = measure_paired(candidates, pixels, rounds=rounds, warmup=settings.warmup,
                                   progress=settings.progress, desc=f"onnxruntime {mode} (batch {batch})")  # fmt: skip
            results[mode] = {name: Speedups(stats["stock"], stats[name]) for name in candidates if name != "stock"}
    return results
