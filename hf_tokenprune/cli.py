"""The ``hf-tokenprune`` command line: one subcommand per task, each defined next to the code it drives.

The modules listed in `build_parser` are imported to add their subcommands, so they keep torch and transformers
imports inside their functions: ``hf-tokenprune --help`` and bad-input errors then come back at once.
"""

import argparse
import json
import shlex
import sys

DESCRIPTION = """\
Make Vision Transformers faster by spending less on tokens that carry little: token pruning, merging and skipping,
and attention reuse, for Hugging Face transformers.

  hf-tokenprune plan --token-reduction '{"method": "evit"}'     tokens and FLOPs per layer of a plan (no weights)
  hf-tokenprune benchmark                                       measured speed-up against stock ViT (same weights)
  hf-tokenprune visualize --model FOLDER --sample china         picture of the tokens each layer keeps
  hf-tokenprune card FOLDER                                     write the model card (README.md) of a saved model

Options are written with dashes (--token-reduction); the underscore spelling (--token_reduction) works too.
Run "hf-tokenprune COMMAND --help" for the options of a command."""


def parse_json_option(text: str | None, name: str):
    """Parses a JSON command-line option; a ValueError that names the option if it is not JSON."""
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} is not valid JSON ({error}): {text}") from None


def keep_rate_option(text: str) -> float:
    """``--keep-rate``: a fraction in (0, 1], as the model accepts it."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a keep rate: give the fraction of tokens kept, in (0, 1]")
    return value


def image_size_option(text: str) -> int:
    """``--image-size``: a positive integer (whether it fits the patch size is checked against the model)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an image size: give a positive number of pixels")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model (a checkpoint folder or Hub id) or a built-in architecture, and the plans as JSON."""
    parser.add_argument("--model", default=None, help="checkpoint folder or Hub id (default: a built-in architecture)")
    parser.add_argument(
        "--arch", default="vit-base-patch16-224", help="built-in architecture when --model is not given"
    )
    parser.add_argument("--token-reduction", default=None, help='plan as JSON, e.g. \'{"method": "evit"}\'')
    parser.add_argument("--attention-reuse", default=None, help="attention-reuse plan as JSON")
    parser.add_argument("--keep-rate", type=keep_rate_option, default=None, help="runtime keep rate, in (0, 1]")
    parser.add_argument(
        "--image-size", type=image_size_option, default=None, help="input side in pixels, a multiple of the patch"
    )


def _plan_command(args: argparse.Namespace) -> int:
    from .architectures import build_config
    from .flops import count_flops, format_report
    from .paths import check_model_source

    check_model_source(args.model)
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
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="hf-tokenprune", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"hf-tokenprune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plan = commands.add_parser(
        "plan",
        help="per-layer token counts and FLOPs of a plan (no weights needed)",
        description="Prints the tokens entering each layer's attention and MLP (CLS and fused tokens included, as "
        "outputs.token_counts counts them) and the FLOPs per image, next to the stock model's.",
    )
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


def dashed(argv: list[str]) -> list[str]:
    """``--token_reduction x`` as ``--token-reduction x``: option names may be spelled with underscores, as the
    transformers examples spell them. Values are left alone."""
    out = []
    for arg in argv:
        if arg.startswith("--") and not arg.startswith("---"):
            name, sep, value = arg.partition("=")
            arg = name.replace("_", "-") + sep + value
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(dashed(given))
    args.command_line = shlex.join(["hf-tokenprune", *given])  # for the records
    try:
        return args.func(args)
    except (ValueError, OSError) as error:  # bad input, a missing file or checkpoint: one line
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
