"""Inference speed of plans on SigLIP 2's NaFlex vision tower against stock `Siglip2VisionModel` (same random
weights, no download): one batch of images with different grids padded to the same slots, paired and interleaved
rounds in one process, median ratios next to the ideal (the FLOPs ratio, every slot counted).

    python examples/benchmark_siglip2.py                 # SigLIP 2 B/16 size, 256 slots, batch 4, 8 rounds
    python examples/benchmark_siglip2.py --tiny --rounds 1   # a seconds-long check
    python examples/benchmark_siglip2.py --output docs/results/siglip2/siglip2_speed.json   # saves the rows
"""

import argparse
import json
import os
import statistics

import torch
from transformers import Siglip2VisionConfig, Siglip2VisionModel

from hf_tokenprune import TokenPruneSiglip2VisionConfig, TokenPruneSiglip2VisionModel
from hf_tokenprune.flops import count_flops
from hf_tokenprune.measure.benchmark import Speedups, measure_paired
from hf_tokenprune.measure.devices import provenance
from hf_tokenprune.measure.report import noise_of, unreliable_reasons

BASE = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, num_patches=256)
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, num_patches=16)
GRIDS = {256: [(16, 16), (12, 20), (10, 16), (8, 8)], 16: [(4, 4), (3, 5), (2, 3), (1, 2)]}  # real patches per image
DYNAMICVIT = {"method": "dynamicvit", "keep_rate": 0.7}
PLANS = {
    256: [{"method": "tome", "r": 8}, DYNAMICVIT, {"method": "cropr", "tokens_per_layer": 16}],
    16: [{"method": "tome", "r": 2}, DYNAMICVIT, {"method": "cropr", "tokens_per_layer": 2}],
}


def naflex_batch(grids, slots: int, patch_pixels: int) -> dict:
    """Random patches of images with ``grids`` (rows, columns), padded to ``slots``, as the processor returns."""
    mask = torch.zeros(len(grids), slots, dtype=torch.long)
    for index, (rows, columns) in enumerate(grids):
        mask[index, : rows * columns] = 1
    pixels = torch.randn(len(grids), slots, patch_pixels)
    return {"pixel_values": pixels, "pixel_attention_mask": mask, "spatial_shapes": torch.tensor(grids)}


def run(tiny: bool = False, rounds: int = 8, threads: int = 1, seed: int = 0) -> list[dict]:
    """One row per plan: ideal and measured speed-up (median of ``rounds`` paired ratios, and their range)."""
    if rounds < 1 or threads < 1:
        raise ValueError(f"--rounds {rounds} and --threads {threads} must be at least 1.")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    shape = {**(TINY if tiny else BASE), "patch_size": 4 if tiny else 16}
    stock = Siglip2VisionModel(Siglip2VisionConfig(**shape)).eval()
    models = {}
    for plan in PLANS[shape["num_patches"]]:
        model = TokenPruneSiglip2VisionModel(TokenPruneSiglip2VisionConfig(**shape, token_reduction=plan)).eval()
        model.load_state_dict(stock.state_dict(), strict=False)  # the plan's own modules stay as initialised
        models[" ".join(f"{k}={v}" for k, v in plan.items())] = model
    inputs = naflex_batch(GRIDS[shape["num_patches"]], shape["num_patches"], 3 * shape["patch_size"] ** 2)
    masks = {key: value for key, value in inputs.items() if key != "pixel_values"}
    candidates = {label: (lambda pixels, m=m: m(pixel_values=pixels, **masks)) for label, m in models.items()}
    candidates["stock"] = lambda pixels: stock(pixel_values=pixels, **masks)
    times = measure_paired(candidates, inputs["pixel_values"], rounds=rounds, progress=False)
    ratios = {label: Speedups(times["stock"], times[label]) for label in models}
    rows = [
        {"plan": label, "ideal_speedup": count_flops(model.config).ideal_speedup,
         "measured_speedup": statistics.median(ratios[label]), "spread": [min(ratios[label]), max(ratios[label])],
         "round_speedups": list(ratios[label]), "others_load": ratios[label].others_load,
         **noise_of(list(ratios[label]))}
        for label, model in models.items()
    ]  # fmt: skip
    return [{**row, "unreliable": unreliable_reasons(row)} for row in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny tower (16 slots): a quick check")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="a JSON file for the rows, the setup and where they come from")
    args = parser.parse_args(argv)
    if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        parser.error(f"--output {args.output}: its folder does not exist.")
    try:
        rows = run(args.tiny, args.rounds, args.threads)
    except ValueError as error:
        parser.error(str(error))
    grids = GRIDS[16 if args.tiny else 256]
    shown = ", ".join(f"{r}x{c}" for r, c in grids)
    print(f"SigLIP 2 NaFlex, images of {shown} patches in one batch, {args.threads} thread(s), {args.rounds} rounds")
    print("| plan | ideal | measured (range) |\n|---|---:|---:|")
    for row in rows:
        low, high = row["spread"]
        measured = f"{row['measured_speedup']:.2f}x ({low:.2f}-{high:.2f})"
        print(f"| {row['plan']} | {row['ideal_speedup']:.2f}x | {measured} |")
        for reason in row["unreliable"]:
            print(f"warning: {row['plan']}: unreliable, {reason}")
    if args.output:
        setup = {"model": TINY if args.tiny else BASE, "grids": grids, "rounds": args.rounds, "threads": args.threads}
        with open(args.output, "w") as handle:
            json.dump({**provenance(), "setup": setup, "rows": rows}, handle, indent=2)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
