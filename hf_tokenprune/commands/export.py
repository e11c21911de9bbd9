"""``hf-tokenprune export FOLDER``: ONNX or torch.export at a fixed resolution, checked against PyTorch."""

import argparse
from pathlib import Path

from ..sharing.export import FORMATS, SUFFIXES
from .options import image_size_option, keep_rate_option, non_negative_float, positive_int, quiet_loading


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "export",
        help="export a checkpoint to ONNX or torch.export (fixed resolution, dynamic batch), checked against PyTorch",
        description="Exports pixel_values -> logits (classifiers), image_embeds (CLIP's vision tower with "
        "projection) or pooler_output (SigLIP's vision tower) at a fixed resolution with a dynamic batch "
        "dimension, then runs the exported model (onnxruntime for ONNX) at batch 1 and --batch-size and compares it "
        "with PyTorch.",
    )
    parser.add_argument(
        "folder",
        help="a checkpoint folder (save_pretrained) of a ViT, DeiT (with teacher) or DINOv2 classifier, a CLIP "
        "vision tower with projection or a SigLIP vision tower",
    )
    parser.add_argument("--format", default="onnx", choices=FORMATS, help="onnx (default) or torch-export (.pt2)")
    parser.add_argument(
        "--batch-size", type=positive_int, default=1, help="batch checked (and fixed with --static-batch)"
    )
    parser.add_argument("--output", default=None, help="file to write (default: FOLDER/model.onnx or model.pt2)")
    parser.add_argument("--image-size", type=image_size_option, default=None, help="input side (default: the model's)")
    parser.add_argument(
        "--keep-rate", type=keep_rate_option, default=None, help="runtime keep rate baked into the graph"
    )
    parser.add_argument("--static-batch", action="store_true", help="fix the batch to --batch-size")
    parser.add_argument("--atol", type=non_negative_float, default=1e-4, help="largest allowed |output - PyTorch|")
    parser.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..paths import check_model_source, check_output_file, read_config

    if not Path(args.folder).is_dir():
        raise ValueError(f"FOLDER '{args.folder}': no such folder; give a folder written by save_pretrained.")
    check_model_source(args.folder, "FOLDER")
    output = args.output or str(Path(args.folder) / f"model{SUFFIXES[args.format]}")
    check_output_file(output, "--output", f"model{SUFFIXES[args.format]}")
    check_size_fits_patch(args.image_size, read_config(args.folder))
    from ..sharing.export import export_model, exported_class

    quiet_loading()
    model = exported_class(Path(args.folder)).from_pretrained(args.folder, attn_implementation="sdpa")
    report = export_model(
        model,
        output,
        fmt=args.format,
        batch_size=args.batch_size,
        image_size=args.image_size,
        keep_rate=args.keep_rate,
        dynamic_batch=not args.static_batch,
        atol=None if args.no_check else args.atol,
    )
    print(report.summary())
    return 0


def check_size_fits_patch(image_size: int | None, config: dict) -> None:
    """``--image-size`` must be a multiple of the checkpoint's patch size (read from its config.json)."""
    patch = (config or {}).get("patch_size") or (config or {}).get("vision_config", {}).get("patch_size")
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    if image_size is not None and isinstance(patch, int) and image_size % patch:
        raise ValueError(
            f"--image-size {image_size} cannot export: it must be a multiple of the patch size {patch} (the token "
            "counts of every layer are fixed by the resolution)."
        )
