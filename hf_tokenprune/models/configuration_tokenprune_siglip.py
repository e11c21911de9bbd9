# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""TokenPruneSiglipVisionConfig: SigLIP's vision config with the plan fields of every TokenPrune config."""

from transformers import SiglipVisionConfig

from .configuration_tokenprune_common import TokenPruneConfigMixin


class TokenPruneSiglipVisionConfig(TokenPruneConfigMixin, SiglipVisionConfig):
    r"""A [`SiglipVisionConfig`] with the fields of [`TokenPruneViTConfig`] (``token_reduction``,
    ``attention_reuse``, ``restore_tokens``). It differs in its prefix: SigLIP's sequence has no CLS token (the
    pooled output comes from an attention-pooling head over all tokens), so every token may be dropped or merged,
    and the methods that need a CLS token (those that rank tokens by its attention) are refused when the plan is
    set. It is also read from a full SigLIP checkpoint (its ``vision_config``).
    """

    model_type = "tokenprune_siglip_vision_model"
    stock_model_type = "siglip_vision_model"
    base_config_key = "vision_config"
    composite_model_types = ("siglip",)
    provides = frozenset({"one_grid"})

    token_reduction: dict | None = None
    attention_reuse: dict | None = None
    restore_tokens: bool = False

    @property
    def num_prefix_tokens(self) -> int:
        return 0


TokenPruneSiglipVisionConfig.register_for_auto_class()

__all__ = ["TokenPruneSiglipVisionConfig"]
