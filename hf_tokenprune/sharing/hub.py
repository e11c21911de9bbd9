"""Share an hf_tokenprune model (ViT or another family) on the Hugging Face Hub: pushes that upload everything a
``trust_remote_code=True`` user needs, with the generated model card (`hf_tokenprune.model_card`).

- `push_to_hub` saves the model (safetensors, config with ``auto_map``, the remote-code files), the image processor
  and the card, and uploads them in two commits: the model first, then the card, which pins the model commit.
  `hf_tokenprune.training.TokenPruneTrainer.push_to_hub` does the same for a Trainer's output folder.
  ``model.push_to_hub`` stays transformers' own (weights, remote code, the stock card).
- `check_shareable` refuses a model whose plan names a method the checkpoint's code would not contain.
- `results_from_folder`: the accuracy, speed and pictures a saved training folder holds for its card
  (``hf-tokenprune card FOLDER``).

The access token is never printed, and a folder that contains it is refused before anything is uploaded.
"""

import functools
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi, get_token
from huggingface_hub.utils import filter_repo_objects

from ..models.modeling_tokenprune_common import check_shareable
from .model_card import (
    CARD_NAME,
    IMAGES_DIR,
    PICKLE_PATTERNS,
    card_config,
    check_revision,
    describe,
    markdown_text,
    write_model_card,
)

# ----------------------------------------------------------------------------------------------------------------
# Pushing
# ----------------------------------------------------------------------------------------------------------------


def secret_of(token: str | bool | None) -> str | None:
    """The token the upload will use (explicit, else the one huggingface_hub finds)."""
    if isinstance(token, str):
        return token
    return None if token is False else get_token()


def check_no_secret(folder: Path, secret: str | None, ignore_patterns: Sequence[str] = ()) -> None:
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


def ensure_branch(api: HfApi, repo_id: str, revision: str | None, token: str | bool | None) -> None:
    if revision not in (None, "main"):
        api.create_branch(repo_id=repo_id, branch=check_revision(revision), token=token, exist_ok=True)


def _class_name(model: Any) -> str:
    return f"TokenPrune{describe(model)['stock_class']}"


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
    secret = secret_of(token)
    check_no_secret(folder, secret, ignore_patterns)
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
    check_no_secret(folder, secret, ignore_patterns)
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
    card_config(model)  # an hf_tokenprune model
    check_shareable(model)
    revision = None if revision is None else check_revision(revision)
    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="tokenprune-push-") as tmp:
        folder = Path(tmp)
        model.save_pretrained(folder, max_shard_size=max_shard_size)
        if image_processor is not None:
            image_processor.save_pretrained(folder)
        write_model_card(folder, model, repo_id=repo_id, **card_kwargs)  # every card input checked before the Hub
        check_no_secret(folder, secret_of(token))
        repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        ensure_branch(api, repo_id, revision, token)
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
# What a saved folder holds for its card
# ----------------------------------------------------------------------------------------------------------------


RESULTS_FILE = "results.json"  # what examples/run_image_classification.py writes into its output folder
EVAL_RESULTS_FILE = "eval_results.json"  # what Trainer.save_metrics("eval", ...) writes
FOLDER_IMAGES = {"kept_tokens": "kept_tokens.png", "training_curve": "training_curve.png"}


def read_json(path: Path) -> Any:
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
            "noisy": row.get("noisy"),
            "others_load": row.get("others_load"),
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
    results = read_json(folder / RESULTS_FILE) if (folder / RESULTS_FILE).is_file() else {}
    if results and not _same_plans(results, config):
        results = {}  # measured with another plan: not this model's numbers
    accuracy = _comparison_accuracy(results)
    if accuracy is None and (folder / EVAL_RESULTS_FILE).is_file():
        value = read_json(folder / EVAL_RESULTS_FILE).get("eval_accuracy")
        accuracy = None if value is None else {"with_reduction": value}
    if accuracy is not None:
        found["accuracy"] = {**accuracy, "dataset": results.get("dataset"), "split": "validation"}
    if _comparison_speed(results):
        found["speed"] = _comparison_speed(results)
    images = {key: str(folder / name) for key, name in FOLDER_IMAGES.items() if (folder / name).is_file()}
    if images:
        found["images"] = images
    return found
