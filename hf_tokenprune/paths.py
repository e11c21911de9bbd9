"""Cheap checks of the paths a user gives, run before torch is imported or a model loads: one line that names the
option, the path and what to do, in the same words for every tool.

The rule for outputs, the same everywhere: a file an option names goes into a folder that must exist (it is never
created silently); a folder of results (``--output-dir``, ``--results-dir``) is created with its parents; a folder
that receives a model must be new or empty.
"""

import json
import os
import re

# A Hub id: "namespace/name" (letters, digits, '-', '_', '.'; no '..' or '--'; no leading/trailing '-'/'.'); the
# single names of the oldest Hub models (``bert-base-uncased``) too, when they cannot be a local path.
_NAME = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?"
_HUB_ID = re.compile(rf"(?:{_NAME}/)?{_NAME}")


def looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.fullmatch(source)) and ".." not in source and "--" not in source


def check_model_source(source: str | None, option: str = "--model", config_file: bool = False) -> None:
    """A checkpoint: an existing folder written by ``save_pretrained`` (it holds ``config.json``), a ``config.json``
    file when ``config_file`` is allowed, or a Hub id (``org/name``), which is left to the Hub.

    Raises:
        ValueError: for a path that does not exist and cannot be a Hub id (``./nope``, ``/data/x``, ``a/b/c``), a
            single name that is no local folder (``NOT_A_MODEL``: a Hub id has a namespace), a file, or a folder
            without ``config.json``.
    """
    if source is None:
        return
    if os.path.isdir(source):
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise ValueError(f"{option} '{source}' has no config.json; give a folder written by save_pretrained.")
        return
    if os.path.exists(source):
        if config_file and source.endswith(".json"):
            return
        raise ValueError(f"{option} '{source}' is a file; give a folder written by save_pretrained or a Hub id.")
    if not looks_like_hub_id(source) or "/" not in source:
        raise ValueError(
            f"{option} '{source}': no such folder. Give a folder written by save_pretrained, or a Hub id such as "
            "google/vit-base-patch16-224."
        )


def read_config(source: str) -> dict | None:
    """The ``config.json`` of a local checkpoint folder (None for a Hub id), read without importing transformers."""
    path = os.path.join(source, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError) as error:
        raise ValueError(f"'{path}' is not a readable JSON file ({error}); fix it or give another folder.") from None


def check_input_folder(folder: str | None, option: str, what: str = "a folder") -> None:
    """``folder`` must be an existing directory."""
    if folder is not None and not os.path.isdir(folder):
        raise ValueError(f"{option} '{folder}': no such folder; give {what}.")


def check_output_file(path: str, option: str, example: str = "x.png") -> None:
    """The folder ``path`` goes into must exist (a file is never written into a folder that is not there)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{option} '{path}': the folder '{parent}' does not exist; create it or pick another.")
    if os.path.isdir(path):
        raise ValueError(f"{option} '{path}' is a folder; give a file name such as {os.path.join(path, example)}.")


def check_new_folder(folder: str | None, option: str, source: str | None = None) -> None:
    """A folder that receives a model: new or empty, and not the source checkpoint itself."""
    if folder is None:
        return
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise ValueError(f"{option} '{folder}' already exists and is not empty; give a new folder.")
    if source is not None and os.path.isdir(source) and os.path.abspath(folder) == os.path.abspath(source):
        raise ValueError(f"{option} '{folder}' is the checkpoint itself; give a new folder for the copy.")
