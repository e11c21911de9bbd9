#!/usr/bin/env python
"""Segmentation accuracy against measured speed: mIoU of each method at two operating points, fine-tuned the same
way, against the measured inference speed-up over stock ViT with the same weights and decoder.

It trains the small ViT of ``run_semantic_segmentation.py`` without a plan on the embedded digit segmentation set,
then fine-tunes a copy per operating point with the plan in place (and one without a plan: the reference, fine-tuned
the same way), and writes ``segmentation_benchmark.json`` and ``SEGMENTATION.md``:

    python examples/benchmark_segmentation.py --output-dir docs/segmentation
    python examples/benchmark_segmentation.py --tiny --output-dir /tmp/seg    # the CI-sized version (tested)
"""

import argparse
import json
import os
import sys
from typing import Any

import torch
from transformers import SegformerImageProcessor, Trainer, TrainingArguments, set_seed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_semantic_segmentation as example  # noqa: E402

from hf_tokenprune import TokenPruneViTForSemanticSegmentation  # noqa: E402
from hf_tokenprune.benchmark import measure_paired  # noqa: E402
from hf_tokenprune.flops import count_flops  # noqa: E402
from hf_tokenprune.metrics import segmentation_metrics  # noqa: E402

# Two operating points per method (6-layer model, 64 patch tokens). Cropr uses its segmentation head.
POINTS = {
    "cropr": [{"tokens_per_layer": 4, "aux_head": "per_query"}, {"tokens_per_layer": 8, "aux_head": "per_query"}],
    "evit": [{"layers": [2, 3, 4], "keep_rate": 0.7}, {"layers": [2, 3, 4], "keep_rate": 0.5}],
    "tome": [{"r": 4}, {"r": 8}],
    "skipvit": [{"drop_layer": 1, "keep_rate": 0.7}, {"drop_layer": 1, "keep_rate": 0.45}],
    "skipat": [{"layers": [2]}, {"layers": [2, 3]}],  # attention reuse
}


def plan_kwargs(method: str | None, options: dict | None) -> dict:
    if method is None:
        return {"token_reduction": None, "attention_reuse": None}
    if method == "skipat":
        return {"token_reduction": None, "attention_reuse": {"method": "skipat", **options}}
    return {"token_reduction": {"method": method, **options}, "attention_reuse": None}


def train(model, data, output_dir: str, epochs: float, samples: int | None) -> None:
    train_set = data["train"] if not samples else data["train"].select(range(samples))
    args = TrainingArguments(
        output_dir=output_dir, num_train_epochs=epochs, learning_rate=1e-3, weight_decay=0.05, warmup_steps=10,
        per_device_train_batch_size=32, save_strategy="no", report_to="none", remove_unused_columns=False,
        disable_tqdm=True, logging_steps=50, seed=0,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=train_set).train()


def evaluate_point(model, validation, rounds: int) -> dict[str, Any]:
    """mIoU and pixel accuracy of the plan; measured speed-up against stock ViT with the same weights."""
    model.eval()
    predictions, labels = example.predict(model, validation)
    metrics = segmentation_metrics(predictions, labels, model.config.num_labels)
    stock = example.StockSegmenter(model)
    pixels = validation[:64]["pixel_values"]
    timings = measure_paired(
        {"plan": lambda x: model(pixel_values=x), "stock": lambda x: stock(x)}, pixels, rounds=rounds, progress=False
    )
    flops, full = count_flops(model.config), count_flops(stock.vit.config)
    return {
        "mean_iou": metrics["mean_iou"],
        "pixel_accuracy": metrics["pixel_accuracy"],
        "gflops": flops.gflops,
        "ideal_speedup": full.gflops / flops.gflops,
        "speedup": timings["stock"].median_s / timings["plan"].median_s,
    }


def run(args) -> dict[str, Any]:
    set_seed(0)
    data, labels = example.load_data(example.DataArguments(digits_copies=1 if args.tiny else 3))
    processor = SegformerImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    example.add_transforms(data, processor)
    validation = data["validation"].select(range(args.eval_samples)) if args.eval_samples else data["validation"]
    base = example.build_model(example.ModelArguments(token_reduction=None), labels)
    train(base, data, os.path.join(args.output_dir, "base"), args.epochs, args.train_samples)
    base_folder = os.path.join(args.output_dir, "base")
    base.save_pretrained(base_folder)
    rows = []
    for method, points in [(None, [None])] + list(POINTS.items()):
        for options in points:
            torch.manual_seed(0)
            kwargs = plan_kwargs(method, options)
            model = TokenPruneViTForSemanticSegmentation.from_pretrained(base_folder, **kwargs, restore_tokens=True)
            train(model, data, os.path.join(args.output_dir, "finetune"), args.finetune_epochs, args.train_samples)
            row = {"method": method or "stock ViT", "options": options or {}}
            rows.append({**row, **evaluate_point(model, validation, args.rounds)})
            print(format_row(rows[-1], rows[0]), flush=True)
    return write(rows, args)


def format_row(row: dict[str, Any], reference: dict[str, Any]) -> str:
    options = " ".join(f"{k}={v}" for k, v in row["options"].items() if k != "aux_head")
    delta = row["mean_iou"] - reference["mean_iou"]
    return (
        f"| {row['method']} | {options} | {row['ideal_speedup']:.2f}x | {row['speedup']:.2f}x | "
        f"{row['mean_iou']:.3f} ({delta:+.3f}) | {row['pixel_accuracy']:.3f} |"
    )


def write(rows: list[dict[str, Any]], args) -> dict[str, Any]:
    results = {"command": " ".join(sys.argv), "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
               "rows": rows}  # fmt: skip
    with open(os.path.join(args.output_dir, "segmentation_benchmark.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    table = [
        "| method | operating point | ideal | measured | mIoU (Δ) | pixel accuracy |",
        "|---|---|---:|---:|---:|---:|",
    ]
    table += [format_row(row, rows[0]) for row in rows]
    with open(os.path.join(args.output_dir, "SEGMENTATION.md"), "w") as handle:
        handle.write("# Segmentation: mIoU against measured speed-up\n\n" + "\n".join(table) + "\n")
    return results


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="docs/segmentation")
    parser.add_argument("--epochs", type=float, default=6.0, help="training of the unreduced model")
    parser.add_argument("--finetune-epochs", type=float, default=2.0, help="fine-tune per operating point")
    parser.add_argument("--rounds", type=int, default=7, help="paired timing rounds")
    parser.add_argument("--train-samples", type=int, default=None)
    parser.add_argument("--eval-samples", type=int, default=None)
    parser.add_argument("--tiny", action="store_true", help="a few samples and steps (a well-formed file, no result)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.epochs, args.finetune_epochs, args.rounds, args.train_samples, args.eval_samples = 1, 1, 1, 16, 16
    os.makedirs(args.output_dir, exist_ok=True)
    return args


if __name__ == "__main__":
    run(parse_args())
