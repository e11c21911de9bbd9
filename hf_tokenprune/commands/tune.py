"""``hf-tokenprune tune``: choose a plan for a checkpoint (`hf_tokenprune.measure.tune`)."""

import argparse
from typing import Any

from .options import (
    add_threads,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    quiet_loading,
    set_threads,
)


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "tune",
        help="choose a plan: training-free plans evaluated on held-out images and timed against stock ViT",
        description="Choose a plan: try training-free plans on held-out images, measure them against stock ViT, "
        "keep the best one. Give exactly one target.",
    )
    parser.add_argument("--model", required=True, help="checkpoint folder (or Hub id) to tune")
    parser.add_argument("--data", nargs="+", default=["embedded"], metavar="DATA",
                        help="held-out images: 'embedded' (cluttered digits), 'imagefolder DIR' or a datasets name "
                        "(and config name)")  # fmt: skip
    parser.add_argument("--split", default=None, help="held-out split (default: validation, test, or the only one)")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--max-images", type=positive_int, default=256, help="size of the seeded held-out subset")
    parser.add_argument("--target-speedup", type=positive_float, default=None, help="least measured speed-up")
    parser.add_argument("--target-gflops", type=positive_float, default=None, help="most GFLOPs per image")
    parser.add_argument("--max-accuracy-drop", type=non_negative_float, default=None, help="0.01 for one point")
    parser.add_argument("--methods", default=None, help="comma-separated methods to try (default: every usable one)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="batch for accuracy and timing")
    parser.add_argument("--rounds", type=positive_int, default=5, help="paired timing rounds per candidate")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed calls per model before timing")
    parser.add_argument("--device", default="auto", help="as for `benchmark` (default: an available accelerator)")
    parser.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16")
    add_threads(parser)
    parser.add_argument(
        "--time-budget",
        type=non_negative_float,
        default=None,
        help="seconds; then no new candidate starts (the mildest point of every method is tried anyway)",
    )
    parser.add_argument("--seed", type=int, default=0, help="chooses the held-out subset")
    parser.add_argument("--output", default=None, help="new folder: a copy of the checkpoint with the chosen plan")
    parser.add_argument("--results-dir", default="tune-results", help="where tune.json, tune.md and tune.png go")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def check_paths(args: Any) -> None:
    """Missing or clashing folders, named before torch is imported."""
    from ..paths import check_model_source, check_new_folder

    check_model_source(args.model)
    check_new_folder(args.output, "--output", args.model)


def target_from_args(args: Any) -> Any:
    """The one target of ``--target-speedup``, ``--target-gflops`` or ``--max-accuracy-drop``."""
    from ..measure.tune import TARGET_FLAGS, TARGETS, Target

    given = [name for name in TARGETS if getattr(args, name) is not None]
    if len(given) != 1:
        got = "none" if not given else " and ".join(TARGET_FLAGS[name] for name in given)
        raise ValueError(f"give exactly one target, {', '.join(TARGET_FLAGS.values())} (got {got}).")
    target = Target(given[0], getattr(args, given[0]))
    target.check()
    return target


def settings_from_args(args: Any) -> Any:
    from ..measure.devices import parse_device, parse_dtype
    from ..measure.tune import SearchSettings

    settings = SearchSettings(
        batch_size=args.batch_size, rounds=args.rounds, warmup=args.warmup, device=parse_device(args.device),
        dtype=parse_dtype(args.dtype), seed=args.seed, time_budget=args.time_budget, progress=not args.no_progress,
    )  # fmt: skip
    settings.check()
    set_threads(args.threads)
    return settings


def run(args: argparse.Namespace) -> int:
    from ..measure.heldout import check_data

    check_paths(args)  # before torch is imported
    data_kind, data_argument = check_data(args.data)
    from ..measure.heldout import held_out_images, load_split, processor_for
    from ..measure.tune import build_candidates, check_gflops_reachable, check_methods, load_checkpoint, search

    target = target_from_args(args)
    settings = settings_from_args(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    check_methods(methods)
    quiet_loading()
    config, state_dict = load_checkpoint(args.model)
    candidates, left_out = build_candidates(config, methods)
    if not candidates:
        raise ValueError(f"no candidate plan to try (--methods {args.methods}); left out: {left_out}.")
    check_gflops_reachable(candidates, target)
    dataset = load_split(data_kind, data_argument, args.split)
    columns = (args.image_column, args.label_column)
    images = held_out_images(dataset, processor_for(args.model, config), config, args.max_images, args.seed, columns)
    print(f"tuning {args.model}: {len(candidates)} candidate plans, {len(images[1])} held-out images")
    result = search(config, state_dict, candidates, images, settings)
    result.update(candidates=len(candidates), left_out=left_out, command=args.command_line, seed=args.seed)
    layers = getattr(config, "num_hidden_layers", None)
    result["setup"] = {**setup_of(args, settings, len(images[1])), "layers": layers}
    return report(result, target, args)


def setup_of(args: Any, settings: Any, images: int) -> dict:
    import torch

    from ..measure.devices import device_name

    return {
        "model": args.model, "data": " ".join(args.data), "images": images, "batch_size": settings.batch_size,
        "rounds": settings.rounds, "dtype": str(settings.dtype).removeprefix("torch."),
        "device": device_name(settings.device or torch.device("cpu")),
    }  # fmt: skip


def report(result: dict, target: Any, args: Any) -> int:
    """Prints and writes the front; writes the checkpoint copy when a plan meets the target."""
    from ..measure.tune import choose, describe, format_front, write_checkpoint, write_results

    try:
        chosen, failure = choose(result["rows"], target, result["stock_accuracy"]), None
    except ValueError as error:
        chosen, failure = None, error
    paths = write_results(result, chosen, target, args.results_dir)
    print(format_front(result, chosen))
    print(describe(result, chosen, target))
    print(f"wrote {paths['json']}, {paths['md']} and {paths['png']}")
    if failure is not None:
        raise failure
    if args.output is not None:
        record = {key: result[key] for key in ("stock_accuracy", "command", "seed", "setup")}
        record["target"] = {target.kind: target.value}
        print(f"wrote the chosen plan into {write_checkpoint(args.model, args.output, chosen, record)}")
    return 0
