"""Attention reuse: layers that skip self-attention and derive their attention output from an earlier layer's.

This file holds the registry and the plan checks; methods register themselves with ``register_attention_reuse``.
"""

from typing import Any

ATTENTION_REUSE_METHODS: dict[str, type] = {}


def register_attention_reuse(name: str):
    """Class decorator that registers an attention-reuse method under ``name``."""

    def wrap(cls):
        known = ATTENTION_REUSE_METHODS.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"Attention-reuse method {name!r} is already registered by {known.__qualname__}.")
        cls.method = name
        ATTENTION_REUSE_METHODS[name] = cls
        return cls

    return wrap


def check_attention_reuse(value: Any, num_layers: int, grid: tuple[int, int]) -> dict | None:
    """Validates an attention-reuse plan and fills its defaults."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("method") not in ATTENTION_REUSE_METHODS:
        raise ValueError(
            f"attention_reuse = {value!r} must be None or a dict whose 'method' is one of "
            f"{sorted(ATTENTION_REUSE_METHODS)}."
        )
    return ATTENTION_REUSE_METHODS[value["method"]].check_plan(value, num_layers, grid)


def check_reuse_with_reduction(reduction: dict | None, reuse: dict | None, num_layers: int) -> None:
    """Rejects plans that combine reuse and reduction in a way the model cannot run."""
    if reduction is None or reuse is None:
        return
    ATTENTION_REUSE_METHODS[reuse["method"]].check_with_reduction(reuse, reduction, num_layers)
