"""``hf-tokenprune convert CHECKPOINT``: an official checkpoint as a TokenPrune model folder."""

import argparse

from .options import parse_json_option, quiet_loading


def add_parser(commands) -> None:
    from ..convert.sources import EVAL_TRANSFORMS, PUBLISHED, SOURCES

    parser = commands.add_parser(
        "convert",
        help="convert an official checkpoint (DynamicViT, EViT, Evo-ViT, SuperViT, Cropr, SkipAt, ToMe, timm) "
        "into a model folder that loads with the Auto classes",
        description="Reads a checkpoint as the method's official code saves it (never executing code in it), maps "
        "every key onto the TokenPrune class with the operating point it was trained for, and writes a folder "
        "(weights, config with remote code, the official evaluation transform as image processor, a card with "
        "the source and the accuracy its authors report).",
    )
    parser.add_argument("checkpoint", help="the .pth/.pt/.bin/.t7 or .safetensors file the official code saved")
    parser.add_argument("--method", default=None, choices=sorted(SOURCES), help="the method whose layout it has "
                        "(none: a plain timm ViT/DeiT); implied by --published")  # fmt: skip
    parser.add_argument("--published", default=None, metavar="NAME",
                        help="a release of the authors (sets method, shape, plan, reported accuracy): "
                        + ", ".join(PUBLISHED))  # fmt: skip
    parser.add_argument("--arch", default=None, help="built-in shape it must have, e.g. vit-small-patch16-224 for "
                        "DeiT-S (default: read from the checkpoint)")  # fmt: skip
    parser.add_argument("--output", required=True, help="folder to write (new or empty)")
    parser.add_argument("--token-reduction", default=None, help="plan options replacing the official operating "
                        'point\'s, as JSON, e.g. \'{"keep_rate": 0.5}\'')  # fmt: skip
    parser.add_argument("--attention-reuse", default=None, help="attention-reuse plan options (SkipAt), as JSON")
    parser.add_argument("--eval-transform", default=None, choices=sorted(EVAL_TRANSFORMS),
                        help="image processor: deit (crop 0.875, ImageNet mean/std) or augreg (crop 0.9, 0.5/0.5); "
                        "default: the method's")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace the content of a non-empty --output")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO", help="also push to this Hub repository")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    token_reduction = parse_json_option(args.token_reduction, "--token-reduction")
    attention_reuse = parse_json_option(args.attention_reuse, "--attention-reuse")
    for name, value in (("--token-reduction", token_reduction), ("--attention-reuse", attention_reuse)):
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{name} must be a JSON object of plan options, e.g. '{{\"keep_rate\": 0.5}}'.")
    from ..convert.converter import convert_official_checkpoint

    quiet_loading()
    convert_official_checkpoint(
        args.checkpoint,
        args.method,
        arch=args.arch,
        output=args.output,
        token_reduction=token_reduction,
        attention_reuse=attention_reuse,
        published=args.published,
        eval_transform=args.eval_transform,
        overwrite=args.overwrite,
        push_to_hub=args.push_to_hub,
        verbose=True,
    )
    return 0
