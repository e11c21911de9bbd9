#!/usr/bin/env python
"""Segmentation accuracy against measured speed: mIoU of each method at two operating points, fine-tuned the same
way, against the measured inference speed-up over stock ViT with the same weights and decoder.

It trains the small ViT of ``run_semantic_segmentation.py`` without a plan on the embedded digit segmentation set,
then fine-tunes a copy per operating point with the plan in place (and one without a plan: the reference, fine-tuned
the same way), and writes ``segmentation_benchmark.json`` and ``SEGMENTATION.md``:

    python examples/benchmark_segmentation.py --output-dir docs/results/segmentation
    python examples/benchmark_segmentation.py --tiny --output-dir /tmp/seg    # the CI-sized version (tested)

``--speed-only`` measures the speed row at ViT-B/16, 512x512 (1,024 patch tokens) instead: every method against stock
`ViTModel` with the same (random) weights and the same linear decoder, paired and interleaved, at a small batch, next
to the ideal speed-up (the FLOPs ratio); it writes ``segmentation_speed_vit_b.json`` and ``SEGMENTATION_SPEED.md``:

    python examples/benchmark_segmentation.py --speed-only --rounds 5 --threads 1 \
        --output-dir docs/results/segmentation
"""

import argparse
import json
import os
import statistics
import sys
from typing import Any

import torch
from transformers import SegformerImageProcessor, Trainer, TrainingArguments, set_seed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_semantic_segmentation as example  # noqa: E402

from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForSemanticSegmentation  # noqa: E402
from hf_tokenprune.flops import count_flops  # noqa: E402
from hf_tokenprune.measure.benchmark import BenchmarkSettings, measure_forward, measure_paired
from hf_tokenprune.measure.devices import machine_load, provenance
from hf_tokenprune.measure.report import noise_of
from hf_tokenprune.training.metrics import segmentation_metrics

# Two operating points per method (4-layer model, 64 patch tokens). Cropr uses its segmentation head.
POINTS = {
    "cropr": [{"tokens_per_layer": 16, "aux_head": "per_query"}, {"tokens_per_layer": 24, "aux_head": "per_query"}],
    "evit": [{"layers": [1, 2], "keep_rate": 0.7}, {"layers": [1, 2], "keep_rate": 0.5}],
    "tome": [{"r": 8}, {"r": 12}],
    "skipvit": [{"drop_layer": 1, "keep_rate": 0.7}, {"drop_layer": 1, "keep_rate": 0.45}],
    "skipat": [{"layers": [1]}, {"layers": [1, 2]}],  # attention reuse
}

# The speed row: ViT-B/16 at 512x512 (1,024 patch tokens, where attention's quadratic part matters), 150 classes.
VIT_B_512 = dict(
    image_size=512, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, num_labels=150,
)  # fmt: skip
SPEED_POINTS = {
    "cropr": [{"tokens_per_layer": 40, "aux_head": "per_query"}, {"tokens_per_layer": 80, "aux_head": "per_query"}],
    "evit": [{"keep_rate": 0.7}, {"keep_rate": 0.5}],  # layers 3, 6, 9
    "tome": [{"r": 32}, {"r": 64}],
    "skipvit": [{"keep_rate": 0.7}, {"keep_rate": 0.45}],  # drop at layer 3, rejoin before the last
    "skipat": [{"layers": [3, 4, 5]}, {}],  # the paper's layers 3-8 by default
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
        per_device_train_batch_size=16, save_strategy="no", report_to="none", remove_unused_columns=False,
        disable_tqdm=True, logging_steps=50, seed=0,
        dataloader_pin_memory=torch.accelerator.current_accelerator() is not None,  # on the CPU it only warns
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
    data, labels = example.load_data(example.DataArguments(digits_copies=1))
    processor = SegformerImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    example.add_transforms(data, processor)
    validation = data["validation"].select(range(args.eval_samples)) if args.eval_samples else data["validation"]
    backbone = example.pretrain_backbone(args.pretrain_epochs, args.output_dir, args.train_samples)
    base = example.build_model(example.ModelArguments(backbone, token_reduction=None), labels)
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


def speed_models():
    """Stock `ViTModel` + linear decoder and one segmentation model per plan, all sharing one set of random weights."""
    torch.manual_seed(0)
    base = TokenPruneViTForSemanticSegmentation(TokenPruneViTConfig(**VIT_B_512, restore_tokens=True)).eval()
    weights, models = base.state_dict(), {"no reduction": base}
    for method, points in SPEED_POINTS.items():
        for options in points:
            config = TokenPruneViTConfig(**VIT_B_512, restore_tokens=True, **plan_kwargs(method, options))
            model = TokenPruneViTForSemanticSegmentation(config).eval()
            model.load_state_dict(weights, strict=False, assign=True)  # the same tensors, no copies
            shown = " ".join(f"{k}={v}" for k, v in options.items() if k != "aux_head") or "(its defaults)"
            models[f"{method} {shown}"] = model
    return example.StockSegmenter(base), models


def run_speed(args) -> dict[str, Any]:
    """Measured (median of paired per-round ratios) against ideal (FLOPs ratio) speed-ups at ViT-B/16 512x512."""
    load_before = machine_load()
    stock, models = speed_models()
    settings = BenchmarkSettings(
        batch_size=args.speed_batch_size, rounds=args.rounds, modes=("inference",), progress=False
    )
    ratios = measure_forward(stock, models, stock.vit.config, settings, args.speed_batch_size, args.rounds, "speed")
    rows = []
    for label, model in models.items():
        flops = count_flops(model.config)
        measured = statistics.median(ratios[label])
        rows.append({
            "label": label, "tokens_per_layer": [list(c) for c in flops.token_counts], "gflops": flops.gflops,
            "stock_gflops": flops.stock_gflops, "ideal_speedup": flops.ideal_speedup, "measured_speedup": measured,
            "fraction_of_ideal": measured / flops.ideal_speedup, "spread": [min(ratios[label]), max(ratios[label])],
            "round_speedups": list(ratios[label]), **noise_of(list(ratios[label])),
            "others_load": ratios[label].others_load,
        })  # fmt: skip
        print(format_speed_row(rows[-1]), flush=True)
    results = {**provenance(), "model": VIT_B_512, "batch_size": args.speed_batch_size,
               "rounds": args.rounds, "threads": torch.get_num_threads(), "load_before": load_before,
               "rows": rows}  # fmt: skip
    return write_speed(results, args.output_dir)


def format_speed_row(row: dict[str, Any]) -> str:
    low, high = row["spread"]
    return (
        f"| {row['label']} | {row['gflops']:.1f} | {row['ideal_speedup']:.2f}x | {row['measured_speedup']:.2f}x "
        f"({low:.2f}-{high:.2f}){' noisy' if row['noisy'] else ''} | {row['fraction_of_ideal']:.0%} |"
    )


def write_speed(results: dict[str, Any], output_dir: str) -> dict[str, Any]:
    with open(os.path.join(output_dir, "segmentation_speed_vit_b.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    table = [
        "| plan | GFLOPs | ideal | measured (min-max) | of ideal |",
        "|---|---:|---:|---:|---:|",
    ] + [format_speed_row(row) for row in results["rows"]]
    header = (
        f"# Segmentation speed: ViT-B/16, 512x512 (1,024 tokens), batch {results['batch_size']}\n\n"
        f"Against stock `ViTModel` + the same linear decoder, same weights; {results['rounds']} paired rounds, "
        f"{results['threads']} thread(s), 1-minute load per core before: {results['load_before']:.2f}.\n\n"
    )
    with open(os.path.join(output_dir, "SEGMENTATION_SPEED.md"), "w") as handle:
        handle.write(header + "\n".join(table) + "\n")
    return results


def format_row(row: dict[str, Any], reference: dict[str, Any]) -> str:
    options = " ".join(f"{k}={v}" for k, v in row["options"].items() if k != "aux_head")
    delta = row["mean_iou"] - reference["mean_iou"]
    return (
        f"| {row['method']} | {options} | {row['ideal_speedup']:.2f}x | {row['speedup']:.2f}x | "
        f"{row['mean_iou']:.3f} ({delta:+.3f}) | {row['pixel_accuracy']:.3f} |"
    )


def write(rows: list[dict[str, Any]], args) -> dict[str, Any]:
    results = {**provenance(), "pretrain_epochs": args.pretrain_epochs, "epochs": args.epochs,
               "finetune_epochs": args.finetune_epochs, "threads": torch.get_num_threads(), "rounds": args.rounds,
               "rows": rows}  # fmt: skip
    with open(os.path.join(args.output_dir, "segmentation_benchmark.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    write_table(results, args.rounds, args.output_dir)
    return results


def write_table(results: dict[str, Any], rounds: int, output_dir: str) -> None:
    rows = results["rows"]
    setup = (
        f"The 4-layer ViT of `run_semantic_segmentation.py`: {results['pretrain_epochs']:g} epochs of digit "
        f"classification, {results['epochs']:g} epochs of segmentation without a plan (the reference, `stock ViT`, "
        f"then fine-tuned like the others), then per row {results['finetune_epochs']:g} epochs of fine-tuning with "
        f"the plan in place. Measured: inference at batch 64 against stock ViT with the same weights and decoder, "
        f"{rounds} paired rounds, {results['threads']} thread(s). Δ: mIoU against the reference.\n\n"
    )
    table = [
        "| method | operating point | ideal | measured | mIoU (Δ) | pixel accuracy |",
        "|---|---|---:|---:|---:|---:|",
    ]
    table += [format_row(row, rows[0]) for row in rows]
    with open(os.path.join(output_dir, "SEGMENTATION.md"), "w") as handle:
        handle.write("# Segmentation: mIoU against measured speed-up\n\n" + setup + "\n".join(table) + "\n")


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="docs/results/segmentation")
    parser.add_argument("--pretrain-epochs", type=float, default=10.0, help="digit classification of the backbone")
    parser.add_argument("--epochs", type=float, default=8.0, help="segmentation training of the unreduced model")
    parser.add_argument("--finetune-epochs", type=float, default=2.0, help="fine-tune per operating point")
    parser.add_argument("--rounds", type=int, default=7, help="paired timing rounds")
    parser.add_argument("--train-samples", type=int, default=None)
    parser.add_argument("--eval-samples", type=int, default=None)
    parser.add_argument("--tiny", action="store_true", help="a few samples and steps (a well-formed file, no result)")
    parser.add_argument("--speed-only", action="store_true", help="only the ViT-B/16 512x512 speed row")
    parser.add_argument("--speed-batch-size", type=int, default=1, help="batch of the speed row")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.pretrain_epochs, args.epochs, args.finetune_epochs, args.rounds = 1, 1, 1, 1
        args.train_samples, args.eval_samples = 16, 16
    os.makedirs(args.output_dir, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


if __name__ == "__main__":
    parsed = parse_args()
    run_speed(parsed) if parsed.speed_only else run(parsed)
