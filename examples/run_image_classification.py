#!/usr/bin/env python
"""Fine-tune a TokenPruneViT image classifier with the Hugging Face Trainer, in the style of transformers'
``examples/pytorch/image-classification/run_image_classification.py``, with the token-reduction recipes of
``hf_tokenprune.training`` (plan schedules, distillation from the unpruned model, SuperViT's elastic step).

With no arguments this is the project's main job: it trains a small ViT from scratch with an EViT plan (cosine
keep-rate warm-up) on the embedded cluttered digits (no download), evaluates the trained weights with and without
the plan, prints accuracy, GFLOPs and measured speed side by side, and writes a folder that loads with
``AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)``:

    python examples/run_image_classification.py

Other data and checkpoints:

    python examples/run_image_classification.py --model_name_or_path google/vit-base-patch16-224 \\
        --dataset_name beans --token_reduction '{"method": "evit", "keep_rate": 0.7}' --keep_rate_schedule constant \\
        --distill --output_dir outputs/beans-evit --num_train_epochs 3 --ignore_mismatched_sizes
    python examples/run_image_classification.py --train_dir data/train --validation_dir data/val ...
    torchrun --nproc_per_node 2 examples/run_image_classification.py ...   # or: accelerate launch --config_file
                                                                           # examples/accelerate_configs/multi_npu.yaml
"""

import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import HfArgumentParser, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils import is_torchvision_available

from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForImageClassification
from hf_tokenprune.measure.devices import provenance
from hf_tokenprune.training import (
    DistillationTrainer,
    DynamicViTTrainer,
    SuperViTTrainer,
    TokenPruneTrainer,
    build_compute_metrics,
    build_schedule,
    init_sincos_position_embeddings,
    operating_points,
    resize_images,
)
from hf_tokenprune.training.recipes import OFFICIAL_FINETUNES

# The main job's model: a small ViT for 64x64 images in 8x8 patches (64 patch tokens + CLS), trained from scratch.
MAIN_JOB_MODEL = dict(
    image_size=64,
    patch_size=8,
    hidden_size=96,
    num_hidden_layers=4,
    num_attention_heads=3,
    intermediate_size=192,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
# Its plan: EViT keeps the half of the patch tokens the CLS token attends to most at layers 1 and 2 and fuses the
# rest into one token (65 -> 34 -> 19 tokens). A digit covers a quarter to a third of its canvas, so what goes is
# mostly background and clutter; the keep rate warms up from 1 over the first half of training (EViT's recipe
# for training from scratch).
MAIN_JOB_PLAN = '{"method": "evit", "layers": [1, 2], "keep_rate": 0.5, "fuse": true}'


@dataclass
class ModelArguments:
    """Which model to train and its plans."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A stock ViT/DeiT or TokenPruneViT checkpoint (folder or Hub id), or a config .json to train from "
            "scratch. Default: the main job's small ViT, from scratch."
        },
    )
    train_from_scratch: bool = field(default=False, metadata={"help": "Only the config of the checkpoint."})
    token_reduction: str | None = field(
        default=MAIN_JOB_PLAN, metadata={"help": 'Token-reduction plan as JSON, e.g. \'{"method": "tome", "r": 8}\'.'}
    )
    attention_reuse: str | None = field(default=None, metadata={"help": "Attention-reuse plan as JSON."})
    image_size: int | None = field(default=None, metadata={"help": "Training image side (default: the model's)."})
    interpolate_pos_encoding: bool = field(default=False, metadata={"help": "Allow another --image_size."})
    position_init: str = field(default="sincos", metadata={"help": "From scratch: sincos or random."})
    ignore_mismatched_sizes: bool = field(default=False, metadata={"help": "New classifier for other labels."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store downloaded checkpoints."})


@dataclass
class DataArguments:
    """Which data: a Hub dataset, image folders, or (default) the embedded cluttered digits."""

    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration name."})
    train_dir: str | None = field(default=None, metadata={"help": "An imagefolder of training images."})
    validation_dir: str | None = field(default=None, metadata={"help": "An imagefolder of validation images."})
    image_column_name: str = field(default="image", metadata={"help": "The column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "The column holding the labels."})
    train_val_split: float = field(default=0.15, metadata={"help": "Validation fraction if there is no split."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the validation set."})
    digits_copies: int = field(default=6, metadata={"help": "Cluttered digits: renders of each training digit."})
    digits_seed: int = field(default=0, metadata={"help": "Cluttered digits: the seed of the rendering."})
    digits_scale: list[int] | None = field(
        default=None,
        metadata={"help": "Cluttered digits: smallest and largest upscaling factor (default: half the canvas side)."},
    )


@dataclass
class RecipeArguments:
    """Token-reduction training recipes and the final comparison."""

    keep_rate_schedule: str = field(default="auto", metadata={"help": "auto, none, constant, cosine or linear."})
    schedule_key: str | None = field(default=None, metadata={"help": "The runtime plan option it moves."})
    schedule_warmup_fraction: float = field(default=0.5, metadata={"help": "Fraction of the run the warm-up takes."})
    schedule_delay_fraction: float = field(default=0.0, metadata={"help": "Fraction of the run before it starts."})
    distill: bool = field(default=False, metadata={"help": "Distil from the unpruned model (or --teacher)."})
    teacher_model_name_or_path: str | None = field(default=None, metadata={"help": "A teacher checkpoint."})
    distill_alpha: float = field(default=0.5, metadata={"help": "Weight of the KL term."})
    distill_temperature: float = field(default=1.0, metadata={"help": "Temperature of the KL term."})
    compare: bool = field(default=True, metadata={"help": "Compare with and without the plan at the end."})
    benchmark_batch_size: int = field(default=64, metadata={"help": "Images per timed call."})
    benchmark_rounds: int = field(default=7, metadata={"help": "Timed rounds per candidate."})


# `TrainingArguments` defaults of the main job; any of them given on the command line wins. (Defaults rather than a
# TrainingArguments subclass, so that the saved training_args.bin unpickles with transformers alone.)
MAIN_JOB_TRAINING_DEFAULTS = {
    "output_dir": "outputs/cluttered-digits-evit",
    "num_train_epochs": "8",
    "learning_rate": "1e-3",
    "weight_decay": "0.05",
    "warmup_steps": "0.1",
    "lr_scheduler_type": "cosine",
    "per_device_train_batch_size": "32",
    "per_device_eval_batch_size": "128",
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "logging_steps": "50",
    "remove_unused_columns": "false",
    "seed": "0",
}


# DynamicViT's official schedule warms up while its backbone is frozen: 5 of 30 epochs (`BackboneFreeze`).
DYNAMICVIT_WARMUP = OFFICIAL_FINETUNES["dynamicvit"].warmup


def parse_json(text: str | None, name: str) -> Any:
    if text is None or text.strip() in ("", "null", "none", "None"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--{name} is not valid JSON ({error}): {text}") from None


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def load_data(data_args: DataArguments, cache_dir: str | None = None):
    """A DatasetDict with ``train`` and ``validation`` splits."""
    import datasets

    if data_args.dataset_name is not None:
        dataset = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    elif data_args.train_dir is not None:
        files = {"train": os.path.join(data_args.train_dir, "**")}
        if data_args.validation_dir is not None:
            files["validation"] = os.path.join(data_args.validation_dir, "**")
        dataset = datasets.load_dataset("imagefolder", data_files=files, cache_dir=cache_dir)
    else:
        from hf_tokenprune.data import load_cluttered_digits

        scale = {}
        if data_args.digits_scale is not None:
            if len(data_args.digits_scale) != 2:
                raise ValueError(f"--digits_scale {data_args.digits_scale} must be two integers (smallest, largest).")
            scale["scale"] = tuple(data_args.digits_scale)
        dataset = load_cluttered_digits(seed=data_args.digits_seed, copies=data_args.digits_copies, **scale)
    if "train" not in dataset:
        raise ValueError(f"The dataset has no 'train' split; it has {list(dataset)}.")
    if "validation" not in dataset:
        split = dataset["train"].train_test_split(data_args.train_val_split, seed=data_args.digits_seed)
        dataset["train"], dataset["validation"] = split["train"], split["test"]
    for name, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if limit is not None:
            dataset[name] = dataset[name].select(range(min(limit, len(dataset[name]))))
    check_columns(dataset, data_args)
    return dataset


def check_columns(dataset, data_args: DataArguments) -> None:
    """A clear error before training for a dataset without images or labels."""
    for split in ("train", "validation"):
        columns = dataset[split].column_names
        for kind, name in (("image", data_args.image_column_name), ("label", data_args.label_column_name)):
            if name not in columns:
                raise ValueError(
                    f"The {split} split has no {kind} column {name!r} (columns: {columns}); a classifier needs "
                    f"labelled images. Pass --{kind}_column_name, or use an imagefolder with one folder per class."
                )
        labels = dataset[split][data_args.label_column_name]
        if any(label is None for label in labels):
            raise ValueError(
                f"The {split} split has images without a label in column {data_args.label_column_name!r}; a "
                "classifier needs labelled images (an imagefolder needs one sub-folder per class)."
            )


def label_names(dataset, label_column: str) -> list[str]:
    feature = dataset["train"].features[label_column]
    if hasattr(feature, "names"):
        return list(feature.names)
    values = sorted(set(dataset["train"][label_column]))
    if values != list(range(len(values))):
        raise ValueError(f"Labels in {label_column!r} must be a ClassLabel or the integers 0..N-1; got {values[:10]}.")
    return [str(v) for v in values]


def build_processor(model_args: ModelArguments, image_size: tuple[int, int]):
    """The checkpoint's image processor, or a ViT one (mean 0.5, std 0.5) for a model from scratch."""
    from transformers import AutoImageProcessor

    if model_args.model_name_or_path and not model_args.model_name_or_path.endswith(".json"):
        try:
            processor = AutoImageProcessor.from_pretrained(
                model_args.model_name_or_path, cache_dir=model_args.cache_dir
            )
            processor.size = {"height": image_size[0], "width": image_size[1]}
            return processor
        except OSError:
            pass  # no preprocessor_config.json: fall through to a fresh one
    if is_torchvision_available():
        from transformers import ViTImageProcessor
    else:  # the same processor without torchvision (what ViTImageProcessor falls back to anyway)
        from transformers import ViTImageProcessorPil as ViTImageProcessor
    return ViTImageProcessor(size={"height": image_size[0], "width": image_size[1]})


def add_transforms(dataset, processor, data_args: DataArguments) -> None:
    """Images become ``pixel_values`` on the fly (``with_transform``), as in the transformers example."""

    def transform(batch):
        images = [image.convert("RGB") for image in batch[data_args.image_column_name]]
        out = {"pixel_values": processor(images, return_tensors="pt")["pixel_values"]}
        out["labels"] = batch[data_args.label_column_name]
        return out

    for split in dataset:
        dataset[split].set_transform(transform)


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples]),
    }


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


def build_config(model_args: ModelArguments, labels: list[str]) -> TokenPruneViTConfig:
    """The model's config with the plans and labels; plan errors (unknown method, layers beyond the checkpoint's
    depth) are ValueErrors raised here, before any weight is loaded."""
    plans = {
        "token_reduction": parse_json(model_args.token_reduction, "token_reduction"),
        "attention_reuse": parse_json(model_args.attention_reuse, "attention_reuse"),
    }
    label_maps = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }
    source = model_args.model_name_or_path
    if source is None:
        return TokenPruneViTConfig(**MAIN_JOB_MODEL, **label_maps, **plans)
    if source.endswith(".json"):
        with open(source) as handle:
            fields = {k: v for k, v in json.load(handle).items() if k not in ("model_type", "architectures")}
        return TokenPruneViTConfig(**{**fields, **label_maps, **plans})
    return TokenPruneViTConfig.from_pretrained(source, cache_dir=model_args.cache_dir, **label_maps, **plans)


def native_size(config: TokenPruneViTConfig) -> tuple[int, int]:
    return (config.image_size,) * 2 if isinstance(config.image_size, int) else tuple(config.image_size)


def check_image_size(config: TokenPruneViTConfig, model_args: ModelArguments) -> tuple[int, int]:
    """The training image size; a size other than the checkpoint's needs --interpolate_pos_encoding."""
    native = native_size(config)
    size = native if model_args.image_size is None else (model_args.image_size,) * 2
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    if size != native and not model_args.interpolate_pos_encoding:
        raise ValueError(
            f"--image_size {size[0]} differs from the checkpoint's image_size {native[0]}: its position embeddings "
            "cover only that size. Pass --interpolate_pos_encoding to interpolate them, or drop --image_size."
        )
    if size[0] % patch:
        raise ValueError(f"--image_size {size[0]} must be a multiple of the patch size {patch}.")
    return size


def build_model(model_args: ModelArguments, config: TokenPruneViTConfig) -> TokenPruneViTForImageClassification:
    source = model_args.model_name_or_path
    if source is None or source.endswith(".json") or model_args.train_from_scratch:
        if model_args.position_init not in ("sincos", "random"):
            raise ValueError(f"--position_init {model_args.position_init!r} is not known; allowed: sincos, random.")
        model = TokenPruneViTForImageClassification(config)
        if model_args.position_init == "sincos":
            init_sincos_position_embeddings(model)
        return model
    return TokenPruneViTForImageClassification.from_pretrained(
        source,
        config=config,
        cache_dir=model_args.cache_dir,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )


def make_schedule(model, recipe: RecipeArguments):
    """The plan schedule callback (None for no plan, a SuperViT plan or --keep_rate_schedule none), checked."""
    plan = model.config.token_reduction
    if plan is None or plan["method"] == "supervit":  # SuperViT draws its keep rates per step
        return None
    schedule = build_schedule(
        recipe.keep_rate_schedule,
        plan,
        key=recipe.schedule_key,
        warmup_fraction=recipe.schedule_warmup_fraction,
        delay_fraction=recipe.schedule_delay_fraction,
    )
    if schedule is not None:
        schedule.check(model)  # a bad key or value fails now, before training
    return schedule


def build_trainer(model, training_args, dataset, processor, recipe: RecipeArguments, interpolate: bool):
    """The Trainer the plan and the recipe call for: SuperViT's for a ``supervit`` plan, DynamicViT's official
    recipe (`DynamicViTTrainer`) for a ``dynamicvit`` plan, distillation with --distill, the plain one otherwise;
    with the plan schedule as a callback."""
    plan = model.config.token_reduction
    schedule = make_schedule(model, recipe)
    collator = (
        collate if not interpolate else (lambda examples: {**collate(examples), "interpolate_pos_encoding": True})
    )
    common = dict(
        model=model,
        args=training_args,
        train_dataset=dataset["train"],
        eval_dataset=dataset["validation"],
        data_collator=collator,
        processing_class=processor,
        compute_metrics=build_compute_metrics(model),
        callbacks=[schedule] if schedule is not None else None,
    )
    if plan is not None and plan["method"] == "supervit":
        return SuperViTTrainer(**common, distill_temperature=recipe.distill_temperature)
    if plan is not None and plan["method"] == "dynamicvit":  # the official recipe: frozen snapshot as teacher, ...
        teacher = _teacher(recipe) or "snapshot"
        return DynamicViTTrainer(**common, teacher_model=teacher)
    if recipe.distill or recipe.teacher_model_name_or_path:
        return DistillationTrainer(
            **common,
            teacher_model=_teacher(recipe),
            distill_alpha=recipe.distill_alpha,
            distill_temperature=recipe.distill_temperature,
        )
    return TokenPruneTrainer(**common)


def _teacher(recipe: RecipeArguments):
    if not recipe.teacher_model_name_or_path:
        return None
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(recipe.teacher_model_name_or_path)


# ----------------------------------------------------------------------------------------------------------------
# The comparison after training
# ----------------------------------------------------------------------------------------------------------------


def _eval_batches(dataset, batch_size: int):
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        yield batch["pixel_values"], batch["labels"]


@torch.inference_mode()
def predict(model, dataset, batch_size: int, image_side: int | None = None, **forward: Any):
    """(predicted labels, true labels) of ``model(pixel_values, **forward)`` on ``dataset``; ``image_side``
    resizes the images (with interpolated position embeddings)."""
    model.eval()
    device = next(model.parameters()).device
    predictions, targets = [], []
    for pixels, labels in _eval_batches(dataset, batch_size):
        pixels = pixels.to(device)
        if image_side is not None:
            pixels = resize_images(pixels, image_side)
            forward = {**forward, "interpolate_pos_encoding": True}
        predictions.append(model(pixel_values=pixels, **forward).logits.argmax(dim=-1).cpu())
        targets.append(labels)
    return torch.cat(predictions), torch.cat(targets)


def compare_with_and_without(model, dataset, recipe: RecipeArguments) -> list[dict[str, Any]]:
    """Accuracy, GFLOPs, measured and ideal speed-up of the plan, the same weights with the plan off, and stock
    `ViTForImageClassification` with the same weights (the speed reference), timed paired and interleaved."""
    from transformers import ViTForImageClassification

    from hf_tokenprune.flops import count_flops
    from hf_tokenprune.measure.benchmark import measure_paired, stock_config
    from hf_tokenprune.measure.report import noise_of, unreliable_reasons
    from hf_tokenprune.measure.timing import Speedups

    stock = ViTForImageClassification(stock_config(model.config)).to(next(model.parameters()).device).eval()
    missing, _ = stock.load_state_dict(model.state_dict(), strict=False)  # the plan's own modules stay out
    if missing:
        raise ValueError(f"The trained model lacks stock ViT weights {missing[:3]}.")
    size = recipe.benchmark_batch_size
    pixels = next(_eval_batches(dataset, size))[0].to(next(model.parameters()).device)
    candidates = {
        "TokenPruneViT, plan": lambda x: model(pixel_values=x),
        "same weights, plan off": lambda x: model(pixel_values=x, disable_plans=True),
        "stock HF ViT": lambda x: stock(pixel_values=x),
    }
    timings = measure_paired(
        candidates, pixels, rounds=recipe.benchmark_rounds, desc="speed (paired)", progress=sys.stderr.isatty()
    )
    plan_flops, full_flops = count_flops(model.config), count_flops(stock.config)
    stock_predictions, labels = predict(stock, dataset, size)
    rows = []
    for name, flops, predictions in (
        ("TokenPruneViT, plan", plan_flops, predict(model, dataset, size)[0]),
        ("same weights, plan off", full_flops, predict(model, dataset, size, disable_plans=True)[0]),
        ("stock HF ViT", full_flops, stock_predictions),
    ):
        ratios = Speedups(timings["stock HF ViT"], timings[name])  # per round: stock time / this model's
        row = {
            "model": name,
            "accuracy": float((predictions == labels).float().mean()),
            "agreement": float((predictions == stock_predictions).float().mean()),  # same answer as stock
            "gflops": flops.gflops,
            "speedup": statistics.median(ratios),
            "speedup_range": [min(ratios), max(ratios)],
            "ideal_speedup": full_flops.gflops / flops.gflops,
            "median_ms": 1e3 * timings[name].median_s,
            "others_load": ratios.others_load,  # how busy other processes kept the CPU while it was timed
            **noise_of(ratios),
        }
        reasons = unreliable_reasons({**row, "measured_speedup": row["speedup"], "spread": row["speedup_range"]})
        rows.append({**row, "unreliable": reasons if name == "TokenPruneViT, plan" else []})
    return rows


def operating_point_rows(model, dataset, batch_size: int) -> list[dict[str, Any]]:
    """SuperViT: accuracy and GFLOPs of every (resolution, keep rate) pair the trained model serves."""
    from hf_tokenprune.flops import count_flops

    side = model.config.image_size if isinstance(model.config.image_size, int) else model.config.image_size[0]
    rows = []
    for resolution, keep_rate in operating_points(model.config):
        resize = None if resolution == side else resolution
        predictions, labels = predict(model, dataset, batch_size, image_side=resize, keep_rate=keep_rate)
        accuracy = float((predictions == labels).float().mean())
        flops = count_flops(model.config, keep_rate=keep_rate, image_size=resolution)
        rows.append({"resolution": resolution, "keep_rate": keep_rate, "accuracy": accuracy, "gflops": flops.gflops})
    return rows


def format_comparison(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'model':<24} {'accuracy':>8} {'agrees':>7} {'GFLOPs':>8} {'speed-up':>9} {'(min-max)':>12} {'ideal':>6}",
        "-" * 80,
    ]
    for row in rows:
        low, high = row["speedup_range"]
        lines.append(
            f"{row['model']:<24} {row['accuracy']:>8.2%} {row['agreement']:>7.1%} {row['gflops']:>8.4f} "
            f"{row['speedup']:>8.2f}x {f'{low:.2f}-{high:.2f}':>12} {row['ideal_speedup']:>5.2f}x"
        )
    lines.append("agrees: predictions equal to stock HF ViT's (same weights, no reduction).")
    lines.append("speed-up: stock HF ViT's time (same weights) over each model's: median of paired rounds.")
    others = rows[0].get("others_load")
    if others is not None:
        lines.append(f"while timing, other processes kept {others:.0%} of the CPU busy.")
    return "\n".join(lines)


def comparison_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """Why the plan's measured speed-up is unreliable (noisy rounds, other processes, slower than stock), by the rules
    ``hf-tokenprune benchmark`` and the model card use, with what to do."""
    reasons = [reason for row in rows for reason in row.get("unreliable", [])]
    if not reasons:
        return []
    return [
        "the plan's measured speed-up is unreliable: " + "; ".join(reasons) + ". Measure again on an idle machine: "
        "hf-tokenprune benchmark --model OUTPUT_DIR --rounds 15 (the model card says it is unreliable)."
    ]


def format_operating_points(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'resolution':>10} {'keep rate':>9} {'accuracy':>8} {'GFLOPs':>8}"]
    lines += [f"{r['resolution']:>10} {r['keep_rate']:>9.2f} {r['accuracy']:>8.2%} {r['gflops']:>8.4f}" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    parser = HfArgumentParser((ModelArguments, DataArguments, RecipeArguments, TrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    given = {arg.split("=")[0][2:].replace("-", "_") for arg in argv if arg.startswith("--")}  # either spelling
    if launched_processes() > 1 and torch.accelerator.current_accelerator() is None and "use_cpu" not in given:
        argv += ["--use_cpu", "true"]  # several CPU processes: the Trainer runs DDP (gloo) only when told use_cpu
    if torch.accelerator.current_accelerator() is None and "dataloader_pin_memory" not in given:
        argv += ["--dataloader_pin_memory", "false"]  # no accelerator: pinned memory has no use (and torch warns)
    defaults = [
        item for key, value in MAIN_JOB_TRAINING_DEFAULTS.items() if key not in given for item in (f"--{key}", value)
    ]
    parsed = parser.parse_args_into_dataclasses(args=defaults + argv)
    plan = parse_json(parsed[0].token_reduction, "token_reduction")
    if isinstance(plan, dict) and plan.get("method") == "dynamicvit" and "warmup_steps" not in given:
        parsed[-1].warmup_steps = DYNAMICVIT_WARMUP  # the official run warms up over its 5 frozen epochs of 30
    return parsed


def check_paths(model_args: ModelArguments, data_args: DataArguments, recipe: RecipeArguments) -> None:
    """Local paths that do not exist fail in one line that names them, before anything is loaded."""
    from hf_tokenprune.paths import check_input_folder, check_model_source

    check_model_source(model_args.model_name_or_path, "--model_name_or_path", config_file=True)
    check_model_source(recipe.teacher_model_name_or_path, "--teacher_model_name_or_path")
    what = "an imagefolder: one sub-folder of images per class"
    check_input_folder(data_args.train_dir, "--train_dir", what)
    check_input_folder(data_args.validation_dir, "--validation_dir", what)


def launched_processes() -> int:
    """The number of processes torchrun / accelerate launch started (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def prepare(model_args, data_args, recipe, training_args):
    """Everything that can fail on bad input, in the order that fails fastest: plans, image size, data, model."""
    if launched_processes() != training_args.world_size:
        raise ValueError(
            f"{launched_processes()} processes were launched but the Trainer runs {training_args.world_size} "
            "(each process would train alone). On machines without an accelerator pass --use_cpu true."
        )
    check_paths(model_args, data_args, recipe)
    check_image_size(build_config(model_args, ["placeholder"]), model_args)  # plan and size errors before the data
    with training_args.main_process_first(desc="loading the dataset"):
        dataset = load_data(data_args, model_args.cache_dir)
    labels = label_names(dataset, data_args.label_column_name)
    config = build_config(model_args, labels)
    image_size = check_image_size(config, model_args)
    processor = build_processor(model_args, image_size)
    add_transforms(dataset, processor, data_args)
    set_seed(training_args.seed)
    model = build_model(model_args, config)
    return dataset, processor, model, image_size


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Trains, evaluates, compares and saves; returns the results written to ``<output_dir>/results.json``."""
    started = time.perf_counter()
    model_args, data_args, recipe, training_args = parse_args(argv)
    lines = lines_without_terminal(argv)
    dataset, processor, model, image_size = prepare(model_args, data_args, recipe, training_args)
    trainer = build_trainer(model, training_args, dataset, processor, recipe, image_size != native_size(model.config))
    if lines:
        log_lines(trainer)
    results = train_and_evaluate(trainer, training_args)
    if trainer.is_world_process_zero():
        output_dir = training_args.output_dir
        results.update(report(model, dataset["validation"], recipe))
        results.update(describe_run(model_args, data_args, recipe, model))
        plot_training(trainer.state.log_history, os.path.join(output_dir, "training_curve.png"))
        results["wall_time_s"] = time.perf_counter() - started
        results.update(provenance())  # the command, the commit, the date and the machine (measure.devices)
        write_results(results, output_dir)
        write_card(model, dataset["validation"], data_args, output_dir)
        print(f"\nsaved to {output_dir} (results.json, README.md); wall time {results['wall_time_s']:.0f} s")
    if training_args.push_to_hub:
        trainer.push_to_hub(tags=["image-classification", "token-reduction", "hf_tokenprune"])
    return results


class LogLines(TrainerCallback):
    """Progress as one line per logging step (``step 50/400 (12%) epoch 1.00: loss 1.234, ...``), for output that
    goes to a file, where progress bars pile up carriage returns."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        done = f"{state.global_step}/{state.max_steps} ({state.global_step / max(state.max_steps, 1):.0%})"
        values = ", ".join(f"{key} {_short(value)}" for key, value in logs.items() if key != "epoch")
        print(f"step {done} epoch {state.epoch or 0:.2f}: {values}", flush=True)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def lines_without_terminal(argv: list[str] | None) -> bool:
    """When output is not a terminal (a log file, CI) and --disable_tqdm was not given, progress comes as lines: the
    bars of datasets, the Hub and transformers are turned off, and the training logs one line per logging step."""
    given = " ".join(sys.argv[1:] if argv is None else argv).replace("-", "_")
    if sys.stdout.isatty() or sys.stderr.isatty() or "__disable_tqdm" in given:
        return False
    import datasets
    import huggingface_hub
    from transformers.utils import logging as transformers_logging

    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    return True


def log_lines(trainer) -> None:
    """The Trainer reports progress with `LogLines` instead of its bars and raw log dicts."""
    trainer.args.disable_tqdm = True
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LogLines())


def describe_run(model_args, data_args, recipe: RecipeArguments, model) -> dict[str, Any]:
    """What the card needs to say where the numbers come from: the data and how speed was measured."""
    if data_args.dataset_name:
        dataset = data_args.dataset_name
    elif data_args.train_dir:  # data/train -> "data"
        folder = os.path.normpath(os.path.abspath(data_args.train_dir))
        name = os.path.basename(folder)
        dataset = os.path.basename(os.path.dirname(folder)) if name in ("train", "training") else name
    else:
        dataset = "cluttered digits (hf_tokenprune.data)"
    parameter = next(model.parameters())
    setup = {"device": str(parameter.device), "dtype": str(parameter.dtype).removeprefix("torch.")}
    setup |= {"batch_size": recipe.benchmark_batch_size, "rounds": recipe.benchmark_rounds}
    return {"dataset": dataset, "model_name_or_path": model_args.model_name_or_path, "speed_setup": setup}


def write_card(model, validation, data_args: DataArguments, output_dir: str) -> str:
    """``README.md`` in the output folder, the card a pushed model gets: the plan, FLOPs, the accuracy with and
    without the plan and the measured speed-up (from results.json), the training curve and the kept tokens of one
    validation image."""
    from hf_tokenprune.sharing.hub import results_from_folder
    from hf_tokenprune.sharing.model_card import write_model_card

    try:
        from hf_tokenprune.visualization import plot_kept_tokens

        image = validation.with_format(None)[0][data_args.image_column_name]
        title = "kept tokens of a validation image (the trained model)"
        plot_kept_tokens(model, image, os.path.join(output_dir, "kept_tokens.png"), title=title)
    except ImportError:  # no matplotlib: the card goes without the picture
        pass
    write_model_card(output_dir, model, **results_from_folder(output_dir, model.config))
    return os.path.join(output_dir, "README.md")


def train_and_evaluate(trainer, training_args) -> dict[str, Any]:
    """Trains (resuming if asked), saves the model with its image processor, evaluates; the results so far."""
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()  # the model (with its remote code) and the image processor
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    config = trainer.model.config
    return {
        "plan": config.token_reduction,
        "attention_reuse": config.attention_reuse,
        "train_loss": train_result.training_loss,
        "world_size": training_args.world_size,
        "eval": dict(metrics),
        "log_history": trainer.state.log_history,
    }


def report(model, dataset, recipe: RecipeArguments) -> dict[str, Any]:
    """The side-by-side comparison (and SuperViT's operating points), printed and returned."""
    out = {}
    if recipe.compare and model.config.token_reduction is not None:
        out["comparison"] = compare_with_and_without(model, dataset, recipe)
        print("\n" + format_comparison(out["comparison"]))
        out["warnings"] = comparison_warnings(out["comparison"])
        for warning in out["warnings"]:
            print(f"warning: {warning}")
    if (model.config.token_reduction or {}).get("method") == "supervit":
        out["operating_points"] = operating_point_rows(model, dataset, recipe.benchmark_batch_size)
        print("\n" + format_operating_points(out["operating_points"]))
    return out


def plot_training(log_history: list[dict[str, Any]], path: str) -> bool:
    """training_curve.png: training loss, evaluation accuracy and the scheduled plan value against the step.
    Returns False (and draws nothing) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    rate_axis = loss_axis.twinx()
    curves = (
        ("loss", "training loss", loss_axis, "tab:gray"),
        ("eval_accuracy", "eval accuracy", rate_axis, "tab:blue"),
        ("plan_keep_rate", "keep rate", rate_axis, "tab:orange"),
    )
    for key, label, axis, color in curves:
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry]
        if points:
            axis.plot(*zip(*points), label=label, color=color, marker="o" if key == "eval_accuracy" else None)
    loss_axis.set(xlabel="optimizer step", ylabel="loss")
    rate_axis.set(ylim=(0, 1.02), ylabel="accuracy / keep rate")
    handles = loss_axis.get_legend_handles_labels()[0] + rate_axis.get_legend_handles_labels()[0]
    loss_axis.legend(handles=handles, loc="center right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def write_results(results: dict[str, Any], output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2, default=_jsonable)


def _jsonable(value: Any) -> Any:
    return value.item() if isinstance(value, (np.floating, np.integer)) else str(value)


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:  # bad input: one clear line, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
