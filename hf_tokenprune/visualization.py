"""Pictures: which patches are still alive after each reduction layer, and speed-up plots.

Everything is drawn from the outputs' token bookkeeping (``token_positions``, ``token_owner``, ``patch_grid``), so
the pictures show what the model really did on that image: dropped or parked patches are dimmed and striped (so they
differ from kept ones on a black image as on a white one), and patches that a merging method (ToMe) folded into one
token share a colour.
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
    "pareto",
    "plot_pareto",
    "plot_speedups",
    "preprocess",
    "render_token_maps",
    "render_video_tokens",
    "token_maps",
]

SAMPLES = ("china", "flower")  # the photographs scikit-learn ships
DIM = 0.22  # brightness of a patch that is no longer in the sequence
STRIPE = 0.55  # grey of the stripes drawn over it, visible on dark and on bright images
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


def token_maps(outputs: Any, index: int = 0, num_prefix: int = 1) -> list[dict[str, Any]]:
    """Per layer, which patches are alive in the MLP sequence and, for merging methods, which token holds each.

    Args:
        outputs: a TokenPrune output (``token_positions``, ``token_owner``, ``patch_grid``, ``token_counts``).
        index: the image in the batch.
        num_prefix: tokens before the patches (1: ViT's CLS; 0: a video family's tubelets).

    Returns:
        One dict per layer: ``alive`` bool and ``groups`` int token index or None, each on the patch grid ((rows,
        cols), or (time, rows, cols) for a video), ``made_up`` (tokens at no patch, e.g. EViT's fused token) and
        ``counts`` (attention, MLP tokens).
    """
    grid = tuple(outputs.patch_grid)
    maps = []
    for layer, positions in enumerate(outputs.token_positions):
        positions = positions[index].detach().cpu()
        alive = torch.zeros(math.prod(grid), dtype=torch.bool)
        patches = positions[positions >= num_prefix] - num_prefix  # below: a prefix token, -1 a made-up one
        alive[patches] = True
        owner = outputs.token_owner[layer] if outputs.token_owner is not None else None
        groups = None
        if owner is not None:
            groups = owner[index, num_prefix:].detach().cpu().reshape(grid).numpy()
            alive[:] = True  # a merged patch lives on inside its group's token
        maps.append(
            {
                "alive": alive.reshape(grid).numpy(),
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
    """The image with dropped patches dimmed and striped, and merge groups tinted with their colour."""
    height, width = image.shape[:2]
    rows, columns = layer_map["alive"].shape
    block = (math.ceil(height / rows), math.ceil(width / columns))
    alive = np.kron(layer_map["alive"], np.ones(block))[:height, :width, None]
    period = max(4, min(block) // 2)  # diagonal stripes, a few per patch
    y, x = np.mgrid[:height, :width]
    stripes = (((x + y) % period) < period / 3)[..., None]
    gone = np.where(stripes, STRIPE, image * DIM)
    out = np.where(alive > 0, image, gone)
    if layer_map["groups"] is not None:
        colours = layer_map.get("colours")  # given: colours of groups that span several pictures (video)
        colours = _group_colours(layer_map["groups"], layer_map.get("keys")) if colours is None else colours
        colours = np.repeat(np.repeat(colours, block[0], axis=0), block[1], axis=1)[:height, :width]
        merged = ~np.isnan(colours[..., :1])
        out = np.where(merged, (1.0 - tint) * out + tint * np.nan_to_num(colours), out)
    return np.clip(out, 0.0, 1.0)


LEGEND = (
    "dimmed and striped: patch no longer in the sequence (dropped, parked or fused); coloured: patches merged into "
    "one token (a group keeps its colour across layers); counts are the tokens entering the MLP, CLS and fused "
    "tokens included, as hf-tokenprune plan prints them"
)


def render_token_maps(
    image: np.ndarray, outputs: Any, path: str, layers: str = "changes", title: str = "", index: int = 0
) -> str:
    """A PNG grid: the input, then the patches alive after each shown layer (dimmed and striped: gone; tinted:
    merged), with
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
    """Axis limits that hold every ideal and measured (median) speed-up and 1x with a margin; whiskers (the spread of
    the rounds) are not allowed to stretch them."""
    values = [row["ideal_speedup"] for row in rows] + [row["measured_speedup"] for row in rows] + [1.0]
    low, high = min(values), max(values)
    margin = 0.08 * (high - low) + 0.05
    return max(low - margin, 0.0), high + margin


MODE_TITLES = {"inference": "inference", "latency": "latency (batch 1)", "training": "training step"}


def plot_speedups(rows: list[dict[str, Any]], path: str, title: str = "") -> str:
    """A PNG with one panel per mode (inference, latency, training apart): per plan, a bar of the measured (median)
    speed-up with the min-max of the rounds, and a black tick at the ideal (the FLOPs ratio).

    ``rows`` are `hf_tokenprune.measure` benchmark rows. The axis fits the medians and ideals; whiskers are clipped at
    it, an arrow marking a clipped end; a row whose ``unreliable`` is true (`hf_tokenprune.measure.report` sets it
    from a noisy or busy run) is hatched and marked in its label.
    """
    plt = _pyplot()
    modes = [mode for mode in MODE_TITLES if any(row["mode"] == mode for row in rows)]
    labels = list(dict.fromkeys(row["label"] for row in rows))
    colour = _colour_by(labels)
    height = 1.0 + 0.38 * len(labels)
    figure, panels = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), height), dpi=120, squeeze=False,
                                  sharey=True, layout="constrained")  # fmt: skip
    for axes, mode in zip(panels[0], modes):
        mine = {row["label"]: row for row in rows if row["mode"] == mode}
        low, top = speedup_limits(list(mine.values()))
        low = min(low, 0.8)
        for position, label in enumerate(labels):
            row = mine.get(label)
            if row is None:
                continue
            y, measured = len(labels) - 1 - position, row["measured_speedup"]
            unreliable = bool(row.get("unreliable"))
            axes.barh(y, measured - low, left=low, height=0.6, color=colour(label), alpha=0.85,
                      hatch="//" if unreliable else None, edgecolor="white" if unreliable else None)  # fmt: skip
            bottom, ceiling = row["spread"]
            axes.plot([max(bottom, low), min(ceiling, top)], [y, y], color="black", linewidth=1)
            for end, limit, arrow in ((bottom, low, "<"), (ceiling, top, ">")):
                if end != min(max(end, low), top):
                    axes.plot([limit], [y], arrow, color="black", markersize=4, clip_on=False)
            axes.plot([row["ideal_speedup"]], [y], "|", color="black", markersize=14, markeredgewidth=2.5)
            axes.text(top, y, f" {measured:.2f}x" + (" †" if unreliable else ""), va="center", fontsize=8)
        axes.axvline(1.0, color="grey", linewidth=1, linestyle="--")
        axes.set(xlim=(low, top), title=MODE_TITLES[mode], xlabel="speed-up vs stock (same weights)")
        axes.grid(axis="x", alpha=0.3)
    panels[0][0].set_yticks(range(len(labels)), labels[::-1], fontsize=8)
    figure.suptitle(title or "token reduction: measured speed-up", fontsize=10)
    figure.supxlabel(
        "bar: median of the paired rounds; line: min-max of the rounds; black tick: ideal (FLOPs ratio); "
        "† hatched: unreliable (see the table)", fontsize=7,
    )  # fmt: skip
    figure.savefig(path)
    plt.close(figure)
    return path


def _finish(plt, figure, axes, path: str) -> str:
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def pareto(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats on both measured speed-up and accuracy, from fastest to slowest."""
    front, best = [], -math.inf
    for point in sorted(points, key=lambda p: (-p["measured_speedup"], -p["accuracy"])):
        if point["accuracy"] > best:
            front.append(point)
            best = point["accuracy"]
    return front


def plot_pareto(points: list[dict[str, Any]], path: str, title: str = "", reference: float | None = None) -> str:
    """Accuracy against measured speed-up, one panel per setting (zero-shot apart from fine-tuned, each with its own
    accuracy axis): one colour per method, its operating points joined, the Pareto front of the panel drawn.

    Args:
        points: dicts with ``method``, ``setting`` (e.g. "zero-shot", "fine-tuned"), ``measured_speedup`` and
            ``accuracy``.
        path: where the PNG goes.
        title: the figure title.
        reference: the stock model's accuracy, drawn as a star at speed-up 1 (a dict: per setting).
    """
    plt = _pyplot()
    methods = sorted({p["method"] for p in points})
    colour = _colour_by(methods)
    settings = sorted(dict.fromkeys(p["setting"] for p in points), key=lambda s: s != "zero-shot")  # zero-shot first
    figure, panels = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4.8), dpi=120, squeeze=False,
                                  layout="constrained")  # fmt: skip
    for axes, setting in zip(panels[0], settings):
        mine = [p for p in points if p["setting"] == setting]
        stock = reference.get(setting) if isinstance(reference, dict) else reference
        front = sorted(pareto(mine), key=lambda p: p["measured_speedup"])
        # The accuracy axis holds the front, the stock model and most points; a point far below is drawn at the
        # bottom edge as an arrow with its value, so one collapsed point cannot flatten the others.
        kept = sorted(p["accuracy"] for p in mine)[len(mine) // 10 :] + [p["accuracy"] for p in front]
        floor = min(kept + ([stock] if stock is not None else []))
        top = max([p["accuracy"] for p in mine] + ([stock] if stock is not None else []))
        bottom = floor - 0.08 * (top - floor + 1e-3)
        for method in methods:
            group = sorted((p for p in mine if p["method"] == method), key=lambda p: p["measured_speedup"])
            xs, ys = [p["measured_speedup"] for p in group], [max(p["accuracy"], bottom) for p in group]
            if group:
                axes.plot(xs, ys, "o-", color=colour(method), markersize=5, linewidth=1.2, alpha=0.9)
            for p in group:
                if p["accuracy"] < bottom:
                    axes.plot([p["measured_speedup"]], [bottom], "v", color=colour(method), markersize=9)
                    axes.annotate(f"{p['accuracy']:.2f}", (p["measured_speedup"], bottom), xytext=(4, 4),
                                  textcoords="offset points", fontsize=7, color=colour(method))  # fmt: skip
        axes.step([p["measured_speedup"] for p in front], [p["accuracy"] for p in front], where="pre", color="black",
                  linewidth=2, alpha=0.45, zorder=0)  # fmt: skip
        if stock is not None:
            axes.plot([1.0], [stock], "k*", markersize=13)
        axes.set(title=setting, xlabel="measured speed-up vs stock (inference)", ylabel="accuracy")
        axes.set_ylim(bottom - 0.01 * (top - bottom), top + 0.05 * (top - bottom))
        axes.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colour(m), marker="o", label=m) for m in methods]
    handles.append(plt.Line2D([], [], color="black", linewidth=2, alpha=0.45, label="Pareto front"))
    handles.append(plt.Line2D([], [], color="black", marker="*", linestyle="", markersize=11, label="stock model"))
    figure.legend(handles=handles, loc="outside right center", fontsize=8)
    figure.suptitle(title or "accuracy against measured speed-up", fontsize=10)
    figure.savefig(path)
    plt.close(figure)
    return path


def _grouped(points: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for point in points:
        groups.setdefault((point["method"], point["setting"]), []).append(point)
    return groups


# ----------------------------------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------------------------------


VIDEO_LEGEND = (
    "one column per tubelet slot in time (its first frame shown); dimmed and striped: tubelet no longer in the "
    "sequence; coloured: tubelets merged into one token, across space and time (a group keeps its colour)"
)


def render_video_tokens(
    frames: np.ndarray, outputs: Any, path: str, tubelet_size: int = 2, title: str = "", index: int = 0
) -> str:
    """A PNG: the clip (first frame of each tubelet slot), then the tubelets alive after each layer where the
    tokens change, one row per layer.

    Args:
        frames: (frames, H, W, 3) or (frames, H, W) floats in [0, 1].
        outputs: a TokenPruneVideoMAE output of the clip (``token_positions``, ``token_owner``, ``patch_grid``).
        tubelet_size: frames per tubelet (the config's).
    """
    import textwrap

    plt = _pyplot()
    frames = np.asarray(frames, dtype=np.float32)
    frames = np.repeat(frames[..., None], 3, axis=-1) if frames.ndim == 3 else frames
    maps = follow_groups(token_maps(outputs, index, num_prefix=0))
    shown = layers_to_show(maps, "changes") or [len(maps) - 1]
    slots = maps[0]["alive"].shape[0]
    rows = [("clip", None)] + [(f"after layer {i}: {maps[i]['counts'][1]} tokens", maps[i]) for i in shown]
    figure, axes = plt.subplots(len(rows), slots, figsize=(1.9 * slots, 2.1 * len(rows) + 0.8), squeeze=False,
                                dpi=110, layout="constrained")  # fmt: skip
    for row, (name, layer_map) in enumerate(rows):
        colours = None
        if layer_map is not None and layer_map["groups"] is not None:
            colours = _group_colours(layer_map["groups"], layer_map.get("keys"))  # groups span time slots
        for slot in range(slots):
            image = frames[slot * tubelet_size]
            if layer_map is not None:
                sliced = {"alive": layer_map["alive"][slot], "groups": None if colours is None else True,
                          "colours": None if colours is None else colours[slot]}  # fmt: skip
                image = paint(image, sliced)
            axis = axes[row, slot]
            axis.imshow(image, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"frames {slot * tubelet_size}-{(slot + 1) * tubelet_size - 1}", fontsize=8)
        axes[row, 0].set_ylabel(textwrap.fill(name, 18), fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.supxlabel(textwrap.fill(VIDEO_LEGEND, width=30 * slots), fontsize=8)
    figure.savefig(path)
    plt.close(figure)
    return path
