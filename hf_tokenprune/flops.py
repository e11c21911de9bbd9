"""Analytic FLOPs and MACs of a TokenPruneViT plan, per layer and in total.

A multiply-accumulate (MAC) is counted as 2 FLOPs, the convention of ``torch.utils.flop_counter``. Counted: the
patch embedding, the q/k/v/o projections, the two attention matmuls, the MLP, the classifier, what a method adds
(the CLS attention row, ToMe's matching, learned scorers and predictors), and for attention reuse the reuse
function in place of the attention. Not counted, as the FLOP counter does not count
them either: LayerNorm, softmax, GELU, residual additions, gathers and scatters (all linear in tokens x width).
On the CPU the counter does not see the fused SDPA kernel either, so a cross-check runs the eager attention.

The ideal speed-up of a plan is the stock model's FLOPs over the plan's.
"""

import math
from dataclasses import dataclass, field
from typing import Any

from .families import FAMILIES
from .models.methods import get_reduction_class, get_reuse_class
from .models.token_reduction import check_keep_rate, grid_of


@dataclass
class LayerFlops:
    """One layer: token counts and MACs (per image)."""

    attention_tokens: int
    mlp_tokens: int
    attention_macs: int
    mlp_macs: int
    extra_macs: int = 0

    @property
    def macs(self) -> int:
        return self.attention_macs + self.mlp_macs + self.extra_macs


@dataclass
class FlopsReport:
    """Per-layer and total cost of one plan at one input size, per image, next to the stock model's."""

    layers: list[LayerFlops]
    embedding_macs: int
    head_macs: int
    stock_macs: int
    image_size: tuple[int, int] = (0, 0)
    keep_rate: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def macs(self) -> int:
        return self.embedding_macs + sum(layer.macs for layer in self.layers) + self.head_macs

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def stock_gflops(self) -> float:
        return 2 * self.stock_macs / 1e9

    @property
    def ideal_speedup(self) -> float:
        return self.stock_macs / self.macs

    @property
    def token_counts(self) -> list[tuple[int, int]]:
        return [(layer.attention_tokens, layer.mlp_tokens) for layer in self.layers]

    def to_dict(self) -> dict[str, Any]:
        return {
            "gflops": self.gflops,
            "stock_gflops": self.stock_gflops,
            "ideal_speedup": self.ideal_speedup,
            "image_size": list(self.image_size),
            "keep_rate": self.keep_rate,
            "token_counts": [list(c) for c in self.token_counts],
            "layer_gflops": [2 * layer.macs / 1e9 for layer in self.layers],
        }


def attention_macs(config: Any, tokens: int) -> int:
    """q/k/v/o projections and the two (tokens x tokens) attention matmuls, per image."""
    width = config.hidden_size
    return 4 * tokens * width * width + 2 * tokens * tokens * width


def num_prefix_tokens(config: Any) -> int:
    """Leading tokens of the family (CLS; DeiT's distillation token; DINOv2's registers; none for SigLIP)."""
    return getattr(config, "num_prefix_tokens", 1)


def mlp_macs(config: Any, tokens: int) -> int:
    """The MLP of one layer: two matrices, or three for DINOv2's SwiGLU (its hidden width as transformers sets it)
    and DINOv3's gated MLP."""
    width = config.hidden_size
    if getattr(config, "use_gated_mlp", False):  # DINOv3: gate and up projections, then down
        return 3 * tokens * width * config.intermediate_size
    if hasattr(config, "mlp_ratio"):  # DINOv2
        hidden = int(width * config.mlp_ratio)
        if config.use_swiglu_ffn:
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
            return 3 * tokens * width * hidden
        return 2 * tokens * width * hidden
    return 2 * tokens * width * config.intermediate_size


def _embedding_macs(config: Any, num_patches: int) -> int:
    volume = getattr(config, "patch_volume", None)  # ours; a stock ViT config: channels x patch area
    if volume is None:
        patch = grid_of(config.patch_size, 1)
        volume = config.num_channels * patch[0] * patch[1]
    return num_patches * volume * config.hidden_size


def num_patches_for(config: Any, image_size: Any) -> int:
    """Patch tokens of an input of ``image_size`` (height, width): rows x columns, times the tubelets in time of a
    video family (its config's ``patch_grid_for``)."""
    grid_for = getattr(config, "patch_grid_for", None)
    return math.prod(grid_for(image_size) if grid_for is not None else grid_of(image_size, config.patch_size))


def _head_macs(config: Any) -> int:
    """The classifier: ``head_inputs`` of the family's row (DeiT's two heads, DINOv2's CLS next to the patch mean;
    none for the vision towers) times width times labels; one input for a config outside the table (stock ViT)."""
    labels = max(int(getattr(config, "num_labels", 0) or 0), 0)
    rows = [row for row in FAMILIES.values() if row.model_type == getattr(config, "model_type", None)]
    return (rows[0].head_inputs if rows else 1) * config.hidden_size * labels


def plan_token_counts(config: Any, plan: dict | None, num_patches: int, keep_rate: float | None) -> list:
    """Per-layer (attention, MLP) token counts of a plan, prefix tokens included (methods count one prefix token;
    prefix tokens are never removed, so another prefix count shifts every count)."""
    shift = num_prefix_tokens(config) - 1
    if plan is None:
        return [(num_patches + 1 + shift, num_patches + 1 + shift)] * config.num_hidden_layers
    counts = get_reduction_class(plan["method"]).token_counts(plan, config.num_hidden_layers, num_patches, keep_rate)
    return [(a + shift, m + shift) for a, m in counts]


def stock_macs(config: Any, image_size: Any = None) -> int:
    """MACs per image of the same model with no reduction and no reuse."""
    patches = num_patches_for(config, image_size if image_size is not None else config.image_size)
    tokens = patches + num_prefix_tokens(config)
    per_layer = attention_macs(config, tokens) + mlp_macs(config, tokens)
    return _embedding_macs(config, patches) + config.num_hidden_layers * per_layer + _head_macs(config)


def count_flops(
    config: Any,
    keep_rate: float | None = None,
    image_size: Any = None,
    token_counts: list[tuple[int, int]] | None = None,
) -> FlopsReport:
    """FLOPs of ``config``'s plan for one image.

    Args:
        config: a TokenPrune config of any family (or any ViT config; then the stock cost).
        keep_rate: a runtime keep rate, as passed to the model's forward.
        image_size: an input size other than ``config.image_size`` (with ``interpolate_pos_encoding``).
        token_counts: per-layer (attention, MLP) token counts, e.g. ``outputs.token_counts``; computed from the
            plan when not given.
    """
    image = check_image_size(config, image_size)
    if keep_rate is not None:
        check_keep_rate(keep_rate, "keep_rate")
    patches = num_patches_for(config, image)
    plan = getattr(config, "token_reduction", None)
    method = get_reduction_class(plan["method"]) if plan else None
    if token_counts is None:
        token_counts = plan_token_counts(config, plan, patches, keep_rate)
    extras = method.extra_macs(plan, config, token_counts) if method else [0] * len(token_counts)
    reuse = getattr(config, "attention_reuse", None)
    reused = set(reuse["layers"]) if reuse else set()
    layers = []
    for index, ((a, m), extra) in enumerate(zip(token_counts, extras)):
        if index in reused:  # the layer's attention is replaced by the reuse function on the patch tokens
            attention = get_reuse_class(reuse["method"]).macs(reuse, config, a - num_prefix_tokens(config))
        else:
            attention = attention_macs(config, a)
        layers.append(LayerFlops(a, m, attention, mlp_macs(config, m), extra))
    return FlopsReport(
        layers=layers,
        embedding_macs=_embedding_macs(config, patches),
        head_macs=_head_macs(config),
        stock_macs=stock_macs(config, image),
        image_size=image,
        keep_rate=keep_rate,
    )


def check_image_size(config: Any, image_size: Any = None) -> tuple[int, int]:
    """(height, width) of the input: ``image_size`` (an int or a pair) or the config's; each side must be a positive
    multiple of the patch size, as the patch embedding covers whole patches only."""
    size = image_size if image_size is not None else config.image_size
    pairs = isinstance(size, (list, tuple)) and len(size) == 2
    if not (pairs or isinstance(size, int)) or isinstance(size, bool):
        raise ValueError(f"image_size = {size!r} must be an integer or a (height, width) pair.")
    image, patch = grid_of(size, 1), grid_of(config.patch_size, 1)
    for side, step in zip(image, patch):
        if not isinstance(side, int) or side < step or side % step:
            raise ValueError(
                f"image_size = {size!r} must be a positive multiple of the patch size {step} "
                f"(e.g. {max(step, (side if isinstance(side, int) else 0) // step * step)})."
            )
    return image


def flops_unit(flops: float) -> tuple[float, str]:
    """The divisor and name that show ``flops`` with a few digits before the point: GFLOPs, MFLOPs or kFLOPs."""
    for scale, name in ((1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "kFLOPs")):
        if flops >= scale:
            return scale, name
    return 1.0, "FLOPs"


def format_report(report: FlopsReport) -> str:
    """A small per-layer table for a terminal, in GFLOPs or, for small models, MFLOPs."""
    scale, unit = flops_unit(2 * report.stock_macs)
    lines = [f"{'layer':>5} {'attn tokens':>11} {'MLP tokens':>10} {unit:>8}"]
    for index, layer in enumerate(report.layers):
        lines.append(f"{index:>5} {layer.attention_tokens:>11} {layer.mlp_tokens:>10} {2 * layer.macs / scale:>8.4g}")
    lines.append(
        f"total {report.flops / scale:.4g} {unit} per input, an image or a clip (stock "
        f"{2 * report.stock_macs / scale:.4g}); "
        f"ideal speed-up {report.ideal_speedup:.2f}x"
    )
    lines.append(
        "tokens include prefix tokens (CLS, registers) and made-up tokens (e.g. EViT's fused token), as "
        "outputs.token_counts counts them; "
        "the kept-token picture shows the same counts"
    )
    return "\n".join(lines)
