# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""What every TokenPrune config adds to its HF family config: the plan fields, their validation and token counts.

A family config is ``class TokenPrune<Family>Config(TokenPruneConfigMixin, <Family>Config)`` that declares the three
plan fields (HF configs are dataclasses: each class declares its own fields), says how many prefix tokens its
sequence starts with (CLS, distillation token, registers) and which features of `FEATURES` it provides. Part of the
remote-code island.
"""

import copy
import math
from typing import Any

from .attention_reuse import check_attention_reuse
from .methods import ATTENTION_REUSE_METHODS, REDUCTION_METHODS, get_reduction_class, get_reuse_class
from .token_reduction import FEATURES, check_fits, grid_of

PLAN_FIELDS = ("token_reduction", "attention_reuse", "restore_tokens")

# Output fields, declared once. Every TokenPrune output carries the token bookkeeping (a head passes it on from its
# base model); the base model's output also carries what its heads consume. None of them is a prediction: the
# Trainer leaves them out of evaluation (``keys_to_ignore_at_inference``), with the hidden states and attentions,
# which a plan makes ragged.
TOKEN_BOOKKEEPING = ("token_counts", "token_positions", "token_owner", "patch_grid", "token_policy")
BASE_MODEL_ONLY = ("aux_logits", "aux_loss", "layer_states")
IGNORED_AT_INFERENCE = ("hidden_states", "attentions", *TOKEN_BOOKKEEPING, *BASE_MODEL_ONLY)


class TokenPruneConfigMixin:
    """The plan fields' validation, shared by every family config.

    A family sets ``stock_model_type`` (the HF checkpoints whose config it reads as its own; a vision tower also
    ``composite_model_types``, the full models it can be read from), ``provides`` (the features of `FEATURES` its
    models have: a plan whose method needs another is refused) and, when its sequence does not start with exactly
    one CLS token, overrides ``num_prefix_tokens``.
    """

    stock_model_type = ""
    composite_model_types: tuple = ()  # full checkpoints (e.g. "clip") whose ``base_config_key`` part is ours
    provides = frozenset({"cls_token", "one_grid"})
    keys_to_ignore_at_inference = list(IGNORED_AT_INFERENCE)

    def __setattr__(self, key: str, value: Any) -> None:
        # Plans are checked whenever they are set: at construction and when transformers applies
        # `from_pretrained` keywords after construction.
        if key in PLAN_FIELDS:
            value = self._checked_plan(key, value)
        super().__setattr__(key, value)
        if key in ("token_reduction", "attention_reuse") and "attention_reuse" in self.__dict__:
            self._check_reuse_with_reduction()

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """Reads the stock family's config as ours; refuses another family's with one line."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type in cls.composite_model_types and isinstance(config_dict.get(cls.base_config_key), dict):
            config_dict[cls.base_config_key]["model_type"] = cls.model_type  # transformers reads this part
            return config_dict, kwargs
        if model_type not in (cls.stock_model_type, cls.model_type):
            hint = cls.other_family_hint(model_type)
            raise ValueError(
                f"{pretrained_model_name_or_path} is a {model_type!r} checkpoint; {cls.__name__} loads "
                f"{cls.stock_model_type!r} checkpoints and its own ({cls.model_type!r}){hint}."
            )
        config_dict["model_type"] = cls.model_type
        return config_dict, kwargs

    @classmethod
    def other_family_hint(cls, model_type: str) -> str:
        """A few words that point to the right class for another family's checkpoint (empty by default)."""
        return ""

    @property
    def num_prefix_tokens(self) -> int:
        """Leading tokens that no method drops or merges (CLS and its kind)."""
        return 1

    def patch_grid_for(self, image_size: Any = None) -> tuple[int, ...]:
        """The grid of patch tokens for inputs of ``image_size`` (the config's by default): (rows, columns), or
        (time, rows, columns) for a video family."""
        return grid_of(self.image_size if image_size is None else image_size, self.patch_size)

    @property
    def patch_grid(self) -> tuple[int, ...]:
        return self.patch_grid_for()

    @property
    def num_patches(self) -> int:
        return math.prod(self.patch_grid)

    def input_shape(self, image_size: Any = None) -> tuple[int, ...]:
        """The shape of one input, without the batch: (channels, height, width); (frames, channels, height, width)
        for a video family."""
        return (self.num_channels, *grid_of(self.image_size if image_size is None else image_size, 1))

    @property
    def patch_volume(self) -> int:
        """Input values one patch token embeds (channels x patch height x width; x frames for a tubelet)."""
        height, width = grid_of(self.patch_size, 1)
        return self.num_channels * height * width

    def _checked_plan(self, key: str, value: Any) -> Any:
        if key == "restore_tokens":
            if not isinstance(value, bool):
                raise ValueError(f"restore_tokens = {value!r} must be true or false.")
            return value
        if key == "attention_reuse":
            plan = check_attention_reuse(copy.deepcopy(value), self)
            if plan is not None:
                self.check_fits_family(key, get_reuse_class(plan["method"]), plan, ATTENTION_REUSE_METHODS)
            return plan
        if value is None:
            return None
        if not isinstance(value, dict) or "method" not in value:
            raise ValueError(
                f"token_reduction = {value!r} must be None or a dict with a 'method' key; "
                f"allowed methods: {sorted(REDUCTION_METHODS)}."
                + (
                    f" Write it as {{'method': {value!r}}}."
                    if isinstance(value, str) and value in REDUCTION_METHODS
                    else ""
                )
            )
        method = get_reduction_class(value["method"])
        plan = method.check_plan(copy.deepcopy(value), self)
        self.check_fits_family(key, method, plan, REDUCTION_METHODS)
        return plan

    def check_fits_family(self, field: str, method: Any, plan: dict, registry: dict) -> None:
        """Refuses a plan whose method needs a feature (`FEATURES`) this family does not provide (``provides``),
        e.g. a CLS token on SigLIP; the message names the methods that run here."""
        check_fits(field, method, plan, self.provides, type(self).__name__, registry)

    @classmethod
    def features(cls) -> dict[str, bool]:
        """Each feature of `FEATURES` and whether this family provides it (for support tables)."""
        return {feature: feature in cls.provides for feature in FEATURES}

    def _check_reuse_with_reduction(self) -> None:
        """Rejects plans that combine attention reuse and token reduction in a way the model cannot run."""
        if self.token_reduction is None or self.attention_reuse is None:
            return
        reuse = get_reuse_class(self.attention_reuse["method"])
        reduction = get_reduction_class(self.token_reduction["method"])
        reuse.check_with_reduction(self.attention_reuse, self.token_reduction, reduction, self)

    def token_counts(self, keep_rate: float | None = None, image_size: Any = None) -> list[tuple[int, int]]:
        """(tokens entering the attention, tokens entering the MLP) of every layer for this plan, prefix included.

        The methods count one prefix token (CLS); another prefix count shifts every count by the difference, since
        prefix tokens are never dropped or merged."""
        patches = math.prod(self.patch_grid_for(image_size))
        shift = self.num_prefix_tokens - 1
        if self.token_reduction is None:
            counts = [(patches + 1, patches + 1)] * self.num_hidden_layers
        else:
            method = get_reduction_class(self.token_reduction["method"])
            counts = method.token_counts(self.token_reduction, self.num_hidden_layers, patches, keep_rate)
        return [(a + shift, m + shift) for a, m in counts]


__all__ = ["BASE_MODEL_ONLY", "IGNORED_AT_INFERENCE", "PLAN_FIELDS", "TOKEN_BOOKKEEPING", "TokenPruneConfigMixin"]
