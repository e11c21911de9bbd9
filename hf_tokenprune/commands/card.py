"""``hf-tokenprune card FOLDER``: (re)write the model card of a saved folder, from what the folder holds."""

import argparse
import json
from pathlib import Path

from ..families import FAMILIES


def add_parser(commands) -> None:
    card = commands.add_parser(
        "card",
        help="(re)write the model card (README.md) of a saved TokenPrune model folder (any family)",
        description="Writes FOLDER/README.md. Accuracy, measured speed-up and pictures are read from the folder "
        "when it holds them (results.json of examples/run_image_classification.py, the Trainer's "
        "eval_results.json, kept_tokens.png, training_curve.png); the options below override them.",
    )
    card.add_argument("folder", help="a folder written by save_pretrained")
    card.add_argument("--base-model", help="Hub id of the checkpoint the model was made from")
    card.add_argument("--dataset", action="append", default=None, help="Hub id of a training dataset (repeatable)")
    card.add_argument("--accuracy", type=float, help="accuracy with token reduction, a fraction (0.93)")
    card.add_argument("--accuracy-without-reduction", type=float, help="accuracy of the same weights, no reduction")
    card.add_argument("--eval-dataset", help="name of the evaluation dataset (shown and in the model-index)")
    card.add_argument("--eval-split", default="validation", help="split of the evaluation (default: validation)")
    card.add_argument("--benchmark", help="JSON file of benchmark rows (a row, a list, or {'rows': [...]})")
    card.add_argument("--kept-tokens", help="picture of the kept tokens (PNG/JPEG)")
    card.add_argument("--pareto", help="Pareto plot (PNG/JPEG)")
    card.add_argument("--repo-id", help="the Hub repository, for the usage snippet")
    card.add_argument("--revision", help="the commit the usage snippet pins")
    card.add_argument("--model-name", help="title of the card")
    card.add_argument("--description", help="a paragraph shown under the title")
    card.add_argument("--license", help="license id for the metadata")
    card.add_argument("--tag", action="append", default=None, help="another tag (repeatable)")
    card.set_defaults(func=run)


def _load_benchmark(path: str | None) -> list | dict | None:
    if path is None:
        return None
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--benchmark {path}: not a readable JSON file ({error}).") from None
    return rows.get("rows", rows) if isinstance(rows, dict) and "measured_speedup" not in rows else rows


def run(args: argparse.Namespace) -> int:
    from ..paths import check_input_folder, check_model_source, read_config

    check_input_folder(args.folder, "FOLDER", "a folder written by save_pretrained")
    check_model_source(args.folder, "FOLDER")  # before torch is imported
    folder = Path(args.folder)
    model_type = read_config(args.folder).get("model_type")
    if not any(row.model_type == model_type for row in FAMILIES.values()):
        known = ", ".join(row.model_type for row in FAMILIES.values())
        raise ValueError(f"FOLDER '{folder}' holds a {model_type!r} model; cards are for {known}.")
    from transformers import AutoConfig

    from .. import register
    from ..sharing.hub import EVAL_RESULTS_FILE, RESULTS_FILE, results_from_folder
    from ..sharing.model_card import CARD_NAME, write_model_card

    register()
    config = AutoConfig.from_pretrained(folder)
    found = results_from_folder(folder, config)  # what the folder holds; the flags below win
    accuracy = found.get("accuracy")
    if args.accuracy is not None:
        accuracy = {
            "with_reduction": args.accuracy,
            "without_reduction": args.accuracy_without_reduction,
            "dataset": args.eval_dataset,
            "split": args.eval_split,
        }
    elif args.accuracy_without_reduction is not None:
        raise ValueError("--accuracy-without-reduction needs --accuracy (the accuracy with token reduction).")
    elif accuracy is not None and args.eval_dataset:
        accuracy["dataset"] = args.eval_dataset
    images = found.get("images", {})
    images.update({key: path for key, path in (("kept_tokens", args.kept_tokens), ("pareto", args.pareto)) if path})
    speed = _load_benchmark(args.benchmark) if args.benchmark else found.get("speed")
    write_model_card(
        folder,
        config,
        base_model=args.base_model,
        datasets=args.dataset,
        accuracy=accuracy,
        speed=speed,
        images=images or None,
        repo_id=args.repo_id,
        revision=args.revision,
        model_name=args.model_name,
        description=args.description,
        license=args.license,
        tags=args.tag,
    )
    used = [name for name in (RESULTS_FILE, EVAL_RESULTS_FILE) if (folder / name).is_file()]
    print(f"wrote {folder / CARD_NAME}" + (f" (with {', '.join(used)})" if used else ""))
    return 0
