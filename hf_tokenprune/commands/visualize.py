"""``hf-tokenprune visualize``: a picture of the patches each reduction layer keeps."""

import argparse
from typing import Any

from ..visualization import SAMPLES
from .options import add_model_arguments, parse_json_option


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "visualize",
        help="a PNG of the patches each reduction layer keeps, for an image or a sample photograph",
        description="Runs a model with a plan on one image and draws the patches alive after each reduction layer "
        "(dimmed: dropped or parked; coloured: merged into one token; counts as hf-tokenprune plan prints them, CLS "
        "included). Built-in architectures have random weights, so their choices are arbitrary (the title says so); "
        "use --model for a trained checkpoint. --image-size runs the model at another input size.",
    )
    add_model_arguments(parser)
    parser.add_argument("--image", default=None, help="an image file")
    parser.add_argument("--sample", default=None, choices=SAMPLES, help="a photograph scikit-learn ships (default)")
    parser.add_argument("--layers", default="changes", choices=("changes", "all"), help="which layers to draw")
    parser.add_argument("--output", default="kept_tokens.png", help="the PNG to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights of a built-in architecture")
    parser.set_defaults(func=run)


def build_model(model: str | None, arch: str, token_reduction: Any, attention_reuse: Any, seed: int = 0):
    """The model the pictures are drawn from: a checkpoint (its plan replaced by the given ones) or a built-in
    architecture with random weights from ``seed``, as its family's ``model`` class."""
    import torch

    from ..families import build_config, family_of

    plans = {"token_reduction": token_reduction, "attention_reuse": attention_reuse}
    plans = {key: value for key, value in plans.items() if value is not None}
    config = build_config(model, arch, "visualize", **plans)
    model_class = family_of(config.model_type).model_class()
    if model is not None:
        return model_class.from_pretrained(model, **plans).eval()
    torch.manual_seed(seed)
    return model_class(config).eval()


def run(args: argparse.Namespace) -> int:
    from ..paths import check_model_source, check_output_file
    from ..plans import plan_label
    from ..visualization import load_image, plot_kept_tokens

    if args.image is not None and args.sample is not None:
        raise ValueError("give either --image or --sample, not both.")
    plans = [parse_json_option(args.token_reduction, "--token-reduction")]
    plans.append(parse_json_option(args.attention_reuse, "--attention-reuse"))
    check_output_file(args.output, "--output")
    check_model_source(args.model)
    image = load_image(args.image if args.image is not None else (args.sample or "china"))  # before the weights
    model = build_model(args.model, args.arch, *plans, seed=args.seed)
    if model.config.token_reduction is None and not getattr(model.config, "attention_reuse", None):
        raise ValueError("the model has no plan, so every patch stays: give --token-reduction (JSON).")
    title = plan_label(model.config.token_reduction, getattr(model.config, "attention_reuse", None))
    if args.model is None:
        title += f" | random weights ({args.arch}, seed {args.seed}): what is kept is arbitrary"
    options = {"keep_rate": args.keep_rate, "layers": args.layers, "image_size": args.image_size}
    path = plot_kept_tokens(model, image, args.output, title=title, **options)
    print(f"wrote {path}")
    return 0
