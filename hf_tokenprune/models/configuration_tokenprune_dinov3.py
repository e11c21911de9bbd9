# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""TokenPruneDINOv3ViTConfig: the DINOv3 ViT config with the plan fields of every TokenPrune config."""

from transformers import DINOv3ViTConfig

from .configuration_tokenprune_common import TokenPruneConfigMixin


class TokenPruneDINOv3ViTConfig(TokenPruneConfigMixin, DINOv3ViTConfig):
    r"""A [`DINOv3ViTConfig`] with the fields of [`TokenPruneViTConfig`] (``token_reduction``, ``attention_reuse``,
    ``restore_tokens``). The CLS token and ``num_register_tokens`` registers lead the sequence (prefix tokens: no
    method drops or merges them); patch tokens carry rotary position embeddings (RoPE) instead of a learned table, so
    plans run at any input size (1024 px with patch 16 is 64 x 64 = 4096 patches) and are validated against
    ``image_size``. The backbone's stage fields (``out_features``, ``apply_layernorm``, ``reshape_hidden_states``)
    keep their meaning.
    """

    model_type = "tokenprune_dinov3_vit"
    stock_model_type = "dinov3_vit"

    token_reduction: dict | None = None
    attention_reuse: dict | None = None
    restore_tokens: bool = False

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens


TokenPruneDINOv3ViTConfig.register_for_auto_class()

__all__ = ["TokenPruneDINOv3ViTConfig"]
