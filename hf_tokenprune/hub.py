"""Share an hf_tokenprune model (ViT or another family) on the Hugging Face Hub: pushes that upload everything a
``trust_remote_code=True`` user needs, with the generated model card (`hf_tokenprune.model_card`).

- `push_to_hub` saves the model (safetensors, config with ``auto_map``, the remote-code files), the image processor
  and the card, and uploads them in two commits: the model first, then the card, which pins the model commit.
- `check_shareable` refuses a model whose plan names a method the checkpoint's code would not contain.
- `install` makes ``model.push_to_hub`` of hf_tokenprune models (every family) and ``Trainer.push_to_hub`` /
  ``Trainer.create_model_card`` of trainers holding one use the above; every other model keeps the stock behaviour.
- ``hf-tokenprune card FOLDER`` (re)writes the card of a saved folder.

The access token is never printed, and a folder that contains it is refused before anything is uploaded.
"""

import argparse
import functools
import importlib.abc
import importlib.util
import inspect
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi, get_token
from huggingface_hub.utils import filter_repo_objects

from .model_card import (
    CARD_NAME,
    FAMILIES,
    IMAGES_DIR,
    PICKLE_PATTERNS,
    TRAINER_IGNORE_PATTERNS,
    _config_of,
    _revision,
    describe,
    markdown_text,
    write_model_card,
)

# ----------------------------------------------------------------------------------------------------------------
# What a checkpoint can carry
# ----------------------------------------------------------------------------------------------------------------


def _source_file(cls: type) -> Path | None:
    try:
        return Path(inspect.getsourcefile(cls)).resolve()
    except (TypeError, OSError):
        return None  # defined in an interactive session: certainly not a file save_pretrained copies


def island_files(model_or_config: Any) -> set[Path]:
    """The Python files ``save_pretrained`` copies into a checkpoint: the model's and the config's defining files and,
    recursively, the files they import with ``from .name import x``."""
    from transformers.dynamic_module_utils import get_relative_import_files

    from .models.modeling_tokenprune_vit import TokenPruneViTForImageClassification

    config = _config_of(model_or_config)
    classes = [type(config)]
    if hasattr(model_or_config, "config"):
        classes.append(type(model_or_config))
    elif config.model_type == "tokenprune_vit":
        classes.append(TokenPruneViTForImageClassification)
    files = set()
    for cls in classes:
        source = _source_file(cls)
        if source is not None:
            files |= {source, *(Path(f).resolve() for f in get_relative_import_files(source))}
    return files


def _registries(config: Any) -> dict[str, dict]:
    """The method registries next to the config's module (ours, or a remote-code copy of the island)."""
    package = type(config).__module__.rpartition(".")[0]
    found: dict[str, dict] = {}
    for name, module in list(sys.modules.items()):
        if module is None or name.rpartition(".")[0] != package:
            continue
        for key in ("REDUCTION_METHODS", "ATTENTION_REUSE_METHODS"):
            if isinstance(getattr(module, key, None), dict):
                found.setdefault(key, getattr(module, key))
    return found


def check_shareable(model_or_config: Any) -> None:
    """Refuses a model whose plan names a method that the checkpoint's remote code would not contain.

    A method is built in when its class is defined in one of the files ``save_pretrained`` copies (`island_files`);
    one registered at runtime by user code (``register_reduction`` in a script or notebook) is not, and a model loaded
    with ``trust_remote_code=True`` elsewhere could not run it.

    Raises:
        ValueError: naming the method, where it is defined, and the built-in methods.
    """
    config = _config_of(model_or_config)
    island = island_files(model_or_config)
    registries = _registries(config)
    checks = (("token_reduction", "REDUCTION_METHODS"), ("attention_reuse", "ATTENTION_REUSE_METHODS"))
    for field, registry_name in checks:
        plan = getattr(config, field, None)
        if not plan:
            continue
        registry = registries.get(registry_name, {})
        builtin = sorted(name for name, cls in registry.items() if _source_file(cls) in island)
        cls = registry.get(plan["method"])
        if cls is None or _source_file(cls) not in island:
            where = "an unknown place" if cls is None else f"{cls.__module__} ({_source_file(cls) or 'no file'})"
            raise ValueError(
                f"{field}['method'] = {plan['method']!r} is not built into hf_tokenprune: it is registered by "
                f"{where}, a file that save_pretrained does not copy, so the model could not run where it is loaded "
                f"with trust_remote_code=True. Built-in methods: {builtin}. Add the method to hf_tokenprune/models "
                "(see CONTRIBUTING.md) to share such a model."
            )


# ----------------------------------------------------------------------------------------------------------------
# Pushing
# ----------------------------------------------------------------------------------------------------------------


def _secret(token: str | bool | None) -> str | None:
    """The token the upload will use (explicit, else the one huggingface_hub finds)."""
    if isinstance(token, str):
        return token
    return None if token is False else get_token()


def _check_no_secret(folder: Path, secret: str | None, ignore_patterns: Sequence[str] = ()) -> None:
    """Refuses to upload a folder in which a file that would be uploaded contains the access token (which is never
    shown), as typed or as the card's body escapes it."""
    if not secret:
        return
    needles = {secret.encode(), markdown_text(secret).encode()}
    files = {path.relative_to(folder).as_posix(): path for path in folder.rglob("*") if path.is_file()}
    for name in sorted(filter_repo_objects(files, ignore_patterns=list(ignore_patterns) or None)):
        if _contains(files[name], needles):
            raise ValueError(
                f"'{name}' contains your Hugging Face access token; refusing to upload it. Remove the token from that "
                "file (or from the text given to the card) and push again."
            )


def _contains(path: Path, needles: set[bytes], chunk: int = 1 << 24) -> bool:
    overlap = max(map(len, needles)) - 1
    with open(path, "rb") as file:
        tail = b""
        while block := file.read(chunk):
            window = tail + block
            if any(needle in window for needle in needles):
                return True
            tail = window[-overlap:]
    return False


def _ensure_branch(api: HfApi, repo_id: str, revision: str | None, token: str | bool | None) -> None:
    if revision not in (None, "main"):
        api.create_branch(repo_id=repo_id, branch=_revision(revision), token=token, exist_ok=True)


def upload_model_then_card(
    api: HfApi,
    folder: Path,
    repo_id: str,
    write_card,
    *,
    token: str | bool | None,
    revision: str | None,
    commit_message: str,
    commit_description: str | None = None,
    ignore_patterns: Sequence[str] = PICKLE_PATTERNS,
) -> CommitInfo:
    """Uploads ``folder`` in two commits: everything but the card, then the card (and its pictures), written by
    ``write_card(model_commit_id)`` so its usage snippet pins the commit that holds the weights and the code.

    Returns:
        The `CommitInfo` of the card commit (the new head of ``revision``).
    """
    folder = Path(folder)
    secret = _secret(token)
    _check_no_secret(folder, secret, ignore_patterns)
    card_files = [CARD_NAME, f"{IMAGES_DIR}/*"]
    model_commit = api.upload_folder(
        folder_path=folder,
        repo_id=repo_id,
        token=token,
        revision=revision,
        commit_message=commit_message,
        commit_description=commit_description,
        ignore_patterns=[*ignore_patterns, *card_files],
    )
    write_card(model_commit.oid)
    _check_no_secret(folder, secret, ignore_patterns)
    return api.upload_folder(
        folder_path=folder,
        repo_id=repo_id,
        token=token,
        revision=revision,
        allow_patterns=card_files,
        commit_message="Add model card (hf_tokenprune)",
        ignore_patterns=list(ignore_patterns),
    )


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    image_processor: Any = None,
    token: str | bool | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    max_shard_size: int | str = "50GB",
    **card_kwargs: Any,
) -> CommitInfo:
    """Uploads a TokenPruneViT with its remote code, image processor and generated card.

    The model is saved with ``save_pretrained`` (safetensors, ``config.json`` with ``auto_map``, the island's Python
    files), the image processor next to it, and the card rendered by `write_model_card` (``card_kwargs``: base_model,
    datasets, accuracy, speed, images, model_name, description, license, tags, training). Every input is checked, and
    the model's methods must be built in (`check_shareable`), before anything is sent to the Hub.

    Args:
        model: a TokenPruneViT model.
        repo_id: ``"name"`` or ``"namespace/name"``; created if missing.
        image_processor: saved next to the model (``preprocessor_config.json``).
        token: a Hub token; default: the one ``huggingface_hub`` finds (``HF_TOKEN``, ``hf auth login``).
        private: visibility of a new repository.
        revision: the branch to push to (created from main if missing).
        commit_message: message of the model commit.
        commit_description: description of the model commit.
        max_shard_size: passed to ``save_pretrained``.

    Returns:
        The `CommitInfo` of the card commit; the card pins the commit before it, which holds weights and code.
    """
    check_shareable(model)
    revision = None if revision is None else _revision(revision)
    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="tokenprune-push-") as tmp:
        folder = Path(tmp)
        model.save_pretrained(folder, max_shard_size=max_shard_size)
        if image_processor is not None:
            image_processor.save_pretrained(folder)
        write_model_card(folder, model, repo_id=repo_id, **card_kwargs)  # every card input checked before the Hub
        _check_no_secret(folder, _secret(token))
        repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        _ensure_branch(api, repo_id, revision, token)
        write = functools.partial(write_model_card, folder, model, repo_id=repo_id, **card_kwargs)
        return upload_model_then_card(
            api,
            folder,
            repo_id,
            lambda commit: write(revision=commit),
            token=token,
            revision=revision,
            commit_message=commit_message or f"Upload {_class_name(model)} (weights, config, remote code)",
            commit_description=commit_description,
        )


# ----------------------------------------------------------------------------------------------------------------
# model.push_to_hub and Trainer.push_to_hub
# ----------------------------------------------------------------------------------------------------------------

_ORIGINALS: dict[str, Any] = {}


def _class_name(model: Any) -> str:
    return f"TokenPrune{describe(model)['stock_class']}"


def _is_tokenprune(model: Any) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) in FAMILIES


def _model_push_to_hub(self, repo_id: str, *, create_pr: bool = False, tags: Sequence[str] | None = None, **kwargs):
    """Uploads the model, its remote code and a generated model card (see `hf_tokenprune.hub.push_to_hub`; extra
    keywords: ``image_processor`` and the card's ``base_model, datasets, accuracy, speed, images, ...``)."""
    if create_pr:
        raise ValueError("create_pr=True is not supported by hf_tokenprune's push; push to a branch (revision=...).")
    return push_to_hub(self, repo_id, tags=tags, **kwargs)


def _trainer_model(trainer: Any) -> Any:
    return trainer.accelerator.unwrap_model(trainer.model) if hasattr(trainer, "accelerator") else trainer.model


def _trainer_accuracy(trainer: Any, dataset: Any) -> dict | None:
    """The last ``eval_accuracy`` the Trainer logged."""
    for entry in reversed(trainer.state.log_history):
        if "eval_accuracy" in entry:
            name = dataset[0] if isinstance(dataset, (list, tuple)) and dataset else dataset
            return {"with_reduction": entry["eval_accuracy"], "dataset": name or "evaluation set"}
    return None


def _trainer_hyperparameters(trainer: Any) -> dict:
    args, state = trainer.args, trainer.state
    return {
        "learning_rate": args.learning_rate,
        "train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "epochs": round(state.epoch or 0, 2),
        "steps": state.global_step,
        "optimizer": getattr(args.optim, "value", args.optim),
        "seed": args.seed,
    }


def _trainer_create_model_card(self, *args, **kwargs) -> None:
    """`Trainer.create_model_card`; for a TokenPruneViT it writes hf_tokenprune's card into ``output_dir``."""
    model = _trainer_model(self)
    if not _is_tokenprune(model):
        return _ORIGINALS["create_model_card"](self, *args, **kwargs)
    if not self.is_world_process_zero():
        return None
    names = list(inspect.signature(_ORIGINALS["create_model_card"]).parameters)[1:]  # the stock ones, after self
    stock = {**dict(zip(names, args)), **kwargs}
    if stock.get("model_name") is None:  # as the stock Trainer names it
        stock["model_name"] = (self.args.hub_model_id or str(self.args.output_dir)).rstrip("/").split("/")[-1]
    dataset_tags = stock.pop("dataset_tags", None)
    accuracy = stock.pop("accuracy", None) or _trainer_accuracy(self, stock.pop("dataset", None) or dataset_tags)
    for ignored in ("language", "tasks", "dataset", "dataset_args"):  # fixed here: image classification
        stock.pop(ignored, None)
    tags = stock.pop("tags", None)
    write_model_card(
        self.args.output_dir,
        model,
        base_model=stock.pop("finetuned_from", None),
        datasets=dataset_tags,
        accuracy=accuracy,
        tags=[tags] if isinstance(tags, str) else tags,
        repo_id=stock.pop("repo_id", None) or getattr(self, "hub_model_id", None),
        training=stock.pop("training", None) or _trainer_hyperparameters(self),
        **stock,
    )
    return None


def _trainer_push_to_hub(
    self,
    commit_message: str | None = "End of training",
    blocking: bool = True,
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    **kwargs: Any,
):
    """`Trainer.push_to_hub`; for a TokenPruneViT: hf_tokenprune's card, no pickles, the model commit pinned."""
    model = _trainer_model(self)
    if not _is_tokenprune(model):
        return _ORIGINALS["push_to_hub"](self, commit_message, blocking, token, revision, private, **kwargs)
    check_shareable(model)
    token = token if token is not None else self.args.hub_token
    self.create_model_card(**kwargs)  # every card input is checked before the Hub is contacted
    if self.is_world_process_zero():
        _check_no_secret(Path(self.args.output_dir), _secret(token), TRAINER_IGNORE_PATTERNS)
    self.callback_handler.on_push_begin(self.args, self.state, self.control)
    if self.hub_model_id is None:
        self.init_hf_repo(token=token, private=private)
    self.save_model(_internal_call=True)
    if not self.is_world_process_zero():
        return None
    self._finish_current_push()
    revision = revision if revision is not None else self.args.hub_revision
    api = HfApi()
    _ensure_branch(api, self.hub_model_id, revision, token)
    job = functools.partial(
        upload_model_then_card,
        api,
        Path(self.args.output_dir),
        self.hub_model_id,
        lambda commit: self.create_model_card(revision=commit, **kwargs),
        token=token,
        revision=revision,
        commit_message=commit_message or "End of training",
        ignore_patterns=TRAINER_IGNORE_PATTERNS,
    )
    return job() if blocking else api.run_as_future(job)


def _patch_trainer(trainer_class: type) -> None:
    if "push_to_hub" in _ORIGINALS:
        return
    _ORIGINALS.update(push_to_hub=trainer_class.push_to_hub, create_model_card=trainer_class.create_model_card)
    _trainer_push_to_hub.__wrapped__ = _ORIGINALS["push_to_hub"]
    _trainer_create_model_card.__wrapped__ = _ORIGINALS["create_model_card"]
    trainer_class.push_to_hub, trainer_class.create_model_card = _trainer_push_to_hub, _trainer_create_model_card


class _PatchTrainerOnImport(importlib.abc.MetaPathFinder):
    """Patches the Trainer as soon as ``transformers.trainer`` is imported, so ``import hf_tokenprune`` does not pay
    for importing it (about a second) in programs that never train."""

    def find_spec(self, name, path, target=None):
        if name != "transformers.trainer":
            return None
        sys.meta_path.remove(self)  # one shot; the real finders locate the module
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def exec_module(module):
                load(module)
                _patch_trainer(module.Trainer)

            spec.loader.exec_module = exec_module
        return spec


_TRAINER_HOOK = _PatchTrainerOnImport()


def install() -> None:
    """Routes ``push_to_hub`` of TokenPruneViT models, and ``Trainer.push_to_hub`` / ``Trainer.create_model_card``
    of trainers whose model is one, through this module; other models keep transformers' behaviour. Idempotent.
    The Trainer is patched now if ``transformers.trainer`` is imported already, else when it gets imported."""
    from .models.modeling_tokenprune_common import TokenPrunePreTrainedMixin

    if "model_push_to_hub" not in _ORIGINALS:  # the mixin comes first in every family's MRO
        _ORIGINALS["model_push_to_hub"] = TokenPrunePreTrainedMixin.__dict__.get("push_to_hub")
        TokenPrunePreTrainedMixin.push_to_hub = _model_push_to_hub
    trainer_module = sys.modules.get("transformers.trainer")
    if trainer_module is not None:
        _patch_trainer(trainer_module.Trainer)
    elif _TRAINER_HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _TRAINER_HOOK)


def uninstall() -> None:
    """Undoes `install`."""
    from .models.modeling_tokenprune_common import TokenPrunePreTrainedMixin

    if _TRAINER_HOOK in sys.meta_path:
        sys.meta_path.remove(_TRAINER_HOOK)
    if "push_to_hub" in _ORIGINALS:
        trainer_class = sys.modules["transformers.trainer"].Trainer
        trainer_class.push_to_hub = _ORIGINALS.pop("push_to_hub")
        trainer_class.create_model_card = _ORIGINALS.pop("create_model_card")
    if "model_push_to_hub" in _ORIGINALS:
        original = _ORIGINALS.pop("model_push_to_hub")
        if original is None:
            del TokenPrunePreTrainedMixin.push_to_hub
        else:
            TokenPrunePreTrainedMixin.push_to_hub = original


# ----------------------------------------------------------------------------------------------------------------
# hf-tokenprune card FOLDER
# ----------------------------------------------------------------------------------------------------------------


def add_cli(commands: Any) -> None:
    """Adds ``hf-tokenprune card FOLDER``."""
    card = commands.add_parser(
        "card",
        help="(re)write the model card (README.md) of a saved TokenPruneViT folder",
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
    card.set_defaults(func=_card_command)


def _load_benchmark(path: str | None) -> list | dict | None:
    if path is None:
        return None
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--benchmark {path}: not a readable JSON file ({error}).") from None
    return rows.get("rows", rows) if isinstance(rows, dict) and "measured_speedup" not in rows else rows


RESULTS_FILE = "results.json"  # what examples/run_image_classification.py writes into its output folder
EVAL_RESULTS_FILE = "eval_results.json"  # what Trainer.save_metrics("eval", ...) writes
FOLDER_IMAGES = {"kept_tokens": "kept_tokens.png", "training_curve": "training_curve.png"}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"'{path}' is not a readable JSON file ({error}); fix or remove it.") from None


def _same_plans(results: dict, config: Any) -> bool:
    plans = [results.get("plan"), results.get("attention_reuse")]
    mine = [config.token_reduction, getattr(config, "attention_reuse", None)]
    return json.loads(json.dumps(plans)) == json.loads(json.dumps(mine))


def _comparison_accuracy(results: dict) -> dict | None:
    rows = {row.get("model"): row for row in results.get("comparison") or []}
    if "TokenPruneViT, plan" not in rows:
        return None
    without = rows.get("same weights, plan off", {}).get("accuracy")
    return {"with_reduction": rows["TokenPruneViT, plan"]["accuracy"], "without_reduction": without}


def _comparison_speed(results: dict) -> list[dict]:
    setup = results.get("speed_setup") or {}
    return [
        {
            "label": "this plan (measured after training)",
            "mode": "inference",
            "measured_speedup": row["speedup"],
            "ideal_speedup": row.get("ideal_speedup"),
            "spread": row.get("speedup_range"),
            "device": setup.get("device"),
            "dtype": setup.get("dtype"),
            "batch_size": setup.get("batch_size"),
        }
        for row in results.get("comparison") or []
        if row.get("model") == "TokenPruneViT, plan" and row.get("speedup")
    ]


def results_from_folder(folder: str | Path, config: Any) -> dict[str, Any]:
    """Card inputs a saved training folder already holds: the accuracy with and without the plan and the measured
    speed-up from ``results.json`` (the example's), else the accuracy from the Trainer's ``eval_results.json``,
    and the pictures ``kept_tokens.png`` / ``training_curve.png``. Results of another plan are left out."""
    folder = Path(folder)
    found: dict[str, Any] = {}
    results = _read_json(folder / RESULTS_FILE) if (folder / RESULTS_FILE).is_file() else {}
    if results and not _same_plans(results, config):
        results = {}  # measured with another plan: not this model's numbers
    accuracy = _comparison_accuracy(results)
    if accuracy is None and (folder / EVAL_RESULTS_FILE).is_file():
        value = _read_json(folder / EVAL_RESULTS_FILE).get("eval_accuracy")
        accuracy = None if value is None else {"with_reduction": value}
    if accuracy is not None:
        found["accuracy"] = {**accuracy, "dataset": results.get("dataset"), "split": "validation"}
    if _comparison_speed(results):
        found["speed"] = _comparison_speed(results)
    images = {key: str(folder / name) for key, name in FOLDER_IMAGES.items() if (folder / name).is_file()}
    if images:
        found["images"] = images
    return found


def _card_command(args: argparse.Namespace) -> int:
    from transformers import AutoConfig

    from . import register

    folder = Path(args.folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"FOLDER = '{folder}' has no config.json; give a folder written by save_pretrained.")
    model_type = _read_json(folder / "config.json").get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"FOLDER = '{folder}' holds a {model_type!r} model; cards are for {', '.join(FAMILIES)}.")
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
