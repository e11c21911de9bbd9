"""``hf-tokenprune plan``: the tokens and FLOPs per layer of a plan (no weights needed)."""

import argparse
import json

from .options import add_model_arguments, parse_json_option


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "plan",
        help="per-layer token counts and FLOPs of a plan (no weights needed)",
        description="Prints the tokens entering each layer's attention and MLP (CLS and fused tokens included, as "
        "outputs.token_counts counts them) and the FLOPs per image, next to the stock model's.",
    )
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..paths import check_model_source

    check_model_source(args.model)  # before torch is imported
    plans = {
        "token_reduction": parse_json_option(args.token_reduction, "--token-reduction"),
        "attention_reuse": parse_json_option(args.attention_reuse, "--attention-reuse"),
    }
    from ..families import build_config
    from ..flops import count_flops, format_report

    config = build_config(args.model, args.arch, **plans)
    report = count_flops(config, keep_rate=args.keep_rate, image_size=args.image_size)
    print(f"plan: {json.dumps(config.token_reduction)}")
    if config.attention_reuse:
        print(f"attention reuse: {json.dumps(config.attention_reuse)}")
    print(format_report(report))
    return 0
