# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""TokenPruneSiglip2: HF SigLIP 2's vision tower (NaFlex inputs) following a token-reduction plan.

Only the difference from ``transformers.models.siglip2.modeling_siglip2`` is written here. The layer is SigLIP's
(CLIP's layout) with SigLIP 2's attention and MLP. What SigLIP 2 adds is padding: a batch of NaFlex inputs holds each
image's own patches (its grid in ``spatial_shapes``) followed by padding slots (``pixel_attention_mask`` 0). The
padding travels in the `TokenState` (``padding``): every layer masks padding keys, the methods rank padding last and
never let it count in a real token (`padding_of`), and the attention-pooling head pools the real tokens the plan left.
"""

import torch
from torch import nn
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.models.siglip2.modeling_siglip2 import (
    Siglip2Attention,
    Siglip2MLP,
    Siglip2MultiheadAttentionPoolingHead,
    Siglip2PreTrainedModel,
    Siglip2VisionEmbeddings,
    Siglip2VisionModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.output_capturing import capture_outputs

from .attention_backends import BIAS_BACKENDS
from .configuration_tokenprune_siglip2 import TokenPruneSiglip2VisionConfig
from .modeling_tokenprune_clip import CLIPStyleAttentionMixin, TokenPruneCLIPEncoder, TokenPruneCLIPEncoderLayer
from .modeling_tokenprune_common import TokenPruneModelMixin, TokenPruneModelOutput, TokenPrunePreTrainedMixin
from .token_reduction import padding_of

# Stock SigLIP 2 vision checkpoints nest the tower under ``vision_model``, as CLIP's do.
register_checkpoint_conversion_mapping(
    "TokenPruneSiglip2VisionModel", get_checkpoint_conversion_mapping("CLIPVisionModel"), overwrite=True
)


def check_naflex_inputs(pixel_values, pixel_attention_mask, spatial_shapes, config) -> None:
    """Clear errors for NaFlex inputs that would otherwise fail deep inside with a shape error (shapes only: the
    values are data and stay traceable)."""
    patch_pixels = config.num_channels * config.patch_size**2
    if pixel_values is None or pixel_values.dim() != 3 or pixel_values.shape[-1] != patch_pixels:
        shape = None if pixel_values is None else tuple(pixel_values.shape)
        raise ValueError(
            f"pixel_values must be (batch, max_num_patches, {patch_pixels}) patches, as Siglip2ImageProcessor "
            f"returns them (num_channels * patch_size**2 = {patch_pixels} values per patch); got shape {shape}."
        )
    batch, slots = pixel_values.shape[:2]
    if spatial_shapes is None or tuple(spatial_shapes.shape) != (batch, 2):
        shape = None if spatial_shapes is None else tuple(spatial_shapes.shape)
        raise ValueError(f"spatial_shapes must be ({batch}, 2): each image's (rows, columns) of patches; got {shape}.")
    if pixel_attention_mask is not None and tuple(pixel_attention_mask.shape) != (batch, slots):
        raise ValueError(
            f"pixel_attention_mask must be ({batch}, {slots}), 1 for an image's patches and 0 for padding; got "
            f"{tuple(pixel_attention_mask.shape)}."
        )


class TokenPruneSiglip2Attention(CLIPStyleAttentionMixin, Siglip2Attention):
    """`Siglip2Attention` that can also report its head-averaged keys."""


class TokenPruneSiglip2EncoderLayer(TokenPruneCLIPEncoderLayer):
    """`Siglip2EncoderLayer`: CLIP's layer layout with SigLIP 2's attention and MLP."""

    attention_class = TokenPruneSiglip2Attention
    mlp_class = Siglip2MLP


class TokenPruneSiglip2Encoder(TokenPruneCLIPEncoder):
    layer_class = TokenPruneSiglip2EncoderLayer


class TokenPruneSiglip2PreTrainedModel(TokenPrunePreTrainedMixin, Siglip2PreTrainedModel):
    """`Siglip2PreTrainedModel` with our config class and vision layers."""

    config_class = TokenPruneSiglip2VisionConfig
    config: TokenPruneSiglip2VisionConfig
    base_model_prefix = "vision_model"
    input_modalities = ("image",)
    _no_split_modules = ["Siglip2VisionEmbeddings", "TokenPruneSiglip2EncoderLayer"]
    _can_record_outputs = {"hidden_states": TokenPruneSiglip2EncoderLayer, "attentions": TokenPruneSiglip2Attention}
    stock_conversion = "CLIPVisionModel"
    legacy_layout_marker = "vision_model.vision_model."
    auto_classes = {"AutoModel": "TokenPruneSiglip2VisionModel"}


class TokenPruneSiglip2VisionModel(TokenPruneModelMixin, TokenPruneSiglip2PreTrainedModel, Siglip2VisionModel):
    """`Siglip2VisionModel` whose layers follow a token-reduction plan; returns `TokenPruneModelOutput` (the stock
    outputs, ``pooler_output`` from the attention-pooling head over the real tokens left, plus per-layer token
    bookkeeping; ``patch_grid`` is ``(1, max_num_patches)``: the slots, each image's grid is its ``spatial_shapes``).
    With ``restore_tokens=True`` the head pools the full-length restored sequence, as the stock head pools all
    real slots."""

    def __init__(self, config: TokenPruneSiglip2VisionConfig):
        Siglip2PreTrainedModel.__init__(self, config)
        self.config = config
        self.embeddings = Siglip2VisionEmbeddings(config)
        self.encoder = TokenPruneSiglip2Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.use_head = config.vision_use_head
        if self.use_head:
            self.head = Siglip2MultiheadAttentionPoolingHead(config)
        self.remember_built_plans()
        self.post_init()

    def input_grid(self, pixel_values, interpolate_pos_encoding) -> tuple[int, int]:
        return 1, pixel_values.shape[1]  # the slots; checked by check_naflex_inputs

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.LongTensor | None = None,
        keep_rate: float | None = None,
        disable_plans: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenPruneModelOutput:
        r"""
        pixel_attention_mask (`torch.Tensor` of shape `(batch_size, max_num_patches)`, *optional*):
            1 for an image's patches, 0 for padding slots (never attended to, ranked last, merged into padding first
            and never counted in a real token).
        spatial_shapes (`torch.LongTensor` of shape `(batch_size, 2)`):
            Each image's (rows, columns) of patches.
        keep_rate (`float`, *optional*):
            Overrides the plan's keep rate for this call (methods with a keep rate); the config is unchanged.
        disable_plans (`bool`, *optional*, defaults to `False`):
            Runs every layer in full, as the stock model with the same weights.
        """
        check_naflex_inputs(pixel_values, pixel_attention_mask, spatial_shapes, self.config)
        implementation = self.config._attn_implementation
        if pixel_attention_mask is not None and implementation not in BIAS_BACKENDS:
            raise ValueError(
                f"attn_implementation={implementation!r} cannot mask SigLIP 2's padding as the plans carry it (a "
                f"per-key bias); load with attn_implementation='sdpa' (or one of {list(BIAS_BACKENDS)})."
            )
        grid, plan, reuse, pixel_values = self.start_plans(pixel_values, False, None, keep_rate, disable_plans)
        padding = None if pixel_attention_mask is None else pixel_attention_mask == 0
        hidden_states = self.embeddings(pixel_values, spatial_shapes)
        hidden_states, state, traces, states = self.run_layers(
            self.encoder.layers, hidden_states, grid, plan, reuse, padding=padding
        )
        hidden_states = self.post_layernorm(hidden_states)
        pooler_output = None
        if self.use_head:
            left = state.padding if self.config.restore_tokens else padding_of(state)
            pooler_output = self.head(hidden_states, None if left is None else (~left).long())
        return TokenPruneModelOutput(
            last_hidden_state=hidden_states,
            pooler_output=pooler_output,
            **self.bookkeeping(traces, state, grid, states),
        )


TokenPruneSiglip2VisionModel.register_for_auto_class("AutoModel")

__all__ = ["TokenPruneSiglip2PreTrainedModel", "TokenPruneSiglip2VisionModel"]
