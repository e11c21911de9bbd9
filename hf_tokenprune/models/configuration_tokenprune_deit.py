# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""TokenPruneDeiTConfig: a DeiTConfig with the plan fields of every TokenPrune config."""

from transformers import DeiTConfig

from .configuration_tokenprune_common import TokenPruneConfigMixin


class TokenPruneDeiTConfig(TokenPruneConfigMixin, DeiTConfig):
    r"""A [`DeiTConfig`] with the fields of [`TokenPruneViTConfig`] (``token_reduction``, ``attention_reuse``,
    ``restore_tokens``). It differs from the ViT config in its prefix: the CLS token and the distillation token
    lead the sequence, and no method drops or merges either of them.
    """

    model_type = "tokenprune_deit"
    stock_model_type = "deit"

    token_reduction: dict | None = None
    attention_reuse: dict | None = None
    restore_tokens: bool = False

    @property
    def num_prefix_tokens(self) -> int:
        return 2  # CLS, distillation token

    @classmethod
    def other_family_hint(cls, model_type: str) -> str:
        return " (facebook/deit-*-patch16-224 without distillation are stored as 'vit': use TokenPruneViTConfig)"


TokenPruneDeiTConfig.register_for_auto_class()

__all__ = ["TokenPruneDeiTConfig"]
