"""``hf-tokenprune``: the parser of every verb and the entry point."""

import argparse
import shlex
import sys

from . import benchmark, card, convert, export, plan, tune, visualize

VERBS = (plan, benchmark, visualize, card, tune, export, convert)  # the order --help lists them in

DESCRIPTION = """\
Make Vision Transformers faster by spending less on tokens that carry little: token pruning, merging and skipping,
and attention reuse, for Hugging Face transformers.

  hf-tokenprune plan --token-reduction '{"method": "evit"}'     tokens and FLOPs per layer of a plan (no weights)
  hf-tokenprune benchmark                                       measured speed-up against stock ViT (same weights)
  hf-tokenprune visualize --model FOLDER --sample china         picture of the tokens each layer keeps
  hf-tokenprune card FOLDER                                     write the model card (README.md) of a saved model
  hf-tokenprune tune --model FOLDER --target-speedup 1.5        choose a plan: accuracy against measured speed-up
  hf-tokenprune export FOLDER                                   ONNX (or torch.export), checked against PyTorch
  hf-tokenprune convert CKPT --method dynamicvit --output DIR   an official checkpoint as a model folder

Options are written with dashes (--token-reduction); the underscore spelling (--token_reduction) works too.
Run "hf-tokenprune COMMAND --help" for the options of a command."""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="hf-tokenprune", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"hf-tokenprune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb in VERBS:
        verb.add_parser(commands)
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
