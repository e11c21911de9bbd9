"""Reading a checkpoint as the official training scripts save it, without executing anything in it.

The official scripts (DeiT's and the methods' forks of it) save ``{"model": state_dict, "optimizer": ..., "epoch":
..., "args": Namespace, "model_ema": ...}``; timm's checkpoint saver ``{"state_dict": ..., "state_dict_ema": ...}``;
others a bare state dict, sometimes with the ``module.`` prefix of a DistributedDataParallel wrapper. `read_state`
reads any of these with ``torch.load(weights_only=True)`` (``argparse.Namespace`` is the one class allowed: the
scripts store their arguments in it) or from safetensors, and returns the model's weights.
"""

from __future__ import annotations

import pickle
import zipfile
from argparse import Namespace  # what the official scripts store their arguments in
from pathlib import Path
from typing import Any

# Where the official scripts put the model's weights, first found first: the trained model (not the EMA copy,
# which the scripts do not evaluate), as each repository's evaluation code reads it.
WRAPPERS = ("model", "state_dict", "module")
PREFIXES = ("module.", "model.")


def read_state(path: str | Path, field: str = "CHECKPOINT") -> tuple[dict[str, Any], str]:
    """The weights in ``path`` (float tensors by name) and where they were found (``"['model']"``, ``"the file"``).

    Raises ValueError, in one line naming ``field``, for a missing, truncated or unreadable file, for a pickle that
    needs code to load (never executed), and for a file that holds no weights."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"{field} '{path}': no such file; give the .pth/.pt/.bin or .safetensors the official code saved."
        )
    if path.suffix == ".safetensors":
        return _read_safetensors(path, field), "the file"
    content = _load_pickle(path, field)
    state, where = unwrap(content)
    if state is None:
        keys = sorted(content)[:8] if isinstance(content, dict) else type(content).__name__
        raise ValueError(
            f"{field} '{path}' holds no weights: found {keys}; expected a state dict or one under {list(WRAPPERS)}."
        )
    return strip_prefix(state), where


def _read_safetensors(path: Path, field: str) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{field} '{path}' is not a readable safetensors file ({_first_line(error)}).") from None


def _load_pickle(path: Path, field: str) -> Any:
    import torch

    try:
        with torch.serialization.safe_globals([Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        needs = _needed_global(str(error))
        raise ValueError(
            f"{field} '{path}' needs code to load ({needs}); it was not run. Re-save its state dict "
            "(torch.save(model.state_dict(), ...)) or as safetensors where you trust the code."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise ValueError(
            f"{field} '{path}' is truncated or not a PyTorch checkpoint ({_first_line(error)})."
        ) from None


def _needed_global(message: str) -> str:
    for line in message.splitlines():
        if "GLOBAL" in line or "Unsupported global" in line:
            return line.strip().removeprefix("WeightsUnpickler error: ").strip()
    return "a global that weights-only loading refuses"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]


def is_state_dict(value: Any) -> bool:
    import torch

    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(key, str) and isinstance(tensor, torch.Tensor) for key, tensor in value.items())
    )


def unwrap(content: Any) -> tuple[dict | None, str]:
    """The state dict in ``content`` and where it was: the content itself or under one of `WRAPPERS`."""
    if is_state_dict(content):
        return dict(content), "the file"
    if isinstance(content, dict):
        for key in WRAPPERS:
            if is_state_dict(content.get(key)):
                return dict(content[key]), f"[{key!r}]"
    return None, ""


def strip_prefix(state: dict) -> dict:
    """Without the prefix every key shares (``module.`` of DistributedDataParallel, ``model.`` of a wrapper)."""
    for prefix in PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            return {key[len(prefix) :]: value for key, value in state.items()}
    return state
