#!/usr/bin/env python
"""Where batch-1 latency goes: each plan against stock ViT, beside its FLOPs ideal and its token-count bound.

The token-count bound is stock ViT's own layers run at the plan's token counts (each layer's attention at the tokens
entering it, its MLP at the tokens entering the MLP) and nothing else: no ranking, no gathers, no bookkeeping. It
splits the gap between measured and ideal speed-up in two:

- bound / ideal: what the matrix multiplications themselves lose with fewer rows (at batch 1 the weights are read
  once per layer whatever the token count, and small matrices use the cores less well); no implementation of the
  method can beat it with these kernels;
- measured / bound: what the method costs on top (its selection, gathers and Python), the part this library owns.

    python examples/benchmark_latency_bound.py --output-dir docs/results/latency-bound  # ViT-B/16 224 px, 1, 2 threads
    python examples/benchmark_latency_bound.py --tiny --output-dir /tmp/bound           # the CI-sized run (tested)

Every candidate runs in one process on the same image, interleaved round by round (`measure_paired`); speed-ups are
medians of the per-round ratios against stock `ViTForImageClassification` with the same weights.
"""

import argparse
import json
import os
import statistics
from typing import Any

import torch
from transformers import ViTConfig, ViTForImageClassification

from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForImageClassification
from hf_tokenprune.flops import count_flops
from hf_tokenprune.measure.benchmark import machine_info, measure_paired
from hf_tokenprune.measure.devices import provenance
from hf_tokenprune.measure.onnx_runtime import token_count_bound
from hf_tokenprune.plans import plan_label

# The plans of issue 13's latency target.
DEFAULT_PLANS = [
    {"method": "evit", "layers": [3, 6, 9], "keep_rate": 0.7, "fuse": True},
    {"method": "tome", "r": 8},
    {"method": "skipvit", "keep_rate": 0.45},
]
TINY = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, image_size=96, patch_size=8)


def build(config: ViTConfig, plans: list[dict]) -> tuple[ViTForImageClassification, dict[str, Any]]:
    """Stock ViT with random weights, and per plan (label): our model with the same weights, its token counts and
    its FLOPs ideal."""
    torch.manual_seed(0)
    stock = ViTForImageClassification(config).eval()
    built = {}
    for plan in plans:
        model = TokenPruneViTForImageClassification(TokenPruneViTConfig(**config.to_dict(), token_reduction=plan))
        model.load_state_dict(stock.state_dict())
        report = count_flops(model.config)
        built[plan_label(plan)] = dict(model=model.eval(), counts=report.token_counts, ideal=report.ideal_speedup)
    return stock, built


def measure(stock, built: dict, pixel_values: torch.Tensor, rounds: int, compile_models: bool) -> list[dict]:
    """One paired, interleaved measurement of stock, every plan and every plan's bound; a row per plan."""
    prepare = torch.compile if compile_models else (lambda model: model)
    candidates = {"stock": prepare(lambda x: stock(pixel_values=x))}
    for label, item in built.items():
        candidates[label] = prepare(lambda x, model=item["model"]: model(pixel_values=x))
        candidates[label + " (bound)"] = prepare(token_count_bound(stock, item["counts"]))
    stats = measure_paired(candidates, pixel_values, rounds=rounds, warmup=2 if compile_models else 1)
    stock_times = stats["stock"].times
    rows = []
    for label, item in built.items():

        def speedup(name):
            return statistics.median(s / t for s, t in zip(stock_times, stats[name].times))

        measured, bound, ideal = speedup(label), speedup(label + " (bound)"), item["ideal"]
        rows.append(
            dict(plan=label, token_counts=item["counts"], ideal=ideal, bound=bound, measured=measured,
                 bound_of_ideal=bound / ideal, measured_of_ideal=measured / ideal, measured_of_bound=measured / bound,
                 stock_ms=1e3 * statistics.median(stock_times), plan_ms=1e3 * stats[label].median_s)
        )  # fmt: skip
    return rows


def markdown(results: list[dict], setup: str) -> str:
    lines = [
        "| threads | compile | plan | ideal | token-count bound (of ideal) | measured (of ideal) | measured / bound |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for run in results:
        for row in run["rows"]:
            lines.append(
                f"| {run['threads']} | {run['compile']} | {row['plan']} | {row['ideal']:.2f}x | {row['bound']:.2f}x "
                f"({row['bound_of_ideal']:.2f}) | {row['measured']:.2f}x ({row['measured_of_ideal']:.2f}) | "
                f"{row['measured_of_bound']:.2f} |"
            )
    return "\n".join(lines) + f"\n\n{setup}\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True, help="Folder for latency_bound.json and LATENCY_BOUND.md.")
    parser.add_argument("--threads", default="1,2", help="Comma-separated torch thread counts (default 1,2).")
    parser.add_argument("--rounds", type=int, default=15, help="Paired rounds per thread count (default 15).")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--plans", default=json.dumps(DEFAULT_PLANS), help="A JSON list of token-reduction plans.")
    parser.add_argument("--compile", action="store_true", help="Also measure every candidate under torch.compile.")
    parser.add_argument("--tiny", action="store_true", help="A tiny ViT (96 px, width 32): the CI-sized run.")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.output_dir):
        parser.error(f"--output-dir {args.output_dir!r} is not an existing folder.")
    try:
        args.threads = [int(value) for value in args.threads.split(",")]
        args.plans = json.loads(args.plans)
    except ValueError as error:
        parser.error(f"--threads must be integers separated by commas and --plans a JSON list ({error}).")
    if args.rounds < 1 or args.batch_size < 1 or min(args.threads) < 1:
        parser.error("--rounds, --batch-size and every --threads value must be at least 1.")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    config = ViTConfig(**TINY) if args.tiny else ViTConfig()
    stock, built = build(config, args.plans)
    pixel_values = torch.randn(args.batch_size, 3, config.image_size, config.image_size)
    results, previous = [], torch.get_num_threads()
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            for compiled in [False, True] if args.compile else [False]:
                rows = measure(stock, built, pixel_values, args.rounds, compiled)
                results.append(dict(threads=threads, compile=compiled, rows=rows))
    finally:
        torch.set_num_threads(previous)
    info = machine_info()
    setup = (
        f"{'tiny ViT' if args.tiny else 'ViT-B/16'}, {config.image_size} px, batch {args.batch_size}, fp32, "
        f"{args.rounds} paired rounds; {info['cpu']} ({info['cores']} cores); bound = stock ViT's layers at the "
        "plan's token counts; speed-ups are medians of per-round ratios against stock ViTForImageClassification."
    )
    with open(os.path.join(args.output_dir, "latency_bound.json"), "w") as handle:
        json.dump(dict(provenance(), setup=setup, results=results), handle, indent=1)
    table = markdown(results, setup)
    with open(os.path.join(args.output_dir, "LATENCY_BOUND.md"), "w") as handle:
        handle.write("# Batch-1 latency: measured, token-count bound and FLOPs ideal\n\n" + table)
    print(table)
    return results


if __name__ == "__main__":
    main()
