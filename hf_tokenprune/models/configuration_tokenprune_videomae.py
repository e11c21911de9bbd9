# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""TokenPruneVideoMAEConfig: the VideoMAE config with the plan fields of every TokenPrune config."""

from transformers import VideoMAEConfig

from .configuration_tokenprune_common import TokenPruneConfigMixin


class TokenPruneVideoMAEConfig(TokenPruneConfigMixin, VideoMAEConfig):
    r"""A [`VideoMAEConfig`] with the fields of [`TokenPruneViTConfig`] (``token_reduction``, ``attention_reuse``,
    ``restore_tokens``). Its tokens are tubelets (``tubelet_size`` frames x ``patch_size`` x ``patch_size``) on a
    grid of time x rows x columns (16 frames of 224 px: 8 x 14 x 14 = 1568 tokens); there is no CLS token, so every
    token may be dropped or merged, the methods that rank by a CLS token's attention are refused when the plan is
    set, and the classifier averages the tokens left (each merged token counted for the tubelets it holds).
    """

    model_type = "tokenprune_videomae"
    stock_model_type = "videomae"
    provides = frozenset({"one_grid"})

    token_reduction: dict | None = None
    attention_reuse: dict | None = None
    restore_tokens: bool = False

    @property
    def num_prefix_tokens(self) -> int:
        return 0

    def patch_grid_for(self, image_size=None) -> tuple[int, int, int]:
        """(time, rows, columns) of tubelets for clips of ``num_frames`` frames of ``image_size``."""
        return (self.num_frames // self.tubelet_size, *super().patch_grid_for(image_size))

    def input_shape(self, image_size=None) -> tuple[int, int, int, int]:
        return (self.num_frames, *super().input_shape(image_size))

    @property
    def patch_volume(self) -> int:
        return self.tubelet_size * super().patch_volume


TokenPruneVideoMAEConfig.register_for_auto_class()

__all__ = ["TokenPruneVideoMAEConfig"]
