"""Pictures: which patches are still alive after each reduction layer, and speed-up plots.

Everything is drawn from the outputs' token bookkeeping (``token_positions``, ``token_owner``, ``patch_grid``), so
the pictures show what the model really did on that image: dropped or parked patches are dimmed, and patches that a
merging method (ToMe) folded into one token share a colour.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._lazy import LazyModule

torch = LazyModule("torch")  # imported when first used: the CLI's help and bad-input errors need no torch

__all__ = [
    "load_image",
    "plot_kept_tokens",
    "plot_pareto",
    "plot_speedups",
    "preprocess",
    "render_token_maps",
    "token_maps",
]

SAMPLES = ("china", "flower")  # the photographs scikit-learn ships
DIM = 0.22  # brightness of a patch that is no longer in the sequence
GOLDEN = 0.618033988749895


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------


def load_image(source: Any):
    """An RGB PIL image from a file path, a scikit-learn sample name (``china``, ``flower``), an array or an image."""
    from PIL import Image

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        array = source if source.dtype == np.uint8 else (np.clip(source, 0, 1) * 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if source in SAMPLES:
        from sklearn.datasets import load_sample_images

        samples = load_sample_images()
        index = [name.rsplit("/", 1)[-1].split(".")[0] for name in samples.filenames].index(source)
        return Image.fromarray(samples.images[index]).convert("RGB")
    try:
        return Image.open(source).convert("RGB")
    except (OSError, AttributeError) as error:
        raise ValueError(
            f"image {source!r} is neither a readable image file nor a sample photograph {list(SAMPLES)} ({error})."
        ) from None


def preprocess(image: Any, config: Any, size: Any = None) -> tuple[torch.Tensor, np.ndarray]:
    """``pixel_values`` (1, C, H, W) for the model, as a `ViTImageProcessor` built from the config's size would make
    them (resize, rescale, normalise with mean and std 0.5; no download), and the resized image as (H, W, 3) floats
    in [0, 1] for display. ``size``: (height, width) other than the config's image size."""
    from PIL import Image

    try:
        from transformers import ViTImageProcessorPil as Processor
    except ImportError:  # transformers without the PIL-backend class name
        from transformers import ViTImageProcessor as Processor

    from .models.token_reduction import grid_of

    height, width = grid_of(config.image_size if size is None else size, 1)
    image = load_image(image)
    processor = Processor(size={"height": height, "width": width})
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    shown = np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float32) / 255.0
    return pixel_values, shown


# ----------------------------------------------------------------------------------------------------------------
# Token maps from the outputs
# ----------------------------------------------------------------------------------------------------------------


def token_maps(outputs: Any, index: int = 0) -> list[dict[str, Any]]:
    """Per layer, which patches are alive in the MLP sequence and, for merging methods, which token holds each.

    Args:
        outputs: a TokenPruneViT output (``token_positions``, ``token_owner``, ``patch_grid``, ``token_counts``).
        index: the image in the batch.

    Returns:
        One dict per layer: ``alive`` (rows, cols) bool, ``groups`` (rows, cols) int token index or None,
        ``made_up`` (tokens at no patch, e.g. EViT's fused token) and ``counts`` (attention, MLP tokens).
    """
    rows, columns = outputs.patch_grid
    maps = []
    for layer, positions in enumerate(outputs.token_positions):
        positions = positions[index].detach().cpu()
        alive = torch.zeros(rows * columns, dtype=torch.bool)
        patches = positions[positions > 0] - 1  # 0 is CLS, -1 a made-up token
        alive[patches] = True
        owner = outputs.token_owner[layer] if outputs.token_owner is not None else None
        groups = None
        if owner is not None:
            groups = owner[index, 1:].detach().cpu().reshape(rows, columns).numpy()
            alive[:] = True  # a merged patch lives on inside its group's token
        maps.append(
            {
                "alive": alive.reshape(rows, columns).numpy(),
                "groups": groups,
                "made_up": int((positions < 0).sum()),
                "counts": tuple(outputs.token_counts[layer]),
            }
        )
    return maps


def _changed(previous: dict | None, current: dict) -> bool:
    if previous is None:
        return not current["alive"].all() or current["groups"] is not None
    if current["counts"][1] != previous["counts"][1] or current["made_up"] != previous["made_up"]:
        return True
    same_groups = (current["groups"] is None) == (previous["groups"] is None) and (
        current["groups"] is None or np.array_equal(current["groups"], previous["groups"])
    )
    return not (np.array_equal(current["alive"], previous["alive"]) and same_groups)


def layers_to_show(maps: list[dict[str, Any]], which: str = "changes") -> list[int]:
    """``changes``: the layers after which the set of tokens differs from the layer before; ``all``: every layer."""
    if which not in ("changes", "all"):
        raise ValueError(f"layers = {which!r} is not allowed; allowed: ['changes', 'all'].")
    if which == "all":
        return list(range(len(maps)))
    return [i for i, current in enumerate(maps) if _changed(maps[i - 1] if i else None, current)]


def follow_groups(maps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gives every merge group a ``keys`` entry, a (rows, cols) array with one key per group that follows the
    group from layer to layer: a group takes the key of the largest group of the layer before that it absorbed (the
    first patch it holds on the first merging layer), so its colour stays while it grows."""
    previous = None
    for layer_map in maps:
        groups = layer_map["groups"]
        if groups is None:
            previous = None
            continue
        before = np.arange(groups.size).reshape(groups.shape) if previous is None else previous
        keys = np.empty_like(before)
        for group in np.unique(groups):
            inside = groups == group
            values, counts = np.unique(before[inside], return_counts=True)
            keys[inside] = values[np.argmax(counts)]  # the largest absorbed group (ties: the earliest patch)
        layer_map["keys"] = previous = keys
    return maps


def _group_colours(groups: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
    """(rows, cols, 3) colours: patches sharing a token share a colour, chosen by the group's key (see
    `follow_groups`; by default its first patch); unmerged patches get NaN."""
    import colorsys

    flat = groups.reshape(-1)
    _, inverse, sizes = np.unique(flat, return_inverse=True, return_counts=True)
    if keys is None:
        keys = np.full(len(sizes), flat.size)
        np.minimum.at(keys, inverse, np.arange(flat.size))  # per group: its first patch
        keys = keys[inverse]
    hues = (keys.reshape(-1) * GOLDEN) % 1.0
    colours = np.array([colorsys.hsv_to_rgb(hue, 0.85, 1.0) for hue in hues]).reshape(*groups.shape, 3)
    colours[(sizes[inverse] < 2).reshape(groups.shape)] = np.nan
    return colours


def paint(image: np.ndarray, layer_map: dict[str, Any], tint: float = 0.5) -> np.ndarray:
    """The image with dropped patches dimmed and merge groups tinted with their colour."""
    height, width = image.shape[:2]
    rows, columns = layer_map["alive"].shape
    block = (math.ceil(height / rows), math.ceil(width / columns))
    alive = np.kron(layer_map["alive"], np.ones(block))[:height, :width, None]
    out = image * (DIM + (1.0 - DIM) * alive)
    if layer_map["groups"] is not None:
        colours = _group_colours(layer_map["groups"], layer_map.get("keys"))
        colours = np.repeat(np.repeat(colours, block[0], axis=0), block[1], axis=1)[:height, :width]
        merged = ~np.isnan(colours[..., :1])
        out = np.where(merged, (1.0 - tint) * out + tint * np.nan_to_num(colours), out)
    return np.clip(out, 0.0, 1.0)


LEGEND = (
    "dimmed: patch no longer in the sequence (dropped, parked or fused); coloured: patches merged into one token "
    "(a group keeps its colour across layers); counts are the tokens entering the MLP, CLS and fused tokens "
    "included, as hf-tokenprune plan prints them"
)


def render_token_maps(
    image: np.ndarray, outputs: Any, path: str, layers: str = "changes", title: str = "", index: int = 0
) -> str:
    """A PNG grid: the input, then the patches alive after each shown layer (dimmed: gone; tinted: merged), with
    a legend under the panels."""
    import textwrap

    plt = _pyplot()
    maps = follow_groups(token_maps(outputs, index))
    shown = layers_to_show(maps, layers)
    panels = [("input", image)] + [(_panel_title(i, maps[i]), paint(image, maps[i])) for i in shown]
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(3.2 * columns, 3.6 * rows + 0.8), squeeze=False, dpi=110, layout="constrained"
    )
    for axis in axes.flat:
        axis.axis("off")
    for axis, (name, picture) in zip(axes.flat, panels):
        axis.imshow(picture, interpolation="nearest")
        axis.set_title(name, fontsize=9)
    if title:
        figure.suptitle(textwrap.fill(title, width=40 * columns), fontsize=10)
    figure.supxlabel(textwrap.fill(LEGEND, width=40 * columns), fontsize=8)
    figure.savefig(path)
    plt.close(figure)
    return path


def _panel_title(layer: int, layer_map: dict[str, Any]) -> str:
    """The tokens entering the MLP (as ``hf-tokenprune plan`` counts them: CLS and fused tokens included)."""
    _, mlp = layer_map["counts"]
    parts = ["CLS"]
    if layer_map["groups"] is None:
        parts.append(f"{int(layer_map['alive'].sum())}/{layer_map['alive'].size} patches")
    else:
        parts.append(f"{mlp - 1 - layer_map['made_up']} patch groups")
    if layer_map["made_up"]:
        parts.append(f"{layer_map['made_up']} fused")
    return f"after layer {layer}: {mlp} tokens\n({' + '.join(parts)})"


def plot_kept_tokens(
    model: Any,
    image: Any,
    path: str,
    keep_rate: float | None = None,
    layers: str = "changes",
    title: str = "",
    image_size: int | None = None,
) -> str:
    """Runs ``model`` on ``image`` and saves a PNG of the patches alive after each reduction layer.

    Args:
        model: a TokenPruneViT (``ForImageClassification`` or base model) with a plan.
        image: a file path, a sample name (``china``, ``flower``), a PIL image or an array.
        path: where the PNG goes.
        keep_rate: a runtime keep rate (methods that have one).
        layers: ``changes`` (layers where the tokens change) or ``all``.
        title: a title; the plan by default.
        image_size: an input side other than the model's (its position embeddings are interpolated).

    Returns:
        ``path``.
    """
    from .flops import check_image_size

    size = check_image_size(model.config, image_size)
    pixel_values, shown = preprocess(image, model.config, size)
    parameter = next(model.parameters())
    kwargs = {} if keep_rate is None else {"keep_rate": keep_rate}
    if size != tuple(check_image_size(model.config)):
        kwargs["interpolate_pos_encoding"] = True
    was_training = model.training
    model.eval()
    with torch.no_grad():
        outputs = model(pixel_values.to(parameter.device, parameter.dtype), **kwargs)
    model.train(was_training)
    if outputs.token_positions is None:
        raise ValueError("the model's outputs carry no token_positions: pass a TokenPruneViT model.")
    from .plans import plan_label

    title = title or plan_label(model.config.token_reduction, getattr(model.config, "attention_reuse", None))
    return render_token_maps(shown, outputs, path, layers=layers, title=title)


# ----------------------------------------------------------------------------------------------------------------
# Speed-up and accuracy plots
# ----------------------------------------------------------------------------------------------------------------


# Plan colours: tab20 without its greys (the mode markers of the legend are grey), then golden-ratio hues.
_PLAN_COLOURS = [i for i in (*range(0, 20, 2), *range(1, 20, 2)) if i not in (14, 15)]  # dark hues, then light


def _colour_by(labels: list[str]):
    import colorsys

    plt = _pyplot()
    table = plt.get_cmap("tab10" if len(labels) <= 7 else "tab20")
    indices = [0, 1, 2, 3, 4, 5, 6, 8, 9] if table.N == 10 else _PLAN_COLOURS  # tab10 without grey (7)

    def colour(label: str):
        k = labels.index(label)
        return table(indices[k]) if k < len(indices) else colorsys.hsv_to_rgb((k * GOLDEN) % 1.0, 0.8, 0.8)

    return colour


def speedup_limits(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """Axis limits (the same on both axes) that hold every ideal and measured (median) speed-up with a margin;
    whiskers (the spread of the rounds) are not allowed to stretch them."""
    values = [row["ideal_speedup"] for row in rows] + [row["measured_speedup"] for row in rows] + [1.0]
    low, high = min(values), max(values)
    margin = 0.08 * (high - low) + 0.05
    return max(low - margin, 0.0), high + margin


def plot_speedups(rows: list[dict[str, Any]], path: str, title: str = "") -> str:
    """A PNG of measured (median) against ideal speed-up per plan (colour) and mode (marker), with the y = x line.

    ``rows`` are `hf_tokenprune.benchmark` result rows. The axes fit the medians and ideals; the whiskers (the
    min-max of the paired rounds) are clipped at the axes, an arrow marking a clipped end; noisy rows are hollow.
    """
    plt = _pyplot()
    markers = {"inference": "o", "latency": "s", "training": "^"}
    colour = _colour_by(list(dict.fromkeys(row["label"] for row in rows)))
    figure, axes = plt.subplots(figsize=(8, 6), dpi=120)
    low, top = speedup_limits(rows)
    clipped = False
    for row in rows:
        x = row["ideal_speedup"] + (list(markers).index(row["mode"]) - 1) * 0.01 * (top - low)  # side by side
        y, (bottom, ceiling) = row["measured_speedup"], row["spread"]
        ends = (max(bottom, low), min(ceiling, top))
        axes.plot([x, x], ends, color=colour(row["label"]), linewidth=1)
        for end, limit, arrow in ((bottom, low, "v"), (ceiling, top, "^")):
            if end != min(max(end, low), top):
                clipped = True
                axes.plot([x], [limit], arrow, color=colour(row["label"]), markersize=5, clip_on=False)
        face = "none" if row.get("noisy") else colour(row["label"])
        axes.plot([x], [y], markers[row["mode"]], color=colour(row["label"]), markerfacecolor=face, markersize=7)
    axes.plot([low, top], [low, top], "k--", linewidth=1, label="measured = ideal")
    for label in dict.fromkeys(row["label"] for row in rows):
        axes.plot([], [], "-", color=colour(label), linewidth=6, label=label)
    for mode in dict.fromkeys(row["mode"] for row in rows):
        axes.plot([], [], markers[mode], color="grey", label=mode)
    if any(row.get("noisy") for row in rows):
        axes.plot([], [], "o", color="grey", markerfacecolor="none", label="noisy (see the table)")
    note = "points: median of the rounds; bars: min-max of the rounds" + (", clipped at the axes (arrows)" * clipped)
    axes.set(xlim=(low, top), ylim=(low, top), xlabel=f"ideal speed-up (stock FLOPs / plan FLOPs)\n{note}")
    axes.set(ylabel="measured speed-up vs stock ViT", title=title or "token reduction: measured vs ideal")
    return _finish(plt, figure, axes, path)


def _finish(plt, figure, axes, path: str) -> str:
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_pareto(points: list[dict[str, Any]], path: str, title: str = "", reference: float | None = None) -> str:
    """Accuracy against measured speed-up: one line per method and setting (zero-shot dashed, fine-tuned solid).

    Args:
        points: dicts with ``method``, ``setting`` (e.g. "zero-shot", "fine-tuned"), ``measured_speedup`` and
            ``accuracy``.
        path: where the PNG goes.
        title: the figure title.
        reference: the stock model's accuracy, drawn as a star at speed-up 1.
    """
    plt = _pyplot()
    colour = _colour_by(sorted({p["method"] for p in points}))
    figure, axes = plt.subplots(figsize=(8, 6), dpi=120)
    styles = {"zero-shot": ("o", "--"), "fine-tuned": ("^", "-")}
    for (method, setting), group in _grouped(points).items():
        group = sorted(group, key=lambda p: p["measured_speedup"])
        marker, line = styles.get(setting, ("s", ":"))
        axes.plot(
            [p["measured_speedup"] for p in group], [p["accuracy"] for p in group], marker=marker, linestyle=line,
            color=colour(method), label=f"{method} ({setting})",
        )  # fmt: skip
    if reference is not None:
        axes.plot([1.0], [reference], "k*", markersize=14, label="stock ViT")
    axes.set(xlabel="measured speed-up vs stock ViT (inference)", ylabel="accuracy")
    axes.set(title=title or "accuracy against measured speed-up")
    return _finish(plt, figure, axes, path)


def _grouped(points: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for point in points:
        groups.setdefault((point["method"], point["setting"]), []).append(point)
    return groups
