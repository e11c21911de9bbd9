"""Cheap checks of the paths a user gives, run before any slow work: one line that names the option, the path and
what to do, instead of a traceback from deep inside a loader."""

import os
import re

# A Hub id: "name" or "namespace/name" (letters, digits, '-', '_', '.'; no '..' or '--'; no leading/trailing '-'/'.').
_HUB_ID = re.compile(r"(?:[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?/)?[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?")


def looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.fullmatch(source)) and ".." not in source and "--" not in source


def check_model_source(source: str | None, option: str = "--model") -> None:
    """A checkpoint given as a local path must exist; a Hub id (``org/name``) is left to the Hub.

    Raises:
        ValueError: for a path that does not exist and cannot be a Hub id (``./nope``, ``/data/x``,
            ``a/b/c``), or that exists but is not a folder.
    """
    if source is None:
        return
    if os.path.exists(source):
        if not os.path.isdir(source) and not source.endswith(".json"):
            raise ValueError(f"{option} '{source}' is a file; give a checkpoint folder or a Hub id.")
        return
    if not looks_like_hub_id(source) or source.startswith((".", "~", os.sep)):
        raise ValueError(
            f"{option} '{source}': no such folder. Give a folder written by save_pretrained, or a Hub id such as "
            "google/vit-base-patch16-224."
        )


def check_input_folder(folder: str | None, option: str, what: str = "a folder") -> None:
    """``folder`` must be an existing directory."""
    if folder is not None and not os.path.isdir(folder):
        raise ValueError(f"{option} '{folder}': no such folder; give {what}.")


def check_output_file(path: str, option: str) -> None:
    """The folder ``path`` goes into must exist (a file is never written into a folder that is not there)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{option} '{path}': the folder '{parent}' does not exist; create it or pick another.")
    if os.path.isdir(path):
        raise ValueError(f"{option} '{path}' is a folder; give a file name such as {os.path.join(path, 'x.png')}.")
