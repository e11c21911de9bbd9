"""Choose a plan: try training-free plans on held-out images, measure them against stock ViT, keep the best one.

``hf-tokenprune tune --model CKPT --target-speedup 1.5`` (or ``--target-gflops``, or ``--max-accuracy-drop``)

1. builds candidate plans: every training-free method (EViT, SuperViT, Evo-ViT, SkipViT, ToMe, and any registered
   method without parameters) at its operating points (the method class's ``operating_points``), plus the
   checkpoint's own plan and its runtime amounts when it has one. Methods with learned parts (DynamicViT's
   predictor, Cropr's scorer, SkipAt's reuse function) are left out unless the checkpoint holds their trained
   weights: untrained, they would be judged on random scorers;
2. measures the accuracy of each candidate, with the checkpoint's weights and no training, on a seeded subset of
   held-out images (the embedded cluttered digits of `hf_tokenprune.data` by default, an image folder, or a
   ``datasets`` dataset);
3. measures each candidate's inference speed-up paired against the stock `ViTForImageClassification` with the same
   weights on this machine (`hf_tokenprune.measure.benchmark.measure_forward`), with its FLOPs
   (`hf_tokenprune.flops`) beside it;
4. prints the Pareto front of accuracy against measured speed-up (a table, ``tune.md``, ``tune.png``,
   ``tune.json``) and writes the chosen plan into a copy of the checkpoint (``--output``).

Candidates, their order and their accuracies depend only on the checkpoint, the data and ``--seed``; measured
speed-ups are measurements, and ``--time-budget`` stops the search early (at least one candidate is evaluated).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._lazy import LazyModule
from ..families import FAMILIES
from ..flops import count_flops
from ..models.methods import ATTENTION_REUSE_METHODS, REDUCTION_METHODS, get_reduction_class, get_reuse_class
from ..models.token_reduction import did_you_mean
from ..plans import PlanEntry, plan_config, plan_label
from .benchmark import BenchmarkSettings, build_models, measure_forward
from .devices import provenance
from .heldout import accuracy
from .report import BUSY_OTHERS, compact_counts, noise_of

torch = LazyModule("torch")  # imported on first use, so listing the CLI's subcommands stays fast

OWN = " (checkpoint plan)"  # the label suffix of the checkpoint's own plan family (trained with it)
TARGETS = ("target_speedup", "target_gflops", "max_accuracy_drop")
TARGET_FLAGS = {name: "--" + name.replace("_", "-") for name in TARGETS}
SHALLOW = 8  # fewer layers than this: the official placements, scaled, reduce within the first layers


# ----------------------------------------------------------------------------------------------------------------
# Candidates
# ----------------------------------------------------------------------------------------------------------------


def has_parameters(token_reduction: dict | None, attention_reuse: dict | None, config: Any) -> bool:
    """Whether a plan adds learned parameters to the model (so it needs training before it can be judged)."""
    checked = plan_config(config, PlanEntry("check", token_reduction, attention_reuse))
    for layer in range(config.num_hidden_layers):
        modules = []
        if checked.token_reduction:
            modules.append(
                get_reduction_class(token_reduction["method"]).build(checked.token_reduction, checked, layer)
            )
        if checked.attention_reuse:
            reuse = get_reuse_class(attention_reuse["method"])
            modules.append(reuse.build(checked.attention_reuse, checked, layer))
        if any(next(module.parameters(), None) is not None for module in modules if module is not None):
            return True
    return False


def _method_points(method: str, config: Any, start: dict | None = None) -> list[dict]:
    """The plans of one method's operating points (its class's ``operating_points``, mildest first, with
    ``start``'s other options kept); one default plan if the method has none."""
    start = start or {"method": method}
    cls = get_reduction_class(method)
    if not cls.operating_points:
        return [dict(start)]
    return [{**start, **cls.operating_point(strength, config)} for strength in cls.operating_points[1]]


def _interleave(lines: list[list[PlanEntry]]) -> list[PlanEntry]:
    """Round robin over the methods, mildest points first, so a time budget still leaves every method tried."""
    order, seen = [], set()
    for rank in range(max((len(line) for line in lines), default=0)):
        for line in lines:
            if rank < len(line) and line[rank].label not in seen:
                seen.add(line[rank].label)
                order.append(line[rank])
    return order


def build_candidates(config: Any, methods: list[str] | None = None) -> tuple[list[tuple[PlanEntry, Any]], dict]:
    """Candidate plans for a checkpoint config (its own plan included) and what was left out, and why.

    Args:
        config: the checkpoint's TokenPruneViTConfig, with its own plans (if any).
        methods: restrict to these method names (None: every usable one).

    Returns:
        ``(entry, config)`` pairs in evaluation order, and ``{name or label: reason}`` for what was left out.
    """
    base = plan_config(config, PlanEntry("base"))
    own, own_reuse = config.token_reduction, config.attention_reuse
    lines, left_out = [], {}
    if own or own_reuse:  # the checkpoint's trained plan and its runtime amounts
        points = [dict(own), *_method_points(own["method"], config, own)] if own else [None]
        lines.append([PlanEntry(_own_label(p, own_reuse), p, own_reuse) for p in points])
    for method in sorted(REDUCTION_METHODS):
        if own and method == own["method"]:
            continue
        if has_parameters({"method": method}, None, base):
            left_out[method] = "has learned parts and the checkpoint holds no trained plan of it"
            continue
        lines.append([PlanEntry(plan_label(p), p) for p in _method_points(method, base)])
    for method in sorted(set(ATTENTION_REUSE_METHODS) - {(own_reuse or {}).get("method")}):
        left_out[method] = "attention reuse has a learned part and the checkpoint holds no trained plan of it"
    lines = [_only(line, methods) for line in lines]
    return _validated(_interleave([line for line in lines if line]), base, left_out), left_out


def _own_label(plan: dict | None, reuse: dict | None) -> str:
    """A short label for the checkpoint's plan family: the method and the amount the grid moves."""
    option = (get_reduction_class(plan["method"]).operating_points or ("",))[0] if plan else ""
    value = (plan or {}).get(option)
    amount = "" if value is None else f" {option}={value:g}" if isinstance(value, float) else f" {option}={value}"
    parts = [f"{plan['method']}{amount}"] if plan else []
    return " + ".join(parts + ([reuse["method"]] if reuse else [])) + OWN


def _only(line: list[PlanEntry], methods: list[str] | None) -> list[PlanEntry]:
    if methods is None:
        return line
    return [e for e in line if {(e.token_reduction or {}).get("method"), (e.attention_reuse or {}).get("method")}
            & set(methods)]  # fmt: skip


def _validated(entries: list[PlanEntry], base: Any, left_out: dict) -> list[tuple[PlanEntry, Any]]:
    """(entry, config) for every entry the config accepts; the others are noted in ``left_out``."""
    pairs = []
    for entry in entries:
        try:
            pairs.append((entry, plan_config(base, entry)))
        except ValueError as error:
            left_out[entry.label] = f"not valid for this model: {error}"
    return pairs


def check_methods(methods: list[str] | None) -> None:
    known = sorted(REDUCTION_METHODS) + sorted(ATTENTION_REUSE_METHODS)
    unknown = sorted(set(methods or []) - set(known))
    if unknown:
        hint = did_you_mean(unknown[0], known)
        raise ValueError(f"--methods {unknown} are not registered methods; allowed: {known}.{hint}")


# ----------------------------------------------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Target:
    """What the chosen plan must meet: one of ``target_speedup``, ``target_gflops``, ``max_accuracy_drop``."""

    kind: str
    value: float

    def check(self) -> None:
        if self.kind not in TARGETS or not math.isfinite(self.value):
            raise ValueError(f"target {self.kind} = {self.value} is not one of {list(TARGET_FLAGS.values())}.")
        if self.value < 0 or (self.value == 0 and self.kind != "max_accuracy_drop"):
            raise ValueError(f"{TARGET_FLAGS[self.kind]} {self.value} must be positive.")

    def met_by(self, row: dict, stock_accuracy: float) -> bool:
        if self.kind == "target_speedup":
            return row["measured_speedup"] >= self.value
        if self.kind == "target_gflops":
            return row["gflops"] <= self.value
        return stock_accuracy - row["accuracy"] <= self.value + 1e-12

    def describe(self) -> str:
        return f"{TARGET_FLAGS[self.kind]} {self.value:g}"


def check_gflops_reachable(candidates: list[tuple[PlanEntry, Any]], target: Target) -> None:
    """A FLOPs target that no candidate meets is known before anything runs: say which candidate came closest."""
    if target.kind != "target_gflops" or not candidates:
        return
    gflops = {entry.label: count_flops(config).gflops for entry, config in candidates}
    closest = min(gflops, key=gflops.get)
    if gflops[closest] > target.value:
        raise ValueError(f"no candidate meets {target.describe()}; the closest is {closest} at "
                         f"{gflops[closest]:.4g} GFLOPs.")  # fmt: skip


def _row(entry: PlanEntry, config: Any, accuracy_value: float, stock_accuracy: float, ratios: list) -> dict:
    report = count_flops(config)
    measured = float(np.median(ratios))
    return {
        "label": entry.label, "method": (entry.token_reduction or entry.attention_reuse)["method"],
        "token_reduction": config.token_reduction, "attention_reuse": config.attention_reuse,
        "accuracy": accuracy_value, "accuracy_drop": stock_accuracy - accuracy_value,
        "gflops": report.gflops, "stock_gflops": report.stock_gflops, "ideal_speedup": report.ideal_speedup,
        "measured_speedup": measured, "fraction_of_ideal": measured / report.ideal_speedup,
        "spread": [min(ratios), max(ratios)], **noise_of(ratios), "round_speedups": list(ratios),
        "others_load": getattr(ratios, "others_load", None),
        "tokens_per_layer": [list(counts) for counts in report.token_counts],
    }  # fmt: skip


def pareto_front(rows: list[dict]) -> list[dict]:
    """The rows no other row beats on both measured speed-up and accuracy, fastest first."""
    front, best = [], -math.inf
    for row in sorted(rows, key=lambda r: (-r["measured_speedup"], -r["accuracy"], r["label"])):
        if row["accuracy"] > best:
            front.append(row)
            best = row["accuracy"]
    return front


def choose(rows: list[dict], target: Target, stock_accuracy: float) -> dict:
    """The chosen row: the most accurate that meets a speed or FLOPs target (ties: the faster), or the fastest
    within an accuracy drop (ties: the more accurate). Raises ValueError naming the closest row if none meets it."""
    meeting = [row for row in rows if target.met_by(row, stock_accuracy)]
    if target.kind == "max_accuracy_drop":
        key = lambda r: (r["measured_speedup"], r["accuracy"])  # noqa: E731
    else:
        key = lambda r: (r["accuracy"], r["measured_speedup"])  # noqa: E731
    if meeting:
        return max(meeting, key=key)
    if target.kind == "target_speedup":
        closest = max(rows, key=lambda r: r["measured_speedup"])
        reached = f"{closest['measured_speedup']:.2f}x measured (accuracy {closest['accuracy']:.3f})"
    elif target.kind == "target_gflops":
        closest = min(rows, key=lambda r: r["gflops"])
        reached = f"{closest['gflops']:.4g} GFLOPs"
    else:
        closest = min(rows, key=lambda r: r["accuracy_drop"])
        reached = f"an accuracy drop of {closest['accuracy_drop']:.3f} ({closest['measured_speedup']:.2f}x)"
    raise ValueError(f"no evaluated candidate meets {target.describe()}; the closest is {closest['label']} at "
                     f"{reached}. Results are in the results folder.")  # fmt: skip


@dataclass
class SearchSettings:
    """How to evaluate: images per batch, timing rounds, device, dtype, seed, time budget, progress bar."""

    batch_size: int = 32
    rounds: int = 5
    warmup: int = 1
    device: torch.device | None = None
    dtype: torch.dtype = field(default_factory=lambda: torch.float32)
    seed: int = 0
    time_budget: float | None = None  # seconds from the start of the search; None: no limit
    progress: bool = True

    def check(self) -> None:
        for name in ("batch_size", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} must be at least 1.")
        if self.warmup < 0:
            raise ValueError(f"--warmup {self.warmup} must be at least 0.")
        if self.time_budget is not None and not self.time_budget >= 0:
            raise ValueError(f"--time-budget {self.time_budget} must be a number of seconds, at least 0.")


def _bench_settings(settings: SearchSettings) -> Any:
    return BenchmarkSettings(
        device=settings.device or torch.device("cpu"), dtype=settings.dtype, batch_size=settings.batch_size,
        rounds=settings.rounds, warmup=settings.warmup, modes=("inference",), seed=settings.seed, progress=False,
    )  # fmt: skip


def _prepared_models(base: Any, candidates: list, state_dict: dict, settings: SearchSettings):
    """The stock model and every candidate's model, sharing the checkpoint's weights; the trained parts of the
    checkpoint's own plan come from ``state_dict``. A model left with untrained parameters would be a bug in
    `build_candidates`, which only offers learned methods the checkpoint holds: it stops the search."""
    device = settings.device or torch.device("cpu")
    stock, models = build_models(base, candidates, state_dict, settings.seed, device, settings.dtype)
    for entry, _ in candidates:
        missing, _ = models[entry.label].load_state_dict(state_dict, strict=False)
        if missing:
            raise RuntimeError(f"{entry.label}: the checkpoint lacks the trained parameters {missing[:3]}.")
    return stock, models


def mildest_points(candidates: list) -> int:
    """How many candidates a search evaluates whatever its time budget: up to the mildest point of every method
    (the candidates interleave the methods, mildest points first), so no method goes untried."""
    seen, floor = set(), 0
    for index, (entry, _) in enumerate(candidates):
        method = (entry.token_reduction or entry.attention_reuse)["method"]
        if method not in seen:
            seen.add(method)
            floor = index + 1
    return floor


def search(config: Any, state_dict: dict, candidates: list, images: tuple, settings: SearchSettings) -> dict:
    """Evaluates the candidates in order until they are done or the time budget is spent (the mildest point of
    every method is evaluated whatever the budget: `mildest_points`).

    Args:
        config: the checkpoint's config; state_dict: its weights.
        candidates: ``(entry, config)`` pairs from `build_candidates`.
        images: held-out ``(pixel_values, labels)``.

    Returns:
        ``{"stock_accuracy", "rows", "evaluated", "budget_reached"}``; rows are in evaluation order.
    """
    from tqdm.auto import tqdm

    settings.check()
    start, floor = time.monotonic(), mildest_points(candidates)
    base = plan_config(config, PlanEntry("base"))
    stock, models = _prepared_models(base, candidates, state_dict, settings)
    stock_accuracy = accuracy(stock, *images, settings.batch_size)
    bench, rows, budget_reached = _bench_settings(settings), [], False
    bar = tqdm(candidates, desc="tuning", unit="plan", disable=not settings.progress)
    for entry, plan in bar:
        spent = time.monotonic() - start
        if len(rows) >= floor and settings.time_budget is not None and spent > settings.time_budget:
            budget_reached = True
            break
        model = models.pop(entry.label)
        value = accuracy(model, *images, settings.batch_size)
        ratios = measure_forward(stock, {entry.label: model}, base, bench, bench.batch_size, bench.rounds, "")
        rows.append({**_row(entry, plan, value, stock_accuracy, ratios[entry.label]),
                     "source": "checkpoint" if entry.label.endswith(OWN) else "training-free"})  # fmt: skip
        bar.set_postfix_str(f"{entry.label}: acc {value:.3f}, {rows[-1]['measured_speedup']:.2f}x")
        del model
    bar.close()
    return {"stock_accuracy": stock_accuracy, "rows": rows, "evaluated": len(rows), "budget_reached": budget_reached}


# ----------------------------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------------------------


def format_front(result: dict, chosen: dict | None, everything: bool = False) -> str:
    """A markdown table of the Pareto front (or of every candidate), fastest first; the chosen plan is marked."""
    lines = [
        "| plan | accuracy | Δ vs stock | measured speed-up (spread) | GFLOPs | ideal | MLP tokens per layer | |",
        "|---|---:|---:|---:|---:|---:|---|---|",
        f"| stock ViT | {result['stock_accuracy']:.3f} | | 1.00x | {result['rows'][0]['stock_gflops']:.4g} | 1.00x"
        " | | |",
    ]
    front = result["rows"] if everything else pareto_front(result["rows"])
    off_front = [] if chosen is None or chosen in front else [chosen]  # a FLOPs target may choose off the front
    for row in sorted(front + off_front, key=lambda r: -r["measured_speedup"]):
        low, high = row["spread"]
        mark = "" if row is not chosen else "**chosen**" + (" (off the front)" if off_front else "")
        lines.append(
            f"| {row['label']} | {row['accuracy']:.3f} | {row['accuracy'] - result['stock_accuracy']:+.3f} | "
            f"{row['measured_speedup']:.2f}x ({low:.2f}-{high:.2f}){' noisy' if row.get('noisy') else ''} | "
            f"{row['gflops']:.4g} | "
            f"{row['ideal_speedup']:.2f}x | {compact_counts(row['tokens_per_layer'])} | {mark} |"
        )
    return "\n".join(lines)


def describe(result: dict, chosen: dict | None, target: Target) -> str:
    """How the front was measured, what was left out, and the choice."""
    setup = result["setup"]
    text = (
        f"{result['evaluated']} of {result['candidates']} candidates evaluated"
        + (" (time budget reached)" if result["budget_reached"] else "")
        + f"; accuracy on {setup['images']} held-out images ({setup['data']}), no training; speed-ups are medians "
        f"of {setup['rounds']} paired rounds against stock ViT with the same weights (batch {setup['batch_size']}, "
        f"{setup['dtype']}, {setup['device']}); {len(pareto_front(result['rows']))} plans on the front."
    )
    noisy = [row["label"] for row in result["rows"] if row.get("noisy")]
    if noisy:
        text += (
            f"\nnoisy: {len(noisy)} candidate(s) whose timed rounds spread over more than 30% of their median "
            f"({', '.join(noisy)}); measure again with more --rounds or on a quieter machine before trusting them."
        )
    others = [row["others_load"] for row in result["rows"] if row.get("others_load") is not None]
    if others and max(others) > BUSY_OTHERS:
        text += (
            f"\nbusy: other processes kept up to {max(others):.0%} of the CPU busy while candidates were timed; the "
            "measured speed-ups, and a choice that depends on them, are unreliable: tune again on an idle machine."
        )
    layers = setup.get("layers")
    if isinstance(layers, int) and layers < SHALLOW:
        text += (
            f"\nshallow model ({layers} layers): each method's default layers are its official 12-layer placement "
            "scaled to this depth, so the reductions start within the first layers, before the model has ranked its "
            "tokens; training-free, the milder points hold accuracy; for the stronger ones fine-tune with the plan in "
            "place (docs/accuracy.md, 'Which layers and keep rates hold accuracy')."
        )
    if result["left_out"]:
        text += "\nleft out: " + "; ".join(f"{name} ({why})" for name, why in result["left_out"].items())
    choice = f"{chosen['label']}" if chosen else "none"
    return text + f"\ntarget {target.describe()}: chosen {choice}"


def plot_front(result: dict, chosen: dict | None, path: str, target: Target) -> str:
    """Accuracy against measured speed-up: every candidate (colour by method), the front, the choice, stock ViT."""
    from ..visualization import _colour_by, _finish, _pyplot

    plt, rows = _pyplot(), result["rows"]
    colour = _colour_by(sorted({row["method"] for row in rows}))
    figure, axes = plt.subplots(figsize=(8, 6), dpi=120)
    for method in sorted({row["method"] for row in rows}):
        mine = [row for row in rows if row["method"] == method]
        axes.plot([r["measured_speedup"] for r in mine], [r["accuracy"] for r in mine], "o", alpha=0.7,
                  color=colour(method), label=method)  # fmt: skip
    front = sorted(pareto_front(rows), key=lambda r: r["measured_speedup"])
    axes.plot([r["measured_speedup"] for r in front], [r["accuracy"] for r in front], "k-", linewidth=1,
              label="Pareto front")  # fmt: skip
    for row in front:
        axes.annotate(row["label"], (row["measured_speedup"], row["accuracy"]), textcoords="offset points",
                      xytext=(6, 4), fontsize=7)  # fmt: skip
    axes.plot([1.0], [result["stock_accuracy"]], "k*", markersize=14, label="stock ViT")
    if chosen is not None:
        axes.plot([chosen["measured_speedup"]], [chosen["accuracy"]], "o", markersize=16, fillstyle="none",
                  color="red", markeredgewidth=2, label=f"chosen: {chosen['label']}")  # fmt: skip
    if target.kind == "target_speedup":
        axes.axvline(target.value, color="grey", linestyle="--", linewidth=1, label=target.describe())
    elif target.kind == "max_accuracy_drop":
        axes.axhline(result["stock_accuracy"] - target.value, color="grey", linestyle="--", linewidth=1,
                     label=target.describe())  # fmt: skip
    axes.margins(x=0.15, y=0.08)  # room for the labels of the front
    axes.set(xlabel="measured speed-up vs stock ViT (inference, same weights)", ylabel="held-out accuracy")
    axes.set(title=f"plans for {os.path.basename(os.path.normpath(result['setup']['model']))} (no training)")
    return _finish(plt, figure, axes, path)


def write_results(result: dict, chosen: dict | None, target: Target, results_dir: str) -> dict[str, str]:
    """``tune.json`` (every row, ``on_front``, the choice, the setup), ``tune.md`` and ``tune.png``."""
    os.makedirs(results_dir, exist_ok=True)
    paths = {kind: os.path.join(results_dir, f"tune.{kind}") for kind in ("json", "md", "png")}
    front = {row["label"] for row in pareto_front(result["rows"])}
    rows = [{**row, "on_front": row["label"] in front} for row in result["rows"]]
    record = {**provenance(result.get("command")), **result, "rows": rows, "target": {target.kind: target.value},
              "chosen": chosen}  # fmt: skip
    with open(paths["json"], "w") as file:
        json.dump(record, file, indent=2)
    with open(paths["md"], "w") as file:
        command = f"\n\ncommand: `{result['command']}`" if result.get("command") else ""
        file.write(format_front(result, chosen) + "\n\n" + describe(result, chosen, target) + command + "\n\n")
        file.write("Every candidate:\n\n" + format_front(result, chosen, everything=True) + "\n")
    plot_front(result, chosen, paths["png"], target)
    return paths


def write_checkpoint(source: str, output: str, chosen: dict, record: dict) -> str:
    """A copy of the checkpoint with the chosen plan in its config: the weights, the remote code, the image
    processor, and ``tune_choice.json`` (the chosen row, the target, the stock accuracy and the command)."""
    import shutil

    model = _tuned_class().from_pretrained(
        source, token_reduction=chosen["token_reduction"], attention_reuse=chosen["attention_reuse"]
    )
    model.save_pretrained(output)
    if os.path.isdir(source):  # the image processor; not the old results, card or training arguments
        for name in sorted(os.listdir(source)):
            if name.endswith("processor_config.json") and os.path.isfile(os.path.join(source, name)):
                shutil.copy2(os.path.join(source, name), os.path.join(output, name))
    with open(os.path.join(output, "tune_choice.json"), "w") as file:
        json.dump({"chosen": chosen, **record}, file, indent=2)
    return output


# ----------------------------------------------------------------------------------------------------------------
# The checkpoint
# ----------------------------------------------------------------------------------------------------------------


def _tuned_class() -> type:
    """The class the tuner evaluates: the ViT classifier (the only family row with the ``tune`` capability)."""
    rows = [row for row in FAMILIES.values() if row.can("tune")]
    return rows[0].model_class()


def load_checkpoint(model: str) -> tuple[Any, dict]:
    """The checkpoint's config (with its plans) and weights."""
    try:
        loaded = _tuned_class().from_pretrained(model)
    except OSError as error:
        raise ValueError(f"--model {model}: cannot load it ({str(error).splitlines()[0]}).") from None
    return loaded.config, loaded.state_dict()
