# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""TokenPruneDinov2Config and TokenPruneDinov2WithRegistersConfig: the DINOv2 configs with the plan fields of every
TokenPrune config."""

from transformers import Dinov2Config, Dinov2WithRegistersConfig

from .configuration_tokenprune_common import TokenPruneConfigMixin


class TokenPruneDinov2Config(TokenPruneConfigMixin, Dinov2Config):
    r"""A [`Dinov2Config`] with the fields of [`TokenPruneViTConfig`] (``token_reduction``, ``attention_reuse``,
    ``restore_tokens``). DINOv2 has one prefix token (CLS), like ViT; its layers carry layer scale and, in the giant
    sizes, a SwiGLU MLP; its position embeddings are interpolated to any input size (e.g. 518 px with patch 14 is
    37 x 37 = 1369 patches), so plans are validated against ``image_size`` and run at any size.
    """

    model_type = "tokenprune_dinov2"
    stock_model_type = "dinov2"

    token_reduction: dict | None = None
    attention_reuse: dict | None = None
    restore_tokens: bool = False


class TokenPruneDinov2WithRegistersConfig(TokenPruneConfigMixin, Dinov2WithRegistersConfig):
    r"""A [`Dinov2WithRegistersConfig`] with the plan fields of [`TokenPruneDinov2Config`]. It differs in its
    prefix: the CLS token and ``num_register_tokens`` registers lead the sequence; no method drops or merges them.
    """

    model_type = "tokenprune_dinov2_with_registers"
    stock_model_type = "dinov2_with_registers"

    token_reduction: dict | None = None
    attention_reuse: dict | None = None
    restore_tokens: bool = False

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens


TokenPruneDinov2Config.register_for_auto_class()
TokenPruneDinov2WithRegistersConfig.register_for_auto_class()

__all__ = ["TokenPruneDinov2Config", "TokenPruneDinov2WithRegistersConfig"]
