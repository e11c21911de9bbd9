# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""TokenPruneCLIP: HF CLIP whose vision tower follows a token-reduction plan.

Only the difference from ``transformers.models.clip.modeling_clip`` is written here: the layout of a CLIP encoder
layer (``layer_norm1``, ``self_attn`` with ``out_proj``; ``layer_norm2``, MLP; no dropout on the residual), the
vision model's forward (pre-LayerNorm, the layers, CLS through the post-LayerNorm as the pooled output) and the
classes that hold the vision tower: with a projection (image embeddings) and the full `CLIPModel`, whose text tower
and contrastive head are stock.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.models.clip.modeling_clip import (
    CLIPMLP,
    CLIPAttention,
    CLIPEncoderLayer,
    CLIPModel,
    CLIPPreTrainedModel,
    CLIPTextModel,
    CLIPVisionEmbeddings,
    CLIPVisionModel,
    CLIPVisionModelOutput,
    CLIPVisionModelWithProjection,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_tokenprune_clip import TokenPruneCLIPConfig, TokenPruneCLIPVisionConfig
from .modeling_tokenprune_common import (
    ProbedAttentionMixin,
    TokenPruneLayerMixin,
    TokenPruneModelMixin,
    TokenPruneModelOutput,
    TokenPrunePreTrainedMixin,
    passed_through,
)

# Stock CLIP vision checkpoints nest the tower under ``vision_model``; transformers renames them for its classes.
register_checkpoint_conversion_mapping(
    "TokenPruneCLIPVisionModel", get_checkpoint_conversion_mapping("CLIPVisionModel"), overwrite=True
)


@dataclass
class TokenPruneCLIPVisionModelOutput(CLIPVisionModelOutput):
    """`CLIPVisionModelOutput` plus the token bookkeeping of `TokenPruneModelOutput`."""

    token_counts: tuple | None = None
    token_positions: tuple | None = None
    token_owner: tuple | None = None
    patch_grid: tuple | None = None


class CLIPStyleAttentionMixin(ProbedAttentionMixin):
    """The probed attention with the names of CLIP's attention (and SigLIP's, which is the same)."""

    output_projection = "out_proj"

    def attention_scaling(self) -> float:
        return self.scale

    def attention_dropout_rate(self) -> float:
        return self.dropout


class TokenPruneCLIPAttention(CLIPStyleAttentionMixin, CLIPAttention):
    """`CLIPAttention` that can also report its CLS attention row and its head-averaged keys."""


class TokenPruneCLIPEncoderLayer(TokenPruneLayerMixin, CLIPEncoderLayer):
    """`CLIPEncoderLayer` that runs its plan's hooks and can reuse attention (`TokenPruneLayerMixin`). SigLIP's
    layer has the same layout and names; it reuses this class with its own attention and MLP classes."""

    attention_parts = ("self_attn", "layer_norm1")
    attention_class = TokenPruneCLIPAttention
    mlp_class = CLIPMLP

    def __init__(self, config, layer_idx: int):
        nn.Module.__init__(self)
        self.embed_dim = config.hidden_size
        if self.build_attention_reuse(config, layer_idx):
            self.self_attn = self.attention_class(config)
            self.layer_norm1 = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.mlp = self.mlp_class(config)
        self.layer_norm2 = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.build_token_reduction(config, layer_idx)

    def attention_branch(self, hidden_states, attention_mask, **options):
        attention_output, _, probe = self.self_attn(self.layer_norm1(hidden_states), attention_mask, **options)
        return attention_output, probe

    def add_branch(self, branch, residual):
        return branch + residual

    def mlp_branch(self, hidden_states):
        return self.mlp(self.layer_norm2(hidden_states))


class TokenPruneCLIPEncoder(nn.Module):
    """Holds the layers under the stock name (``encoder.layers``); the model runs them."""

    layer_class = TokenPruneCLIPEncoderLayer

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([self.layer_class(config, i) for i in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False


class TokenPruneCLIPPreTrainedModel(TokenPrunePreTrainedMixin, CLIPPreTrainedModel):
    """`CLIPPreTrainedModel` with our config class and vision layers."""

    config_class = TokenPruneCLIPVisionConfig
    config: TokenPruneCLIPVisionConfig
    _no_split_modules = ["CLIPEncoderLayer", "TokenPruneCLIPEncoderLayer"]
    _can_record_outputs = {"hidden_states": TokenPruneCLIPEncoderLayer, "attentions": TokenPruneCLIPAttention}
    stock_conversion = "CLIPVisionModel"
    legacy_layout_marker = "vision_model.vision_model."
    auto_classes = {"AutoModel": "TokenPruneCLIPVisionModel"}


class TokenPruneCLIPVisionModel(TokenPruneModelMixin, TokenPruneCLIPPreTrainedModel, CLIPVisionModel):
    """`CLIPVisionModel` whose layers follow a token-reduction plan; returns `TokenPruneModelOutput` (the stock
    outputs plus per-layer token bookkeeping)."""

    def __init__(self, config: TokenPruneCLIPVisionConfig):
        CLIPPreTrainedModel.__init__(self, config)
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = TokenPruneCLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
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
        hidden_states = self.pre_layrnorm(hidden_states)
        hidden_states, state, traces, states = self.run_layers(self.encoder.layers, hidden_states, grid, plan, reuse)
        return TokenPruneModelOutput(
            last_hidden_state=hidden_states,
            pooler_output=self.post_layernorm(hidden_states[:, 0]),
            **self.bookkeeping(traces, state, grid, states),
        )


class TokenPruneCLIPVisionModelWithProjection(TokenPruneCLIPPreTrainedModel, CLIPVisionModelWithProjection):
    """`CLIPVisionModelWithProjection` on a `TokenPruneCLIPVisionModel`: image embeddings from a tower that follows
    a plan. As in transformers, ``AutoModel`` of its folder is the vision model without the projection."""

    def __init__(self, config: TokenPruneCLIPVisionConfig):
        CLIPPreTrainedModel.__init__(self, config)
        self.vision_model = TokenPruneCLIPVisionModel(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        keep_rate: float | None = None,
        disable_plans: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenPruneCLIPVisionModelOutput:
        outputs = self.vision_model(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            keep_rate=keep_rate,
            disable_plans=disable_plans,
            **kwargs,
        )
        return TokenPruneCLIPVisionModelOutput(
            image_embeds=self.visual_projection(outputs.pooler_output),  # (B, projection_dim)
            last_hidden_state=outputs.last_hidden_state,
            **passed_through(outputs, TokenPruneCLIPVisionModelOutput),
        )


class TokenPruneCLIPModel(TokenPrunePreTrainedMixin, CLIPModel):
    """`CLIPModel` whose vision tower is a `TokenPruneCLIPVisionModel`; the text tower, the projections and the
    contrastive loss (``return_loss=True``) are stock, so zero-shot classification and image embeddings
    (``get_image_features``) follow the plan of ``config.vision_config``."""

    config_class = TokenPruneCLIPConfig
    config: TokenPruneCLIPConfig
    _no_split_modules = TokenPruneCLIPPreTrainedModel._no_split_modules
    stock_conversion = "CLIPModel"
    auto_classes = {
        "AutoModel": "TokenPruneCLIPModel",
        "AutoModelForZeroShotImageClassification": "TokenPruneCLIPModel",
    }

    def __init__(self, config: TokenPruneCLIPConfig):
        CLIPPreTrainedModel.__init__(self, config)
        self.projection_dim = config.projection_dim
        self.text_embed_dim = config.text_config.hidden_size
        self.vision_embed_dim = config.vision_config.hidden_size
        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.vision_model = TokenPruneCLIPVisionModel(config.vision_config)
        self.visual_projection = nn.Linear(self.vision_embed_dim, self.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, self.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(self.config.logit_scale_init_value))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """The stock initialisation, and ``logit_scale`` at ``config.logit_scale_init_value`` as the constructor sets
        it: the stock `_init_weights` leaves it out, so a checkpoint without it would start from arbitrary values."""
        super()._init_weights(module)
        if module is self:
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


TokenPruneCLIPVisionModel.register_for_auto_class("AutoModel")
TokenPruneCLIPModel.register_for_auto_class("AutoModelForZeroShotImageClassification")

__all__ = [
    "TokenPruneCLIPModel",
    "TokenPruneCLIPPreTrainedModel",
    "TokenPruneCLIPVisionModel",
    "TokenPruneCLIPVisionModelOutput",
    "TokenPruneCLIPVisionModelWithProjection",
]
