#!/usr/bin/env python
"""Train a small VideoMAE-shaped classifier from scratch on moving digits, with a token-reduction plan, and compare
it with the same weights without the plan and with stock `VideoMAEForVideoClassification`.

The data needs no download (`hf_tokenprune.data.load_moving_digits`): clips of 8 frames, 48 px, in which one of
scikit-learn's real handwritten digits moves right, left, down or up next to a still digit of another class over
faint clutter; the label is the class of the digit that moves (``--label direction``: where it goes), which no single
frame shows. The model sees 8 frames in tubelets of 2 x 8 x 8: a grid of
4 x 6 x 6 = 144 tokens and no CLS token.

    python examples/run_video_classification.py                        # ToMe, trained with the plan in force
    python examples/run_video_classification.py --plan '{"method": "dynamicvit", "keep_rate": 0.7}'
    python examples/run_video_classification.py --compare_methods      # every method that runs on VideoMAE,
                                                                       # fine-tuned the same way from one model

It prints accuracy, GFLOPs and the measured speed-up against stock VideoMAE (paired and interleaved), and writes
``results.json`` (with the command, commit, date and machine), a picture of the tubelets kept on one clip and a
folder that loads with ``AutoModelForVideoClassification.from_pretrained(folder, trust_remote_code=True)``.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from hf_tokenprune import TokenPruneVideoMAEConfig, TokenPruneVideoMAEForVideoClassification
from hf_tokenprune.measure.devices import provenance

# A VideoMAE-shaped model small enough to train here in minutes: 8 frames of 48 px, tubelets of 2 x 8 x 8.
MODEL = dict(
    image_size=48,
    patch_size=8,
    num_frames=8,
    tubelet_size=2,
    hidden_size=96,
    num_hidden_layers=4,
    num_attention_heads=3,
    intermediate_size=192,
)
DEFAULT_PLAN = {"method": "tome", "r": 24}
# The accuracy row: one plan per method that runs on VideoMAE (no CLS token), each near 1.5x fewer FLOPs.
COMPARED_PLANS = {
    "tome": {"method": "tome", "r": 24},
    "dynamicvit": {"method": "dynamicvit", "keep_rate": 0.7, "layers": [1, 2, 3]},
    "cropr": {"method": "cropr", "tokens_per_layer": 30, "last_layer_fusion": False},
}
COMPARED_REUSE = {"skipat": {"method": "skipat", "layers": [1, 2]}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", default=json.dumps(DEFAULT_PLAN), help="token_reduction as JSON, or 'none'")
    parser.add_argument(
        "--compare_methods", action="store_true", help="train without a plan, then fine-tune each method"
    )
    parser.add_argument("--epochs", type=float, default=10.0, help="training epochs from scratch")
    parser.add_argument("--finetune_epochs", type=float, default=2.0, help="fine-tuning epochs per method")
    parser.add_argument("--copies", type=int, default=4, help="renderings of each training digit")
    parser.add_argument("--label", choices=["digit", "direction"], default="digit", help="what a clip's label says")
    parser.add_argument("--max_digits", type=int, default=None, help="digits per split, for a quick run")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--benchmark_rounds", type=int, default=9)
    parser.add_argument("--output_dir", default="outputs/video-digits")
    args = parser.parse_args(argv)
    plan = None if args.plan.strip().lower() == "none" else json.loads(args.plan)
    if plan is not None:  # a plan that does not fit VideoMAE is refused here, in one line, before any data is made
        TokenPruneVideoMAEConfig(**MODEL, token_reduction=plan)
    args.plan = plan
    for name in ("epochs", "finetune_epochs", "copies", "batch_size", "benchmark_rounds", "max_digits"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive; got {getattr(args, name)}.")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def load_data(args) -> Any:
    """The moving digits with each clip as ``pixel_values`` (frames, 3, H, W), normalised to [-1, 1]."""
    from hf_tokenprune.data import load_moving_digits

    dataset = load_moving_digits(seed=args.seed, canvas_size=MODEL["image_size"], num_frames=MODEL["num_frames"],
                                 copies=args.copies, label=args.label, limit=args.max_digits)  # fmt: skip

    def transform(batch):
        clips = [np.stack([np.asarray(frame, dtype=np.float32) for frame in video]) for video in batch["video"]]
        pixels = [torch.from_numpy(clip / 127.5 - 1.0).permute(0, 3, 1, 2) for clip in clips]
        return {"pixel_values": pixels, "labels": batch["label"]}

    dataset.set_transform(transform)
    return dataset


def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples]),
    }


def _batches(dataset, batch_size: int):
    for start in range(0, len(dataset), batch_size):
        yield collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


def predict(model, dataset, batch_size: int, **forward: Any) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    predictions, labels = [], []
    with torch.no_grad():
        for batch in _batches(dataset, batch_size):
            predictions.append(model(pixel_values=batch["pixel_values"], **forward).logits.argmax(-1))
            labels.append(batch["labels"])
    return torch.cat(predictions), torch.cat(labels)


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def build_model(names: list[str], plan: dict | None, reuse: dict | None = None, weights: dict | None = None):
    labels = dict(id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)})
    config = TokenPruneVideoMAEConfig(**MODEL, **labels, token_reduction=plan, attention_reuse=reuse)
    model = TokenPruneVideoMAEForVideoClassification(config)
    if weights is not None:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        assert not unexpected and all("token_reduction" in k or "attention_reuse" in k for k in missing), missing
    return model


def train(model, dataset, args, epochs: float, output_dir: str) -> dict[str, Any]:
    training_args = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=0.05,
        warmup_steps=0.1,
        lr_scheduler_type="cosine",
        logging_steps=25,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=False,
        remove_unused_columns=False,
        seed=args.seed,
        disable_tqdm=not sys.stderr.isatty(),
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset["train"], data_collator=collate)
    if not sys.stderr.isatty():  # one line per log step instead of progress bars piling up in a file
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(_LogLines())
    result = trainer.train()
    return {"train_loss": result.training_loss, "train_seconds": result.metrics["train_runtime"]}


class _LogLines(PrinterCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            print(f"step {state.global_step}/{state.max_steps}: loss {logs['loss']:.4g}", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------------


def speed_against_stock(models: dict[str, Any], dataset, args) -> dict[str, dict[str, Any]]:
    """Each model's speed-up against stock `VideoMAEForVideoClassification` with the same weights, timed paired
    and interleaved on one batch of validation clips."""
    from transformers import VideoMAEForVideoClassification

    from hf_tokenprune.measure.benchmark import measure_paired, stock_config
    from hf_tokenprune.measure.report import noise_of
    from hf_tokenprune.measure.timing import Speedups

    first = next(iter(models.values()))
    stock = VideoMAEForVideoClassification(stock_config(first.config)).eval()
    stock.load_state_dict(first.state_dict(), strict=False)  # the plan's own modules stay out
    pixels = next(_batches(dataset, args.batch_size))["pixel_values"]
    candidates = {"stock": lambda x: stock(pixel_values=x)}
    candidates |= {name: (lambda m: lambda x: m(pixel_values=x))(model.eval()) for name, model in models.items()}
    timings = measure_paired(
        candidates, pixels, rounds=args.benchmark_rounds, desc="speed (paired)", progress=sys.stderr.isatty()
    )
    rows = {}
    for name in models:
        ratios = Speedups(timings["stock"], timings[name])
        rows[name] = {
            "speedup": statistics.median(ratios),
            "speedup_range": [min(ratios), max(ratios)],
            "median_ms": 1e3 * timings[name].median_s,
            "others_load": ratios.others_load,
            **noise_of(ratios),
        }
    return rows


def describe(model, dataset, args, **forward: Any) -> dict[str, Any]:
    """Accuracy on ``dataset`` and the FLOPs per clip (the stock cost with ``disable_plans=True``)."""
    from hf_tokenprune.flops import count_flops

    predictions, labels = predict(model, dataset, args.batch_size, **forward)
    flops, off = count_flops(model.config), forward.get("disable_plans", False)
    return {
        "accuracy": float((predictions == labels).float().mean()),
        "gflops": flops.stock_gflops if off else flops.gflops,
        "ideal_speedup": 1.0 if off else flops.ideal_speedup,
    }


def draw(model, dataset, path: str) -> str:
    from hf_tokenprune.visualization import render_video_tokens

    clip = dataset[0]["pixel_values"]
    model.eval()
    with torch.no_grad():
        outputs = model(pixel_values=clip[None])
    frames = ((clip.permute(0, 2, 3, 1).numpy() + 1.0) / 2.0).clip(0, 1)
    from hf_tokenprune.plans import plan_label

    title = plan_label(model.config.token_reduction, model.config.attention_reuse)
    return render_video_tokens(frames, outputs, path, tubelet_size=model.config.tubelet_size, title=title)


# ----------------------------------------------------------------------------------------------------------------
# The two jobs
# ----------------------------------------------------------------------------------------------------------------


def one_plan(args, dataset) -> dict[str, Any]:
    """Trains with the plan, then compares the plan, the plan off and stock VideoMAE on the validation clips."""
    model = build_model(dataset["train"].features["label"].names, args.plan)
    training = train(model, dataset, args, args.epochs, args.output_dir)
    rows = {
        "plan": describe(model, dataset["validation"], args),
        "plan off": describe(model, dataset["validation"], args, disable_plans=True),
    }
    speed = speed_against_stock({"plan": model}, dataset["validation"], args)
    rows["plan"].update(speed["plan"])
    model.save_pretrained(args.output_dir)
    picture = draw(model, dataset["validation"], os.path.join(args.output_dir, "kept_tubelets.png"))
    print(f"\n{'':10} | accuracy | GFLOPs | ideal | measured vs stock VideoMAE")
    for name, row in rows.items():
        measured = f"{row['speedup']:.2f}x ({row['speedup_range'][0]:.2f}-{row['speedup_range'][1]:.2f})" if (
            "speedup" in row) else "1.00x (the stock cost)"  # fmt: skip
        print(f"{name:10} | {row['accuracy']:.2%} | {row['gflops']:.3f} | {row['ideal_speedup']:.2f}x | {measured}")
    return {"plan": args.plan, "training": training, "rows": rows, "picture": os.path.basename(picture)}


def compare_methods(args, dataset) -> dict[str, Any]:
    """The accuracy row: one model trained without a plan, then each method (and the unreduced control) fine-tuned
    from it for the same epochs with the same recipe."""
    names = dataset["train"].features["label"].names
    base = build_model(names, None)
    training = train(base, dataset, args, args.epochs, args.output_dir)
    weights = {k: v.clone() for k, v in base.state_dict().items()}
    rows, models = {}, {}
    runs = [("no reduction", None, None)] + [(n, p, None) for n, p in COMPARED_PLANS.items()]
    runs += [(n, None, r) for n, r in COMPARED_REUSE.items()]
    for name, plan, reuse in runs:
        set_seed(args.seed)
        model = build_model(names, plan, reuse, weights)
        with tempfile.TemporaryDirectory() as scratch:  # the Trainer's folder: nothing of it is kept
            tuned = train(model, dataset, args, args.finetune_epochs, scratch)
        rows[name] = {"plan": plan, "attention_reuse": reuse, **tuned, **describe(model, dataset["validation"], args)}
        models[name] = model
        print(f"{name}: {rows[name]['accuracy']:.2%} at {rows[name]['ideal_speedup']:.2f}x ideal", flush=True)
    for name, speed in speed_against_stock(models, dataset["validation"], args).items():
        rows[name].update(speed)
    print(f"\n{'method':14} | accuracy | GFLOPs | ideal | measured vs stock VideoMAE")
    for name, row in rows.items():
        print(f"{name:14} | {row['accuracy']:.2%} | {row['gflops']:.3f} | {row['ideal_speedup']:.2f}x | "
              f"{row['speedup']:.2f}x ({row['speedup_range'][0]:.2f}-{row['speedup_range'][1]:.2f})")  # fmt: skip
    return {"base_training": training, "finetune_epochs": args.finetune_epochs, "rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    args = parse_args(argv)
    set_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    os.makedirs(args.output_dir, exist_ok=True)
    dataset = load_data(args)
    results = compare_methods(args, dataset) if args.compare_methods else one_plan(args, dataset)
    results.update(
        model=MODEL,
        data={
            "name": "moving digits",
            "label": args.label,
            "train": len(dataset["train"]),
            "validation": len(dataset["validation"]),
        },  # fmt: skip
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        wall_time_s=time.perf_counter() - started,
        **provenance(),
    )
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"\nsaved to {args.output_dir} (results.json); wall time {results['wall_time_s']:.0f} s")
    return results


if __name__ == "__main__":
    main()
