"""The model card of a TokenPrune model of any family: ``model_cards/tokenprune.md`` rendered through
`huggingface_hub.ModelCard`.

Metadata (library, pipeline, base model, tags, datasets, a ``model-index`` with the accuracy) and a body with the
method and its paper, the plan per layer, FLOPs, measured speed, accuracy, pictures and usage with a pinned revision.
User text never reaches the YAML front matter except through ``ModelCardData`` (safe YAML serialization), after
control characters are removed; in the body it is escaped for Markdown and HTML.
"""

import html
import json
import math
import re
import shutil
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..families import FAMILIES, family_of, is_tokenprune
from ..flops import count_flops, num_prefix_tokens
from ..measure.report import unreliable_reasons
from ..models.methods import ATTENTION_REUSE_METHODS, REDUCTION_METHODS, get_reduction_class
from ..models.token_reduction import Paper

CARD_NAME = "README.md"
IMAGES_DIR = "card_images"
TEMPLATE_NAME = "tokenprune.md"  # one template for every family
LEGACY_TEMPLATE_NAMES = ("tokenprune_vit.md",)  # its name before the other families (an older install's data files)
# what the stock class does -> (task, pipeline tag, Auto class of the usage snippet)
TASKS = {
    "classification": ("image classification", "image-classification", "AutoModelForImageClassification"),
    "zero-shot": ("zero-shot image classification", "zero-shot-image-classification", "AutoModel"),
    "features": ("image features", "image-feature-extraction", "AutoModel"),
    "video": ("video classification", "video-classification", "AutoModelForVideoClassification"),
}
# Never uploaded: pickles (Trainer's training_args.bin, optimizer states); weights travel as safetensors only.
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt"]
TRAINER_IGNORE_PATTERNS = ["_*", "checkpoint-*", *PICKLE_PATTERNS]
BASE_TAGS = ("vision", "token-pruning", "token-reduction")

IMAGE_CAPTIONS = {
    "kept_tokens": "Tokens kept at each layer",
    "pareto": "Accuracy against speed-up (Pareto front)",
    "training_curve": "Training loss, evaluation accuracy and the scheduled keep rate",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~=])")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
_IMAGE_KEY = re.compile(r"[a-z0-9_]{1,40}")

# ----------------------------------------------------------------------------------------------------------------
# Text safety
# ----------------------------------------------------------------------------------------------------------------


def one_line(text: Any, field: str, max_length: int = 200) -> str:
    """``text`` as a single line of printable characters (control, format and line-break characters become spaces).

    Raises:
        ValueError: if ``text`` is not a string, or is empty or longer than ``max_length`` once cleaned.
    """
    if not isinstance(text, str):
        raise ValueError(f"{field} = {text!r} must be a string.")
    cleaned = "".join(" " if unicodedata.category(c)[0] in "CZ" and c != " " else c for c in text)
    cleaned = " ".join(cleaned.split())
    if not cleaned or len(cleaned) > max_length:
        raise ValueError(f"{field} = {text!r} must be 1 to {max_length} printable characters.")
    return cleaned


def markdown_text(text: str) -> str:
    """Escapes text so Markdown shows it as typed: markup characters get a backslash, ``& < >`` become entities."""
    return html.escape(_MARKDOWN_SPECIAL.sub(r"\\\1", text), quote=False)


def markdown_paragraphs(text: Any, field: str) -> str:
    """Multi-line user text as escaped Markdown paragraphs (blank lines separate paragraphs)."""
    if not isinstance(text, str):
        raise ValueError(f"{field} = {text!r} must be a string.")
    paragraphs = re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = [[one_line(line, field, 10_000) for line in p.split("\n") if line.strip()] for p in paragraphs]
    return "\n\n".join("  \n".join(markdown_text(line) for line in block) for block in lines if block)


def _hub_id(value: Any, field: str) -> str:
    try:
        validate_repo_id(value)
    except (HFValidationError, TypeError):
        raise ValueError(
            f"{field} = {value!r} must be a Hub id such as 'google/vit-base-patch16-224' (letters, digits, '-', '_', "
            "'.', one '/')."
        ) from None
    return value


def check_revision(value: Any) -> str:
    if not isinstance(value, str) or not _REVISION.fullmatch(value) or ".." in value:
        raise ValueError(f"revision = {value!r} must be a commit id, branch or tag name (letters, digits, . _ - /).")
    return value


# ----------------------------------------------------------------------------------------------------------------
# Inputs of a card
# ----------------------------------------------------------------------------------------------------------------


def _fraction(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{field} = {value!r} must be a fraction in [0, 1] (0.93 for 93%).")
    return float(value)


def _positive(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{field} = {value!r} must be a positive number.")
    return float(value)


def _check_accuracy(accuracy: Mapping | None) -> dict | None:
    """``{"with_reduction", "without_reduction"?, "dataset"?, "split"?, "dataset_id"?}`` checked and cleaned."""
    if accuracy is None:
        return None
    if not isinstance(accuracy, Mapping) or "with_reduction" not in accuracy:
        raise ValueError(f"accuracy = {accuracy!r} must be a dict with at least 'with_reduction' (a fraction).")
    unknown = sorted(set(accuracy) - {"with_reduction", "without_reduction", "dataset", "split", "dataset_id"})
    if unknown:
        raise ValueError(
            f"accuracy has unknown key(s) {unknown}; allowed: with_reduction, without_reduction, "
            "dataset, split, dataset_id."
        )
    without = accuracy.get("without_reduction")
    return {
        "with_reduction": _fraction(accuracy["with_reduction"], "accuracy['with_reduction']"),
        "without_reduction": None if without is None else _fraction(without, "accuracy['without_reduction']"),
        "dataset": one_line(accuracy.get("dataset") or "evaluation set", "accuracy['dataset']"),
        "split": one_line(accuracy.get("split") or "evaluation", "accuracy['split']"),
        "dataset_id": None if accuracy.get("dataset_id") is None else _hub_id(accuracy["dataset_id"], "dataset_id"),
    }


def _speed_rows(speed: Mapping | Sequence[Mapping] | None, config: Any) -> list[dict]:
    """Benchmark rows (one dict or a list) formatted for the card's table.

    Rows that name their plan (``plan``, ``attention_reuse``, as hf_tokenprune's benchmark writes them) are kept only
    when it is this model's plan, so a card never shows another plan's speed.
    """
    if speed is None:
        return []
    rows = [speed] if isinstance(speed, Mapping) else speed
    if not isinstance(rows, Sequence) or not rows or not all(isinstance(row, Mapping) for row in rows):
        raise ValueError(f"speed = {speed!r} must be a benchmark row (dict) or a non-empty list of them.")
    mine = _jsonable([config.token_reduction, getattr(config, "attention_reuse", None)])
    kept = [row for row in rows if "plan" not in row or _jsonable([row["plan"], row.get("attention_reuse")]) == mine]
    if not kept:
        labels = sorted({str(row.get("label")) for row in rows})
        raise ValueError(f"speed: no benchmark row measures this model's plan {mine}; the rows measure {labels}.")
    return [_speed_row(row, index) for index, row in enumerate(kept)]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _speed_row(row: Mapping, index: int) -> dict:
    field = f"speed[{index}]"
    if "measured_speedup" not in row:
        raise ValueError(f"{field} has no 'measured_speedup'; a benchmark row needs it (stock time / this time).")
    measured = _positive(row["measured_speedup"], f"{field}['measured_speedup']")
    ideal = None if row.get("ideal_speedup") is None else _positive(row["ideal_speedup"], f"{field}['ideal_speedup']")
    fraction = row.get("fraction_of_ideal", measured / ideal if ideal else None)
    fraction = None if fraction is None else _positive(fraction, f"{field}['fraction_of_ideal']")

    def text(key: str) -> str:
        value = row.get(key)
        return "–" if value is None else markdown_text(one_line(str(value), f"{field}[{key!r}]"))

    reasons = unreliable_reasons({**row, "measured_speedup": measured, "ideal_speedup": ideal})
    return {
        "label": text("label"),
        "mode": text("mode"),
        "device": text("device"),
        "dtype": text("dtype"),
        "batch_size": text("batch_size"),
        "measured": f"{measured:.2f}x" + _spread(row.get("spread")) + (", unreliable" if reasons else ""),
        "unreliable": markdown_text("; ".join(reasons)),
        "ideal": "–" if ideal is None else f"{ideal:.2f}x",
        "fraction": "–" if fraction is None else f"{fraction:.0%}",
    }


def _spread(spread: Any) -> str:
    """`` (min–max)`` of the rounds when the row has a valid ``spread``."""
    ok = isinstance(spread, Sequence) and len(spread) == 2 and all(isinstance(v, (int, float)) for v in spread)
    return f" ({spread[0]:.2f}–{spread[1]:.2f})" if ok else ""


def _copy_images(images: Mapping | None, folder: Path | None) -> list[dict]:
    """Copies the pictures into ``folder/card_images`` under fixed names; returns captions and relative links."""
    if not images:
        return []
    if folder is None:
        raise ValueError("images need a folder to be copied into (write_model_card(folder, ...)).")
    if not isinstance(images, Mapping):
        raise ValueError(f"images = {images!r} must be a dict such as {{'kept_tokens': 'kept.png', 'pareto': ...}}.")
    entries = []
    for key, source in images.items():
        source = Path(source)
        if not isinstance(key, str) or not _IMAGE_KEY.fullmatch(key):
            raise ValueError(f"images key {key!r} must be lower-case letters, digits or '_' (e.g. 'kept_tokens').")
        if source.suffix.lower() not in IMAGE_SUFFIXES or not source.is_file():
            raise ValueError(f"images[{key!r}] = '{source}' must be an existing {'/'.join(IMAGE_SUFFIXES)} file.")
        target = folder / IMAGES_DIR / f"{key}{source.suffix.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        caption = IMAGE_CAPTIONS.get(key, key.replace("_", " ").capitalize())
        entries.append({"caption": caption, "path": f"{IMAGES_DIR}/{target.name}"})
    return entries


def _training_rows(training: Mapping | None) -> list[tuple[str, str]]:
    if not training:
        return []
    if not isinstance(training, Mapping):
        raise ValueError(f"training = {training!r} must be a dict of hyperparameter name -> value.")
    return [
        (markdown_text(one_line(str(k), "training key")), markdown_text(one_line(str(v), f"training[{k!r}]")))
        for k, v in training.items()
    ]


# ----------------------------------------------------------------------------------------------------------------
# What the config says
# ----------------------------------------------------------------------------------------------------------------


def card_config(model_or_config: Any) -> Any:
    """The config of an hf_tokenprune model (or the config itself); refuses any other model in one line."""
    config = getattr(model_or_config, "config", model_or_config)
    if not is_tokenprune(config):
        known = ", ".join(row.model_type for row in FAMILIES.values())
        raise ValueError(
            f"model_or_config is a {getattr(config, 'model_type', type(config).__name__)!r} model or config; cards "
            f"and pushes here are for hf_tokenprune models ({known})."
        )
    return config


def _vision(config: Any) -> Any:
    """The config of the vision tower (a CLIP model's ``vision_config``; the config itself elsewhere)."""
    return getattr(config, "vision_config", None) or config


def describe(model_or_config: Any) -> dict[str, str]:
    """Family, stock class, task, pipeline tag and Auto class of a model (its class) or a config (its
    ``architectures``): ``TokenPruneDinov2ForImageClassification`` extends ``Dinov2ForImageClassification``."""
    config = card_config(model_or_config)
    row = family_of(config.model_type)
    family, family_tag = row.title, row.hub_tag
    if hasattr(model_or_config, "config"):
        name = type(model_or_config).__name__
    else:
        name = (getattr(config, "architectures", None) or ["TokenPruneViTForImageClassification"])[0]
    stock = name.removeprefix("TokenPrune")
    kind = "classification" if "ForImageClassification" in stock else "zero-shot" if stock == "CLIPModel" else None
    kind = "video" if "ForVideoClassification" in stock else kind
    task, pipeline_tag, auto_class = TASKS[kind or "features"]
    return {"family": family, "family_tag": family_tag, "stock_class": stock, "task": task,
            "pipeline_tag": pipeline_tag, "auto_class": auto_class}  # fmt: skip


def _plans(config: Any) -> list[tuple[str, dict]]:
    """(role, plan) of the plans in force: token reduction, then attention reuse."""
    plans = [
        ("Token reduction", config.token_reduction),
        ("Attention reuse", getattr(config, "attention_reuse", None)),
    ]
    return [(role, plan) for role, plan in plans if plan]


def _paper_rows(config: Any) -> list[dict]:
    """The paper of each method in force, from the method's class (``paper``)."""
    rows = []
    for role, plan in _plans(config):
        registry = REDUCTION_METHODS if role == "Token reduction" else ATTENTION_REUSE_METHODS
        paper = getattr(registry.get(plan["method"]), "paper", None) or Paper("no citation recorded", "–", None)
        rows.append(
            {"role": role, "method": plan["method"], "title": paper.title, "venue": paper.authors,
             "arxiv": paper.arxiv, "code": paper.code}
        )  # fmt: skip
    return rows


def _option_value(value: Any) -> str:
    return markdown_text(json.dumps(value)) if not isinstance(value, str) else markdown_text(value)


def _plan_options(config: Any) -> list[tuple[str, str]]:
    options = []
    for prefix, plan in (("", config.token_reduction), ("attention_reuse.", getattr(config, "attention_reuse", None))):
        for name, value in (plan or {}).items():
            options.append((f"{prefix}{name}", _option_value(value)))
    options.append(("restore_tokens", _option_value(bool(getattr(config, "restore_tokens", False)))))
    return options


def _layer_rows(config: Any, report: Any) -> list[dict]:
    reused = set((getattr(config, "attention_reuse", None) or {}).get("layers") or [])
    return [
        {
            "index": index,
            "attention": layer.attention_tokens,
            "mlp": layer.mlp_tokens,
            "gflops": f"{2 * layer.macs / 1e9:.4g}",
            "note": "attention reused" if index in reused else "",
        }
        for index, layer in enumerate(report.layers)
    ]


def _summary(config: Any, report: Any, info: dict) -> str:
    methods = " and ".join(f"**`{plan['method']}`** ({role.lower()})" for role, plan in _plans(config)) or "no plan"
    vision = _vision(config)
    classes = (
        f", {config.num_labels} classes"
        if info["pipeline_tag"] in ("image-classification", "video-classification")
        else ""
    )
    return (
        f"A {info['family']} model for {info['task']} (a `{info['stock_class']}` with {vision.num_hidden_layers} "
        f"layers, width {vision.hidden_size}{classes}) that runs {methods} with the `hf-tokenprune` "
        f"package: {report.gflops:.4g} GFLOPs per {_unit(config)} of the vision tower "
        f"instead of {report.stock_gflops:.4g}, an ideal speed-up of {report.ideal_speedup:.2f}x."
    )


def _runtime_snippet(config: Any, info: dict) -> str:
    plan = config.token_reduction
    if not plan:
        return ""
    method = get_reduction_class(plan["method"])
    lines = []
    if method.uses_keep_rate:
        lines.append("outputs = model(**inputs, keep_rate=0.5)  # another keep rate for this call only")
    if method.runtime_options:
        name = method.runtime_options[0]
        lines.append(
            f"model.config.token_reduction = {{**model.config.token_reduction, {name!r}: ...}}  # a new amount"
        )
    lines.append(f"outputs = model(**inputs, disable_plans=True)  # the same weights as a stock {info['family']}")
    runtime = ", ".join(f"`{name}`" for name in method.runtime_options) or "none"
    return f"Amounts that may change on the loaded model ({runtime}):\n\n```python\n" + "\n".join(lines) + "\n```"


def _input_name(config: Any) -> str:
    """One input as the card names it: ``224x224 image``, ``16-frame 224x224 clip``, ``256-slot NaFlex image``."""
    vision = _vision(config)
    if vision.model_type == "tokenprune_siglip2_vision_model":  # NaFlex: patch slots, each image its own grid
        return f"{vision.num_patches}-slot NaFlex image"
    shape = vision.input_shape()
    size = f"{shape[-2]}x{shape[-1]}"
    return f"{shape[0]}-frame {size} clip" if len(shape) == 4 else f"{size} image"


def _unit(config: Any) -> str:
    """What one input is: ``image`` or ``clip``."""
    return _input_name(config).rpartition(" ")[2]


# ----------------------------------------------------------------------------------------------------------------
# The card
# ----------------------------------------------------------------------------------------------------------------


def template_path(folders: Sequence[Path] | None = None) -> Path:
    """The card template, found in ``folders`` (default: ``hf_tokenprune/model_cards/`` in an installed wheel,
    ``model_cards/`` in a checkout), under its older name ``tokenprune_vit.md`` when only that one is there."""
    here = Path(__file__).resolve().parent
    package = here.parent  # hf_tokenprune/
    folders = [package / "model_cards", package.parent / "model_cards"] if folders is None else folders
    for name in (TEMPLATE_NAME, *LEGACY_TEMPLATE_NAMES):
        for folder in folders:
            if (Path(folder) / name).is_file():
                return Path(folder) / name
    raise FileNotFoundError(f"card template {TEMPLATE_NAME} not found in {', '.join(map(str, folders))}")


def _card_data(config, info, *, model_name, base_model, datasets, accuracy, license, tags) -> ModelCardData:
    method_tags = [plan["method"].replace("_", "-") for _, plan in _plans(config)]
    family = ["attention-reuse"] if getattr(config, "attention_reuse", None) else []
    user_tags = [one_line(tag, "tags", 120) for tag in tags or []]
    task_tags = ["vision", info["pipeline_tag"], info["family_tag"], *BASE_TAGS[1:]]
    all_tags = [*task_tags, *family, *method_tags, "custom_code", "hf-tokenprune", *user_tags]
    eval_results = None
    if accuracy is not None:
        dataset_type = accuracy["dataset_id"] or (datasets[0] if datasets else accuracy["dataset"])
        common = dict(
            task_type=info["pipeline_tag"],
            dataset_type=dataset_type,
            dataset_name=accuracy["dataset"],
            dataset_split=accuracy["split"],
            metric_type="accuracy",
        )
        named = [
            ("Accuracy", accuracy["with_reduction"]),
            ("Accuracy without token reduction (same weights)", accuracy["without_reduction"]),
        ]
        eval_results = [EvalResult(**common, metric_value=v, metric_name=n) for n, v in named if v is not None]
    return ModelCardData(
        library_name="transformers",
        pipeline_tag=info["pipeline_tag"],
        base_model=base_model,
        datasets=list(datasets) or None,
        license=license,
        tags=list(dict.fromkeys(all_tags)),
        model_name=model_name,
        eval_results=eval_results,
        metrics=["accuracy"] if accuracy else None,
    )


def write_model_card(
    folder: str | Path | None,
    model_or_config: Any,
    *,
    base_model: str | None = None,
    datasets: str | Sequence[str] | None = None,
    accuracy: Mapping | None = None,
    speed: Mapping | Sequence[Mapping] | None = None,
    images: Mapping[str, str | Path] | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
    model_name: str | None = None,
    description: str | None = None,
    license: str | None = None,
    tags: Sequence[str] | None = None,
    training: Mapping | None = None,
    source: Mapping | None = None,
) -> ModelCard:
    """Renders the model card of a TokenPruneViT and, when ``folder`` is given, writes ``folder/README.md``.

    Args:
        folder: a saved model folder (the pictures are copied into ``folder/card_images``), or None to only render.
        model_or_config: a TokenPruneViT model or its config.
        base_model: Hub id of the checkpoint it was made from (default: the config's ``_name_or_path`` if that is a
            Hub id).
        datasets: Hub ids of the training datasets (metadata).
        accuracy: ``{"with_reduction": 0.93, "without_reduction": 0.95, "dataset": "name", "split": "validation",
            "dataset_id": "hub/id"}``, fractions; goes into the ``model-index`` and the body.
        speed: a benchmark row or a list of rows with keys ``label, mode, measured_speedup, ideal_speedup,
            fraction_of_ideal, device, dtype, batch_size, gflops, stock_gflops``.
        images: ``{"kept_tokens": path, "pareto": path, ...}``: PNG/JPEG/GIF/WebP files shown in the card.
        repo_id: the Hub repository, for the usage snippet.
        revision: the commit (or tag) the usage snippet pins; a placeholder ``"main"`` when not given.
        model_name: the card's title and the ``model-index`` name (default: the repository name).
        description: free text shown under the title (escaped).
        license: a license id for the metadata.
        tags: more tags.
        training: hyperparameter name -> value, shown as a table.
        source: where converted weights come from (`hf_tokenprune.convert`): ``repository``, ``checkpoint``,
            ``published``, ``reported_top1`` (ImageNet-1k top-1 in percent, as the authors report it),
            ``reported_note``, ``read_from``, ``parity`` and ``not_carried``.

    Returns:
        The `huggingface_hub.ModelCard`.

    Raises:
        ValueError: for a value that is out of range or malformed; the message names the field.
    """
    config = card_config(model_or_config)
    info = describe(model_or_config)
    folder = None if folder is None else Path(folder)
    repo_id = None if repo_id is None else _hub_id(repo_id, "repo_id")
    revision = None if revision is None else check_revision(revision)
    datasets = [datasets] if isinstance(datasets, str) else list(datasets or [])
    datasets = [_hub_id(name, "datasets") for name in datasets]
    base_model = base_model if base_model is not None else _default_base_model(config)
    base_model = None if base_model is None else _hub_id(base_model, "base_model")
    model_name = model_name if model_name is not None else _default_name(config, repo_id, info)
    model_name = one_line(model_name, "model_name")
    checked_accuracy = _check_accuracy(accuracy)
    card_data = _card_data(
        config,
        info,
        model_name=model_name,
        base_model=base_model,
        datasets=datasets,
        accuracy=checked_accuracy,
        license=None if license is None else one_line(license, "license"),
        tags=tags,
    )
    context = _body_context(config, info, checked_accuracy, revision, repo_id)
    if base_model is not None:
        context["summary"] += f" Made from [{markdown_text(base_model)}](https://huggingface.co/{base_model})."
    context.update(
        title=markdown_text(model_name),
        speed=_speed_rows(speed, config),
        training=_training_rows(training),
        description=None if description is None else markdown_paragraphs(description, "description"),
        images=_copy_images(images, folder),
        source=_source(source),
    )
    card = ModelCard.from_template(card_data, template_path=str(template_path()), **context)
    card.text = re.sub(r"\n{3,}", "\n\n", card.text)  # the template's control lines leave runs of blank lines
    _check_metadata_round_trip(card, card_data)
    if folder is not None:
        card.save(folder / CARD_NAME)
    return card


def _source(source: Mapping | None) -> dict | None:
    """The converted checkpoint's origin, every text escaped."""
    if source is None:
        return None
    top1 = source.get("reported_top1")
    if top1 is not None and (isinstance(top1, bool) or not isinstance(top1, (int, float)) or not 0 <= top1 <= 100):
        raise ValueError(f"source['reported_top1'] = {top1!r} must be a top-1 accuracy in percent.")
    repository = _hub_id(source["repository"], "source['repository']")

    def line(key: str, max_length: int = 300) -> str:
        value = source.get(key) or ""
        return markdown_text(one_line(value, f"source['{key}']", max_length)) if value else ""

    return {
        "repository": repository,
        "checkpoint": line("checkpoint"),
        "published": line("published"),
        "reported_top1": None if top1 is None else f"{top1:.2f}%",
        "reported_note": line("reported_note"),
        "read_from": line("read_from"),
        "parity": markdown_paragraphs(source.get("parity") or "", "source['parity']"),
        "not_carried": [
            markdown_text(one_line(line, "source['not_carried']", 300)) for line in source.get("not_carried", ())
        ],
    }


def _default_name(config: Any, repo_id: str | None, info: dict) -> str:
    if repo_id:
        return repo_id.split("/")[-1]
    return " ".join([f"TokenPrune{info['stock_class']}", *(plan["method"] for _, plan in _plans(config))])


def _default_base_model(config: Any) -> str | None:
    name = getattr(config, "_name_or_path", "") or ""
    if not name or Path(name).exists():
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name if "/" in name else None


def _body_context(config: Any, info: dict, accuracy: dict | None, revision: str | None, repo_id: str | None) -> dict:
    report = count_flops(_vision(config))
    shown_accuracy = None
    if accuracy is not None:
        without = accuracy["without_reduction"]
        shown_accuracy = {
            "dataset": markdown_text(accuracy["dataset"]),
            "split": markdown_text(accuracy["split"]),
            "with_reduction": f"{accuracy['with_reduction']:.2%}",
            "without_reduction": "not measured" if without is None else f"{without:.2%}",
        }
    return {
        **info,
        "summary": _summary(config, report, info),
        "papers": _paper_rows(config),
        "plan_intro": "The plan as stored in `config.json` (with its defaults filled in):",
        "plan_options": _plan_options(config),
        "input_name": _input_name(config),
        "unit": _unit(config),
        "num_patches": report.layers[0].attention_tokens - _num_prefix(config),
        "layers": _layer_rows(config, report),
        "flops": {
            "gflops": f"{report.gflops:.4g}",
            "stock_gflops": f"{report.stock_gflops:.4g}",
            "ideal": f"{report.ideal_speedup:.2f}",
        },
        "accuracy": shown_accuracy,
        "pinned": revision is not None,
        "revision": revision or "main",
        "repo_literal": json.dumps(repo_id or "your-name/your-model"),
        "revision_literal": json.dumps(revision or "main"),
        "runtime_snippet": _runtime_snippet(config, info),
    }


def _num_prefix(config: Any) -> int:
    return num_prefix_tokens(_vision(config))


def _check_metadata_round_trip(card: ModelCard, card_data: ModelCardData) -> None:
    """The front matter must parse back to exactly the metadata that was meant (nothing injected, nothing lost)."""
    if ModelCard(str(card)).data.to_dict() != card_data.to_dict():
        raise ValueError("the model card's metadata does not parse back to what was written; refusing to save it.")
