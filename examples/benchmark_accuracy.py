"""Accuracy against speed for every token-reduction method, on the embedded cluttered digits (no download).

One command:

    python examples/benchmark_accuracy.py --output-dir docs/results/accuracy   # the full benchmark
    python examples/benchmark_accuracy.py --tiny --output-dir /tmp/acc         # a small version for CI

The full run takes about 45 minutes on a 2-core CPU, the base ViT included (``--base-cache FILE`` keeps it for
reruns); measure on an otherwise idle machine.

It trains a small ViT from scratch on the cluttered digits (`hf_tokenprune.data`), then, for every registered
method at three of its operating points and the plan nearest 1.5x ideal speed-up (and SkipAt attention reuse,
when registered), measures

- the validation accuracy with the trained weights as they are (zero-shot) and after a short fine-tune with the
  plan in place, through the `Trainer` a user builds (`TokenPruneTrainer`; `DynamicViTTrainer` and EViT's
  `trainer_arguments` for the methods with an official recipe; see `trainer_for`), against the stock model
  fine-tuned the same way; every training here, the base model's included, goes through that path, so the numbers
  are the ones users get; zero-shot rows of freshly initialised selectors are marked untrained; SkipAt's default
  point also trained from scratch as the base, its paper's protocol (`train_from_scratch`);
- the FLOPs and ideal speed-up (`hf_tokenprune.flops`);
- the measured inference speed-up against stock `ViTForImageClassification` with the same weights, paired and
  interleaved in one process (`hf_tokenprune.measure`).

It writes ``BENCHMARKS.md`` (the table and the machine it ran on), ``accuracy_vs_speedup.png`` (the Pareto
picture) and ``accuracy_benchmark.json`` into ``--output-dir`` (default ``docs/results/accuracy``).
"""

import argparse
import copy
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from hf_tokenprune import REDUCTION_METHODS, TokenPruneViTConfig, TokenPruneViTForImageClassification
from hf_tokenprune.data import cluttered_digits_arrays
from hf_tokenprune.flops import count_flops
from hf_tokenprune.measure.benchmark import BenchmarkSettings, machine_info, run_benchmark
from hf_tokenprune.measure.devices import parse_device
from hf_tokenprune.training import init_sincos_position_embeddings
from hf_tokenprune.training.recipes import OFFICIAL_FINETUNES
from hf_tokenprune.visualization import plot_kept_tokens

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy_report import (  # noqa: E402  (BENCHMARKS.md and the targets: examples/accuracy_report.py)
    COMPARED,
    SCRATCH,
    _keep_rate,
    table_lines,
    write_outputs,
)

SETTINGS = ("zero-shot", "fine-tuned")


@dataclass
class Recipe:
    """Model size and training lengths; ``--tiny`` shrinks everything so that a CI test runs it."""

    canvas_size: int = 64
    patch_size: int = 8
    hidden_size: int = 96
    num_hidden_layers: int = 4  # the main job's model (examples/run_image_classification.py)
    num_attention_heads: int = 3
    intermediate_size: int = 192
    copies: int = 6  # each training digit rendered this many times, at different places: more data, less overfitting
    eval_copies: int = 4  # each validation digit rendered this many times: 1,436 images, a steadier accuracy
    epochs: int = 8
    learning_rate: float = 1e-3  # 2e-3 stalls this ViT near 0.77 accuracy; 1e-3 reaches 0.92 in 8 epochs
    finetune_epochs: int = 2
    finetune_learning_rate: float = 5e-4
    batch_size: int = 32
    max_train: int | None = None
    max_eval: int | None = None
    operating_points: int = 3
    bench_batch_size: int = 64
    bench_rounds: int = 5
    target_seeds: int = 3  # fine-tunes (seeds) of stock, DynamicViT and EViT at keep 0.7, for their comparison


TINY = dict(
    canvas_size=32, patch_size=4, hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
    copies=1, eval_copies=1, epochs=1,
    finetune_epochs=1, batch_size=32, max_train=192, max_eval=96, operating_points=2, bench_batch_size=8,
    bench_rounds=1, target_seeds=2,
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Data, training, evaluation
# ----------------------------------------------------------------------------------------------------------------


def load_data(recipe: Recipe, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Cluttered digits as normalised (N, 3, H, W) tensors (mean and std 0.5, as ViTImageProcessor) and labels."""
    arrays = cluttered_digits_arrays(
        seed=seed, canvas_size=recipe.canvas_size, copies=recipe.copies, eval_copies=recipe.eval_copies
    )
    limits = {"train": recipe.max_train, "validation": recipe.max_eval}
    data = {}
    for split, (images, labels) in arrays.items():
        images, labels = images[: limits[split]], labels[: limits[split]]
        pixels = torch.from_numpy((images - 0.5) / 0.5).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        data[split] = (pixels, torch.from_numpy(labels))
    return data


def base_config(recipe: Recipe, **plans: Any) -> TokenPruneViTConfig:
    return TokenPruneViTConfig(
        image_size=recipe.canvas_size, patch_size=recipe.patch_size, hidden_size=recipe.hidden_size,
        num_hidden_layers=recipe.num_hidden_layers, num_attention_heads=recipe.num_attention_heads,
        intermediate_size=recipe.intermediate_size, num_labels=10, **plans,
    )  # fmt: skip


class Examples(torch.utils.data.Dataset):
    """(pixels, labels) tensors as the `Trainer`'s examples: ``{"pixel_values", "labels"}``."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor):
        self.pixels, self.labels = pixels, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixels[index], "labels": self.labels[index]}


def trainer_for(model, data, recipe: Recipe, epochs: int, seed: int, output_dir: str, progress: bool = True,
                method: str | None = None, learning_rate: float | None = None):  # fmt: skip
    """The `Trainer` a user builds to train ``model`` on ``data`` (the path docs/training.md documents), not a loop
    of our own: `TokenPruneTrainer` with AdamW (weight decay 0.05), a cosine schedule after a linear warm-up over a
    tenth of the steps and gradients clipped at norm 1, at ``learning_rate`` (default: the recipe's fine-tune rate).

    ``method`` with an official fine-tune (`hf_tokenprune.training.recipes.OFFICIAL_FINETUNES`) takes its
    `trainer_arguments`, rates relative to the base model's training rate: EViT at 0.04 of it (its 2e-5 after DeiT's
    5e-4), cosine to 0.025 of that, weight decay 1e-6, no warm-up; DynamicViT through `DynamicViTTrainer` (predictors
    at the base's rate, backbone at 0.01 of it and frozen for the first 5/30 of the steps, as many warming up, cosine
    to 0.001 of the peak, the frozen model as teacher: CE + 2 ratio + 0.5 KL + 0.5 token MSE).
    """
    from transformers import TrainingArguments

    from hf_tokenprune.training import DynamicViTTrainer, TokenPruneTrainer, trainer_arguments

    official = OFFICIAL_FINETUNES.get(method)
    schedule = {"learning_rate": learning_rate or recipe.finetune_learning_rate, "weight_decay": 0.05,
                "warmup_steps": 0.1, "lr_scheduler_type": "cosine"}  # fmt: skip
    if official is not None:
        schedule = trainer_arguments(method, recipe.learning_rate)
    args = TrainingArguments(
        output_dir=output_dir, num_train_epochs=epochs, per_device_train_batch_size=recipe.batch_size, seed=seed,
        data_seed=seed, max_grad_norm=1.0, report_to="none", save_strategy="no", logging_strategy="no",
        disable_tqdm=not progress, use_cpu=True, dataloader_num_workers=0, **schedule,
    )  # fmt: skip
    trainer_class = DynamicViTTrainer if official is not None and official.distill else TokenPruneTrainer
    return trainer_class(model=model, args=args, train_dataset=Examples(*data))


def train(model, data, recipe: Recipe, epochs: int, seed: int, desc: str, progress: bool = True,
          method: str | None = None, learning_rate: float | None = None) -> None:  # fmt: skip
    """Trains ``model`` on ``data`` with `trainer_for`'s `Trainer` and leaves it in eval mode."""
    import tempfile

    if progress:
        print(desc, flush=True)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer_for(model, data, recipe, epochs, seed, output_dir, progress, method, learning_rate).train()
    model.eval()


def evaluate(model, data, batch_size: int = 256) -> float:
    """Top-1 accuracy on ``data``."""
    pixels, labels = data
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            logits = model(pixel_values=pixels[start : start + batch_size]).logits
            correct += int((logits.argmax(-1) == labels[start : start + batch_size]).sum())
    return correct / len(labels)


# ----------------------------------------------------------------------------------------------------------------
# Operating points
# ----------------------------------------------------------------------------------------------------------------


def spread(strengths: tuple, count: int) -> list:
    """``count`` of a method's operating points, evenly spread from its mildest to its strongest (both kept)."""
    if count >= len(strengths):
        return list(strengths)
    if count == 1:
        return [strengths[-1]]
    step = (len(strengths) - 1) / (count - 1)
    return [strengths[round(index * step)] for index in range(count)]


# Variants of a method worth their own line (another training mode or module), by method: {line: plan options}.
VARIANTS: dict[str, dict[str, dict]] = {}


TARGET_SPEEDUP = 1.5  # the column every method is compared at: the plan nearest this ideal speed-up
STRENGTHS = [round(0.05 * step, 2) for step in range(2, 19)]  # 0.1 ... 0.9: where `near_target` looks


def entry_of(cls, plan: dict) -> dict:
    """The config keywords of a plan: a token-reduction plan, or an attention-reuse plan with no token reduction."""
    if cls.method in REDUCTION_METHODS:
        return {"token_reduction": plan}
    return {"token_reduction": None, "attention_reuse": plan}


def near_target(cls, recipe: Recipe, config) -> dict | None:
    """The method's plan whose ideal speed-up on this model is nearest `TARGET_SPEEDUP` (in ratio), its strength
    (the scale of its ``operating_points``) searched over `STRENGTHS`; an attention-reuse method over its own points
    only (its paper reuses at most half the layers); None for a method without operating points. A shallow model
    may not let a method get there: the row shows the ideal it reaches."""
    if not cls.operating_points:
        return None
    best = None
    for strength in STRENGTHS if cls.method in REDUCTION_METHODS else cls.operating_points[1]:
        try:
            plan = cls.operating_point(strength, config)
            ideal = count_flops(base_config(recipe, **entry_of(cls, plan))).ideal_speedup
        except ValueError:  # a strength this model cannot hold (ToMe merging more tokens than a layer has)
            continue
        distance = abs(math.log(ideal / TARGET_SPEEDUP))
        if best is None or distance < best[0] - 1e-9:
            best = (distance, plan)
    return best and best[1]


def method_points(cls, recipe: Recipe, config) -> list[dict]:
    """A method's plans, mildest to strongest: three of its own operating points (its class's
    ``operating_points``) evenly spread from its mildest to its strongest, and the plan nearest `TARGET_SPEEDUP`
    (`near_target`); with ``recipe.operating_points`` 2 (--tiny), the middle one and the one nearest the target;
    with 1, that one. Its defaults if it declares none."""
    if not cls.operating_points:
        return [{"method": cls.method}]
    own = [cls.operating_point(strength, config) for strength in spread(cls.operating_points[1], 3)]
    target = near_target(cls, recipe, config)
    plans = {3: own + [target], 2: own[1:2] + [target], 1: [target]}[min(recipe.operating_points, 3)]
    ideal = [count_flops(base_config(recipe, **entry_of(cls, plan))).ideal_speedup for plan in plans]
    plans = [plans[index] for index in sorted(range(len(plans)), key=lambda index: ideal[index])]
    return [plan for index, plan in enumerate(plans) if plan not in plans[:index]]


def operating_points(recipe: Recipe) -> list[tuple[str, str, dict]]:
    """(method, operating point, wrapped plan entry) for every registered method and attention-reuse method, at the
    operating points each method's class declares (a new method shows up with its own)."""
    from hf_tokenprune.models.methods import ATTENTION_REUSE_METHODS

    config = base_config(recipe)
    points = []
    for method, cls in sorted(REDUCTION_METHODS.items()):
        lines = {method: {}, **VARIANTS.get(method, {})}  # a variant (another training mode) is its own line
        for line, extra in lines.items():
            for plan in method_points(cls, recipe, config):
                options = {key: value for key, value in plan.items() if key != "method"}
                name = " ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
                points.append((line, name, {"token_reduction": {**plan, **extra}}))
    for method, cls in sorted(ATTENTION_REUSE_METHODS.items()):
        for plan in method_points(cls, recipe, config):
            options = " ".join(f"{k}={v}" for k, v in plan.items() if k != "method") or "defaults"
            points.append((method, options, {"token_reduction": None, "attention_reuse": plan}))
    return points


def plan_model(recipe: Recipe, entry: dict, weights: dict, seed: int) -> TokenPruneViTForImageClassification:
    """A model with the plan and the base weights; the plan's own new parameters are initialised from ``seed``."""
    torch.manual_seed(seed)
    model = TokenPruneViTForImageClassification(base_config(recipe, **entry))
    _, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise RuntimeError(f"base weights {unexpected[:3]} do not fit the plan's model.")
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------------------------


def finetune(model, recipe: Recipe, data, seed: int, desc: str, progress: bool = True,
             method: str | None = None) -> None:  # fmt: skip
    """The same short fine-tune for every plan (``recipe.finetune_epochs`` through the `Trainer`, `trainer_for`),
    with the method's official recipe where it has one; ``method`` fine-tunes a model (the stock one) with that
    method's recipe, by default the model's own plan's."""
    method = method or (model.config.token_reduction or {}).get("method")
    train(model, data["train"], recipe, recipe.finetune_epochs, seed, desc, progress, method)


def train_base(recipe: Recipe, data, seed: int, progress: bool = True) -> tuple[dict, dict[str, float]]:
    """The base ViT's weights, and the stock accuracy before and after the same fine-tune the plans get."""
    torch.manual_seed(seed)
    base = TokenPruneViTForImageClassification(base_config(recipe))
    init_sincos_position_embeddings(base)  # from scratch, a 2-D sine-cosine start makes the small ViT learn faster
    train(base, data["train"], recipe, recipe.epochs, seed, "training the base ViT", progress,
          learning_rate=recipe.learning_rate)  # fmt: skip
    stock = {"zero-shot": evaluate(base, data["validation"])}
    weights = copy.deepcopy(base.state_dict())
    for method in OFFICIAL_FINETUNES:  # the stock model fine-tuned as each recipe fine-tunes its method
        model = plan_model(recipe, {}, weights, seed)
        finetune(model, recipe, data, seed, f"fine-tune stock ({method}'s recipe)", progress, method)
        stock[f"fine-tuned {method}"] = evaluate(model, data["validation"])
    finetune(base, recipe, data, seed, "fine-tune stock", progress)
    stock["fine-tuned"] = evaluate(base, data["validation"])
    return weights, stock


# Recipe fields that change neither the base nor the stock accuracies (seed 0) kept with it.
NOT_BASE = ("operating_points", "bench_batch_size", "bench_rounds", "target_seeds")


def cached_base(recipe: Recipe, data, seed: int, path: str | None, progress: bool = True):
    """`train_base`, read from ``path`` when it holds a base trained with the same recipe and seed, else trained and
    written there (so reruns of the benchmark do not pay for the base again)."""
    key = {**{k: v for k, v in asdict(recipe).items() if k not in NOT_BASE}, "seed": seed}
    if path and os.path.exists(path):
        saved = torch.load(path, weights_only=True)
        if saved["key"] == json.dumps(key, sort_keys=True):
            return saved["weights"], saved["stock"]
    weights, stock = train_base(recipe, data, seed, progress)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.save({"key": json.dumps(key, sort_keys=True), "weights": weights, "stock": stock}, path)
    return weights, stock


def evaluate_point(
    recipe: Recipe, method: str, point: str, entry: dict, weights: dict, data, seed: int, stock, progress: bool = True,
    scratch: bool = False,
):  # fmt: skip
    """Zero-shot and fine-tuned rows of one operating point (with ``scratch``, also trained from scratch), and its
    fine-tuned model.

    A zero-shot row whose selector (DynamicViT's predictor, Cropr's scorer) is freshly initialised is marked
    ``untrained``: it ranks tokens arbitrarily, so it says nothing about the method.
    """
    model = plan_model(recipe, entry, weights, seed)
    report = count_flops(model.config)
    untrained = untrained_selector(model, weights)
    accuracy = {"zero-shot": evaluate(model, data["validation"])}
    share = {"zero-shot": digit_share(model, data["validation"])}
    finetune(model, recipe, data, seed, f"fine-tune {method} {point}", progress)
    accuracy["fine-tuned"] = evaluate(model, data["validation"])
    share["fine-tuned"] = digit_share(model, data["validation"])
    if scratch:  # SkipAt's own protocol: trained from scratch like the base, against the base
        scratch = train_from_scratch(recipe, entry, data, seed, f"train {method} {point} from scratch", progress)
        accuracy[SCRATCH], share[SCRATCH] = evaluate(scratch, data["validation"]), None
    # the stock model fine-tuned as this method is (its own recipe, if it has one); trained from scratch: the base
    tuned = stock.get(f"fine-tuned {method}", stock["fine-tuned"])
    reference = {**stock, "fine-tuned": tuned, SCRATCH: stock["zero-shot"]}
    rows = [
        {"method": method, "operating_point": point, "setting": setting, "accuracy": accuracy[setting],
         "accuracy_delta": accuracy[setting] - reference[setting], "gflops": report.gflops,
         "stock_gflops": report.stock_gflops, "ideal_speedup": report.ideal_speedup, "entry": entry,
         "untrained": untrained and setting == "zero-shot", "digit_share": share[setting]}
        for setting in accuracy
    ]  # fmt: skip
    return rows, model


def train_from_scratch(recipe: Recipe, entry: dict, data, seed: int, desc: str, progress: bool = True):
    """SkipAt's official protocol (Qualcomm-AI-research/skip-attention; the paper trains its ViT-T/S from scratch):
    the whole model with the plan, Phi included and freshly initialised like every other layer (``init="random"``:
    the official code has no identity start), trained from scratch exactly as the base model (epochs, learning
    rate, seed, data order), so that the base is the unreduced model trained the same way."""
    plan = {**entry["attention_reuse"], "init": "random"}
    torch.manual_seed(seed)
    model = TokenPruneViTForImageClassification(base_config(recipe, **{**entry, "attention_reuse": plan}))
    init_sincos_position_embeddings(model)
    train(model, data["train"], recipe, recipe.epochs, seed, desc, progress, learning_rate=recipe.learning_rate)
    return model


DIGIT_BRIGHTNESS = 0.6  # brighter than any clutter (drawn at half brightness at most): a digit stroke


def digit_share(model, data, batch_size: int = 256) -> tuple[float, float] | None:
    """(share of digit patches among the patch tokens the most reduced layer keeps, share among all patches: what
    random selection keeps on average), or None for a plan that keeps no subset of patches (merging, reuse only)."""
    pixels, _ = data
    rows, columns = model.config.patch_grid
    raw = pixels[:, 0] * 0.5 + 0.5  # (N, H, W) back to [0, 1]
    patches = raw.reshape(len(raw), rows, raw.shape[1] // rows, columns, raw.shape[2] // columns)
    digit = patches.amax(dim=(2, 4)).flatten(1) > DIGIT_BRIGHTNESS  # (N, patches)
    kept, total = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(digit), batch_size):
            out = model(pixel_values=pixels[start : start + batch_size])
            layer = min(range(len(out.token_counts)), key=lambda i: out.token_counts[i][1])
            positions = out.token_positions[layer][:, 1:]
            if out.token_owner[layer] is not None or positions.shape[1] >= digit.shape[1]:
                return None
            chosen = digit[start : start + batch_size].gather(1, (positions - 1).clamp_min(0))
            kept += float((chosen & (positions > 0)).sum())
            total += int((positions > 0).sum())
    return kept / max(total, 1), float(digit.float().mean())


def untrained_selector(model, weights: dict) -> bool:
    """Whether the plan's token-selection modules (``token_reduction`` parameters) are new, not in ``weights``."""
    return any(".token_reduction." in name and name not in weights for name, _ in model.named_parameters())


def run(recipe: Recipe, seed: int = 0, device: str = "cpu", progress: bool = True, picture_dir: str | None = None,
        base_cache: str | None = None):  # fmt: skip
    """Trains the base model, evaluates every operating point zero-shot and fine-tuned, and measures speed.

    With ``picture_dir``, also saves ``kept_tokens_<method>.png``: what the fine-tuned model of each method's
    strongest operating point keeps on one validation digit. With ``base_cache``, the base model is read from (or
    written to) that file.
    """
    load = {"start": os.getloadavg()[0]}  # the machine's 1-minute load average: how shared it was
    data = load_data(recipe, seed)
    weights, stock = cached_base(recipe, data, seed, base_cache, progress)
    points = operating_points(recipe)
    rows, pictures = [], {}
    reuse = [point for method, point, entry in points if entry.get("attention_reuse")]
    for method, point, entry in points:
        scratch = bool(reuse) and point == reuse[-1]  # SkipAt's default (half the depth) also from scratch
        args = (recipe, method, point, entry, weights, data, seed, stock, progress, scratch)
        point_rows, model = evaluate_point(*args)
        rows += point_rows
        if picture_dir is not None and entry.get("token_reduction"):  # the strongest point (the last) wins
            pictures[method] = kept_tokens_picture(model, data, picture_dir, method, point)
    seeds = seed_repeats(recipe, points, weights, data, seed, rows, stock, progress)
    load["speed_start"] = os.getloadavg()[0]
    speed = measure_speed(recipe, points, weights, seed, device, progress)
    load["speed_end"] = os.getloadavg()[0]
    for row in rows:
        measured = speed[f"{row['method']} {row['operating_point']}"]
        row.update({key: measured[key] for key in ("measured_speedup", "fraction_of_ideal", "spread")})
    return {"recipe": asdict(recipe), "seed": seed, "stock_accuracy": stock, "rows": rows, "pictures": pictures,
            "validation_images": len(data["validation"][1]),
            "seed_accuracy": seeds, "speed_setup": speed["_setup"], "machine": machine_info(parse_device(device)),
            "load": load}  # fmt: skip


def seed_repeats(recipe, points, weights, data, seed: int, rows, stock, progress=True) -> dict[str, list[float]]:
    """Fine-tuned accuracies for seeds ``seed``, ``seed + 1``, ... (``recipe.target_seeds`` of them) of the stock
    model and of DynamicViT and EViT at keep rate 0.7, by label ("stock", "evit keep_rate=0.7"): the first from
    the benchmark's own rows, the others fine-tuned again from the same base (another start of the predictor, another
    data order). One run moves by a point from seed to seed: a single run cannot tell the two methods apart."""
    tuned = {f"{r['method']} {r['operating_point']}": r["accuracy"] for r in rows if r["setting"] == "fine-tuned"}
    chosen = [(m, p, e) for m, p, e in points if m in COMPARED and _keep_rate({"entry": e}) == 0.7]
    runs = {"stock": ({}, [stock["fine-tuned"]])} | {f"{m} {p}": (e, [tuned[f"{m} {p}"]]) for m, p, e in chosen}
    for extra in range(seed + 1, seed + recipe.target_seeds):
        for label, (entry, accuracies) in runs.items():
            model = plan_model(recipe, entry, weights, extra)
            finetune(model, recipe, data, extra, f"fine-tune {label}, seed {extra}", progress)
            accuracies.append(evaluate(model, data["validation"]))
    return {label: accuracies for label, (_, accuracies) in runs.items()}


def kept_tokens_picture(model, data, picture_dir: str, method: str, point: str) -> str:
    """The patches ``model`` keeps on the first validation digit, as a PNG in ``picture_dir``."""
    os.makedirs(picture_dir, exist_ok=True)
    image = data["validation"][0][0].permute(1, 2, 0).numpy() * 0.5 + 0.5  # back to [0, 1] for display
    path = os.path.join(picture_dir, f"kept_tokens_{method}.png")
    return plot_kept_tokens(model, image, path, title=f"{method} {point} (fine-tuned)")


def measure_speed(recipe, points, weights, seed: int, device: str, progress: bool) -> dict[str, dict]:
    """Inference speed-ups of every operating point against stock ViT with the base weights (one paired run)."""
    entries = [{**entry, "label": f"{method} {point}"} for method, point, entry in points]
    settings = BenchmarkSettings(
        device=parse_device(device), batch_size=recipe.bench_batch_size, rounds=recipe.bench_rounds,
        modes=("inference",), seed=seed, progress=progress,
    )  # fmt: skip
    rows = run_benchmark(base_config(recipe), entries, settings, state_dict=weights)
    speed = {row["label"]: row for row in rows}
    speed["_setup"] = {"device": rows[0]["device"], "dtype": rows[0]["dtype"], "batch_size": rows[0]["batch_size"],
                       "rounds": rows[0]["rounds"]}  # fmt: skip
    return speed


# Command line
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a small, fast version (CI): tiny model, few samples")
    parser.add_argument("--output-dir", default="docs/results/accuracy", help="where the results go")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs of the base model")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="fine-tuning epochs per operating point")
    parser.add_argument("--operating-points", type=int, default=None, choices=(1, 2, 3), help="points per method")
    parser.add_argument("--bench-rounds", type=int, default=None, help="rounds of the speed measurement")
    parser.add_argument("--device", default="cpu", help="device of the speed measurement (training runs on the CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--copies", type=int, default=None, help="renderings of each training digit (more data)")
    parser.add_argument("--base-cache", default=None, help="a file to keep the trained base model in across runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    recipe = Recipe(**(TINY if args.tiny else {}))
    for name in ("epochs", "finetune_epochs", "operating_points", "bench_rounds", "copies"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} {value} must be at least 1.")
            setattr(recipe, name, value)
    return recipe


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    recipe = recipe_from_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    progress = not args.no_progress
    results = run(
        recipe, seed=args.seed, device=args.device, progress=progress, picture_dir=args.output_dir,
        base_cache=args.base_cache,
    )  # fmt: skip
    command = "python examples/benchmark_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
    paths = write_outputs(results, args.output_dir, command.strip())
    print("\n".join(table_lines(results["rows"])))
    print(f"wrote {paths['markdown']}, {paths['png']} and {paths['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
