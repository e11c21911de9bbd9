# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""TokenPruneSiglip2VisionConfig: SigLIP 2's vision config with the plan fields of every TokenPrune config."""

from transformers import Siglip2VisionConfig

from .configuration_tokenprune_common import TokenPruneConfigMixin


class TokenPruneSiglip2VisionConfig(TokenPruneConfigMixin, Siglip2VisionConfig):
    r"""A [`Siglip2VisionConfig`] with the fields of [`TokenPruneViTConfig`] (``token_reduction``,
    ``restore_tokens``; ``attention_reuse`` is refused). SigLIP 2's tower takes NaFlex inputs: up to ``num_patches``
    patch slots per image (``max_num_patches`` of the processor), the image's own patches first and padding after
    them, each image with its own grid (``spatial_shapes``). The plans see that sequence of slots: its patch grid is
    one row of ``num_patches`` slots, and FLOPs count every slot (padding is computed too, as in the stock model).
    As on SigLIP, there is no CLS token: the methods that need one are refused. Attention reuse (SkipAt) is refused
    too: its Φ convolves over one patch grid, and NaFlex images each have their own.
    """

    model_type = "tokenprune_siglip2_vision_model"
    stock_model_type = "siglip2_vision_model"
    base_config_key = "vision_config"
    composite_model_types = ("siglip2",)
    provides = frozenset()  # no CLS token, and each image of a batch has its own grid

    token_reduction: dict | None = None
    attention_reuse: dict | None = None
    restore_tokens: bool = False
    num_patches: int = 256  # SigLIP 2's field (patch slots), declared again over the mixin's derived property

    @property
    def num_prefix_tokens(self) -> int:
        return 0

    @property
    def patch_grid(self) -> tuple[int, int]:
        return 1, self.num_patches

    @property
    def image_size(self) -> tuple[int, int]:
        """The nominal input the FLOPs count is for: ``num_patches`` patch slots in one row."""
        return self.patch_size, self.num_patches * self.patch_size


TokenPruneSiglip2VisionConfig.register_for_auto_class()

__all__ = ["TokenPruneSiglip2VisionConfig"]
