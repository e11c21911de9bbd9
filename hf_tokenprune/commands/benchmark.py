"""``hf-tokenprune benchmark``: measured speed-ups of plans against the stock class of the model's family."""

import argparse
import sys
from typing import Any

from ..measure.devices import DEVICES, DTYPES
from ..measure.report import MODES
from .options import (
    add_model_arguments,
    add_threads,
    non_negative_int,
    parse_json_option,
    positive_int,
    quiet_loading,
    set_threads,
)


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "benchmark",
        help="throughput, batch-1 latency and training speed of plans against the stock model (same weights)",
        description="Measures plans against the stock HF class of the model's family (ViTForImageClassification, "
        "DeiTForImageClassificationWithTeacher, Dinov2(WithRegisters)ForImageClassification, "
        "CLIPVisionModelWithProjection, SiglipVisionModel) with the same weights, paired and interleaved in one "
        "process, and compares with the ideal (FLOPs) speed-up. Default: ViT-B/16 with random weights and one plan "
        "per registered method plus no reduction.",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--plans",
        default=None,
        help='JSON list of plans, each null, {"method": ...} or {"token_reduction": ..., "attention_reuse": ..., '
        '"label": ...} (default: no reduction and the plan saved in --model; without --model, or for a '
        "checkpoint with no plan, no reduction and every registered method)",
    )
    parser.add_argument("--device", default="auto", choices=DEVICES, help="default: an available accelerator")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument(
        "--batch-size", type=positive_int, default=16, help="batch of the inference and training modes"
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=5, help="measured rounds (each model runs once a round)"
    )
    parser.add_argument(
        "--latency-rounds", type=positive_int, default=None, help="rounds at batch 1 (default 3 x rounds)"
    )
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed calls per model first")
    parser.add_argument(
        "--modes",
        default=None,
        help=f"comma-separated subset of {','.join(MODES)} (default: all; no training for the families whose stock "
        "class has no training loss: DeiT with teacher, the CLIP and SigLIP towers)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument(
        "--runtime",
        default="pytorch",
        choices=["pytorch", "onnxruntime"],
        help="onnxruntime: export every model to ONNX and time it there against the exported stock model, beside "
        "each ViT plan's token-count bound (CPU; modes inference,latency)",
    )
    add_threads(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="benchmark-results", help="where the JSON, table and PNG go")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def checkpoint_plans(model: str) -> list | None:
    """No reduction and the checkpoint's own plan, or None (the default plans) for a checkpoint without a plan."""
    from ..families import build_config

    config = build_config(model, "", "benchmark")
    if not config.token_reduction and not config.attention_reuse:
        return None
    return [None, {"token_reduction": config.token_reduction, "attention_reuse": config.attention_reuse}]


def plans_from_args(args: Any) -> list | None:
    """The plans to time: ``--plans``, plus a single plan of ``--token-reduction`` / ``--attention-reuse``, else the
    plan saved in ``--model`` (what the card of that checkpoint looks for), else None (the default plans)."""
    plans = parse_json_option(args.plans, "--plans")
    single = [
        parse_json_option(args.token_reduction, "--token-reduction"),
        parse_json_option(args.attention_reuse, "--attention-reuse"),
    ]
    if any(plan is not None for plan in single):
        wrapped = {"token_reduction": single[0], "attention_reuse": single[1]}
        plans = (plans if plans is not None else [None]) + [wrapped]
    if plans is None and args.model is not None:
        plans = checkpoint_plans(args.model)
    return plans


def default_modes(model_type: str) -> str:
    """Every mode, less training for a family that has no training benchmark (its row's ``gaps``)."""
    from ..families import family_of

    trains = family_of(model_type).can("training")
    return ",".join(mode for mode in MODES if mode != "training" or trains)


def settings_from_args(args: Any, model_type: str = "tokenprune_vit") -> Any:
    """The settings of the command line; without ``--modes``, the family's `default_modes`."""
    from ..measure.benchmark import BenchmarkSettings
    from ..measure.devices import parse_device, parse_dtype

    onnx = getattr(args, "runtime", "pytorch") == "onnxruntime"
    given = args.modes if args.modes is not None else "inference,latency" if onnx else default_modes(model_type)
    modes = tuple(mode.strip() for mode in given.split(",") if mode.strip())
    settings = BenchmarkSettings(
        device=parse_device(args.device),
        dtype=parse_dtype(args.dtype),
        batch_size=args.batch_size,
        rounds=args.rounds,
        latency_rounds=args.latency_rounds,
        warmup=args.warmup,
        modes=modes,
        compile=args.compile,
        image_size=args.image_size,
        seed=args.seed,
        progress=not args.no_progress and sys.stderr.isatty(),  # no bars in a log file
        runtime=getattr(args, "runtime", "pytorch"),
    )
    settings.check()
    return settings


def run(args: argparse.Namespace) -> int:
    from ..paths import check_model_source

    check_model_source(args.model)  # before torch is imported
    from ..measure.benchmark import load_base, run_benchmark
    from ..measure.devices import device_name
    from ..measure.report import describe_setup, format_table, noise_warnings, write_results
    from ..plans import parse_plans

    settings_from_args(args)  # bad settings are refused before any loading
    set_threads(args.threads)
    quiet_loading()
    base, state_dict = load_base(args.model, args.arch)
    settings = settings_from_args(args, base.model_type)
    plans = parse_plans(plans_from_args(args), base, keep_rate=args.keep_rate)  # every error before timing
    print(f"benchmarking {len(plans)} plans on {device_name(settings.device)} ({args.model or args.arch})")
    rows = run_benchmark(base, plans, settings, state_dict)
    paths = write_results(rows, args.output_dir, {"model": args.model or args.arch, "command": args.command_line})
    print(format_table(rows))
    print(describe_setup(rows))
    for warning in noise_warnings(rows):
        print(f"warning: {warning}")
    print(f"wrote {paths['json']}, {paths['md']} and {paths['png']}")
    return 0
