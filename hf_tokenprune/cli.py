"""The ``hf-tokenprune`` command line: one subcommand per task, each defined next to the code it drives."""

import argparse
import json
import shlex
import sys


def parse_json_option(text: str | None, name: str):
    """Parses a JSON command-line option, with an error that names the option."""
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise SystemExit(f"{name} is not valid JSON ({error}): {text}") from None


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model (a checkpoint folder or Hub id) or a built-in architecture, and the plans as JSON."""
    parser.add_argument("--model", default=None, help="checkpoint folder or Hub id (default: a built-in architecture)")
    parser.add_argument(
        "--arch", default="vit-base-patch16-224", help="built-in architecture when --model is not given"
    )
    parser.add_argument("--token-reduction", default=None, help='plan as JSON, e.g. \'{"method": "evit"}\'')
    parser.add_argument("--attention-reuse", default=None, help="attention-reuse plan as JSON")
    parser.add_argument("--keep-rate", type=float, default=None, help="runtime keep rate override")
    parser.add_argument("--image-size", type=int, default=None, help="input size, if not the model's")


def _plan_command(args: argparse.Namespace) -> int:
    from .architectures import build_config
    from .flops import count_flops, format_report

    config = build_config(
        args.model,
        args.arch,
        token_reduction=parse_json_option(args.token_reduction, "--token-reduction"),
        attention_reuse=parse_json_option(args.attention_reuse, "--attention-reuse"),
    )
    report = count_flops(config, keep_rate=args.keep_rate, image_size=args.image_size)
    print(f"plan: {json.dumps(config.token_reduction)}")
    if config.attention_reuse:
        print(f"attention reuse: {json.dumps(config.attention_reuse)}")
    print(format_report(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-tokenprune", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    plan = commands.add_parser("plan", help="per-layer token counts and FLOPs of a plan (no weights needed)")
    add_model_arguments(plan)
    plan.set_defaults(func=_plan_command)
    for module_name in ("benchmark", "visualization", "hub", "tune", "export"):
        try:
            module = __import__(f"hf_tokenprune.{module_name}", fromlist=["add_cli"])
        except ImportError:
            continue
        if hasattr(module, "add_cli"):
            module.add_cli(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["hf-tokenprune", *(sys.argv[1:] if argv is None else argv)])  # for the records
    try:
        return args.func(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
