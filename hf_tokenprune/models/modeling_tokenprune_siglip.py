# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""TokenPruneSiglip: HF SigLIP's vision tower following a token-reduction plan.

Only the difference from ``transformers.models.siglip.modeling_siglip`` is written here. A SigLIP encoder layer
has CLIP's layout and names, so the layer is CLIP's with SigLIP's attention and MLP; what differs is the prefix
(none: no CLS token, every token may be dropped or merged) and the model's forward: the post-LayerNorm on every
token and the attention-pooling head over the tokens left by the plan.
"""

import torch
from torch import nn
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.models.siglip.modeling_siglip import (
    SiglipAttention,
    SiglipMLP,
    SiglipMultiheadAttentionPoolingHead,
    SiglipPreTrainedModel,
    SiglipVisionEmbeddings,
    SiglipVisionModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.output_capturing import capture_outputs

from .configuration_tokenprune_siglip import TokenPruneSiglipVisionConfig
from .modeling_tokenprune_clip import CLIPStyleAttentionMixin, TokenPruneCLIPEncoder, TokenPruneCLIPEncoderLayer
from .modeling_tokenprune_common import TokenPruneModelMixin, TokenPruneModelOutput, TokenPrunePreTrainedMixin

# Stock SigLIP vision checkpoints nest the tower under ``vision_model``, as CLIP's do.
register_checkpoint_conversion_mapping(
    "TokenPruneSiglipVisionModel", get_checkpoint_conversion_mapping("CLIPVisionModel"), overwrite=True
)


class TokenPruneSiglipAttention(CLIPStyleAttentionMixin, SiglipAttention):
    """`SiglipAttention` that can also report its head-averaged keys (and a first-token row nobody asks for: the
    config refuses the methods that rank by CLS attention)."""


class TokenPruneSiglipEncoderLayer(TokenPruneCLIPEncoderLayer):
    """`SiglipEncoderLayer`: CLIP's layer layout with SigLIP's attention and MLP."""

    attention_class = TokenPruneSiglipAttention
    mlp_class = SiglipMLP


class TokenPruneSiglipEncoder(TokenPruneCLIPEncoder):
    layer_class = TokenPruneSiglipEncoderLayer


class TokenPruneSiglipPreTrainedModel(TokenPrunePreTrainedMixin, SiglipPreTrainedModel):
    """`SiglipPreTrainedModel` with our config class and vision layers."""

    config_class = TokenPruneSiglipVisionConfig
    config: TokenPruneSiglipVisionConfig
    _no_split_modules = ["SiglipVisionEmbeddings", "TokenPruneSiglipEncoderLayer"]
    _can_record_outputs = {"hidden_states": TokenPruneSiglipEncoderLayer, "attentions": TokenPruneSiglipAttention}
    stock_conversion = "CLIPVisionModel"
    legacy_layout_marker = "vision_model.vision_model."
    auto_classes = {"AutoModel": "TokenPruneSiglipVisionModel"}


class TokenPruneSiglipVisionModel(TokenPruneModelMixin, TokenPruneSiglipPreTrainedModel, SiglipVisionModel):
    """`SiglipVisionModel` whose layers follow a token-reduction plan; returns `TokenPruneModelOutput` (the stock
    outputs, ``pooler_output`` from the attention-pooling head over the tokens left, plus per-layer token
    bookkeeping). With ``restore_tokens=True`` the head pools the full-length restored sequence."""

    def __init__(self, config: TokenPruneSiglipVisionConfig):
        SiglipPreTrainedModel.__init__(self, config)
        self.config = config
        self.embeddings = SiglipVisionEmbeddings(config)
        self.encoder = TokenPruneSiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.use_head = config.vision_use_head
        if self.use_head:
            self.head = SiglipMultiheadAttentionPoolingHead(config)
        self.remember_built_plans()
        self.post_init()

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = False,
        keep_rate: float | None = None,
        disable_plans: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenPruneModelOutput:
        r"""
        keep_rate (`float`, *optional*):
            Overrides the plan's keep rate for this call (methods with a keep rate); the config is unchanged.
        disable_plans (`bool`, *optional*, defaults to `False`):
            Runs every layer in full, as the stock model with the same weights.
        """
        grid, plan, reuse, pixel_values = self.start_plans(
            pixel_values, interpolate_pos_encoding, None, keep_rate, disable_plans
        )
        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        hidden_states, state, traces, states = self.run_layers(self.encoder.layers, hidden_states, grid, plan, reuse)
        hidden_states = self.post_layernorm(hidden_states)
        return TokenPruneModelOutput(
            last_hidden_state=hidden_states,
            pooler_output=self.head(hidden_states) if self.use_head else None,
            **self.bookkeeping(traces, state, grid, states),
        )


TokenPruneSiglipVisionModel.register_for_auto_class("AutoModel")

__all__ = ["TokenPruneSiglipPreTrainedModel", "TokenPruneSiglipVisionModel"]
