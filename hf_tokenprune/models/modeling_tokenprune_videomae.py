# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""TokenPruneVideoMAE: HF VideoMAE whose layers follow a token-reduction plan.

Only the difference from ``transformers.models.videomae`` is written here. The tokens are tubelets on a grid of
time x rows x columns with a fixed sinusoidal position table; there is no prefix token, so the methods may drop or
merge any token, and the grid travels as (time, rows, columns): the methods count tokens, never rows, and SkipAt's
Phi convolves each time slice. The classifier averages the tokens left by the plan, each merged token weighted by
the tubelets it holds (ToMe's rule for average pooling), which equals the stock average over the restored sequence.
"""

import torch
from torch import nn
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.models.videomae.modeling_videomae import (
    VideoMAEAttention,
    VideoMAEEmbeddings,
    VideoMAEForVideoClassification,
    VideoMAEIntermediate,
    VideoMAELayer,
    VideoMAEModel,
    VideoMAEOutput,
    VideoMAEPreTrainedModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_tokenprune_videomae import TokenPruneVideoMAEConfig
from .modeling_tokenprune_common import (
    ProbedAttentionMixin,
    TokenPruneClassifierMixin,
    TokenPruneImageClassifierOutput,
    TokenPruneLayerMixin,
    TokenPruneModelMixin,
    TokenPruneModelOutput,
    TokenPrunePreTrainedMixin,
    keeps_every_token,
    mean_of_tokens,
    passed_through,
)

# Hub VideoMAE checkpoints hold the query and value biases as ``q_bias``/``v_bias``; transformers renames them.
register_checkpoint_conversion_mapping(
    "TokenPruneVideoMAEModel", get_checkpoint_conversion_mapping("videomae"), overwrite=True
)


def check_video_values(pixel_values, config) -> tuple[int, int, int]:
    """Clear errors for clips that would otherwise fail deep inside; returns the tubelet grid (time, rows, cols)."""
    if pixel_values is None:
        raise ValueError("pixel_values is required: a (batch, frames, channels, height, width) tensor.")
    if pixel_values.dim() != 5:
        raise ValueError(
            f"pixel_values must be (batch, frames, channels, height, width); got shape {tuple(pixel_values.shape)}."
        )
    frames, channels, height, width = pixel_values.shape[1:]
    expected = config.patch_grid_for()
    if channels != config.num_channels:
        raise ValueError(f"pixel_values has {channels} channels but config.num_channels = {config.num_channels}.")
    if frames != config.num_frames:
        raise ValueError(
            f"pixel_values has {frames} frames but config.num_frames = {config.num_frames} (the position table is "
            "fixed)."
        )
    if config.patch_grid_for((height, width)) != expected:
        raise ValueError(f"pixel_values are {height}x{width} but config.image_size is {config.image_size}.")
    return expected


class TokenPruneVideoMAEAttention(ProbedAttentionMixin, VideoMAEAttention):
    """`VideoMAEAttention` (its ``attention.query/key/value`` and ``output.dense`` under the stock names) that can
    also report its head-averaged keys; the output projection includes the stock output dropout."""

    is_causal = False
    output_projection = "project_output"

    @property
    def config(self):
        return self.attention.config

    @property
    def q_proj(self):
        return self.attention.query

    @property
    def k_proj(self):
        return self.attention.key

    @property
    def v_proj(self):
        return self.attention.value

    @property
    def head_dim(self) -> int:
        return self.attention.attention_head_size

    def attention_scaling(self) -> float:
        return self.attention.scaling

    def attention_dropout_rate(self) -> float:
        return self.attention.dropout_prob

    def project_output(self, hidden_states):
        return self.output.dropout(self.output.dense(hidden_states))


class TokenPruneVideoMAELayer(TokenPruneLayerMixin, VideoMAELayer):
    """`VideoMAELayer` that runs its plan's hooks and can reuse attention (`TokenPruneLayerMixin`)."""

    def __init__(self, config, layer_idx: int):
        super(VideoMAELayer, self).__init__()
        if self.build_attention_reuse(config, layer_idx):
            self.attention = TokenPruneVideoMAEAttention(config)
            self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = VideoMAEIntermediate(config)
        self.output = VideoMAEOutput(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.build_token_reduction(config, layer_idx)

    def attention_branch(self, hidden_states, attention_mask, **options):
        attention_output, _, probe = self.attention(self.layernorm_before(hidden_states), attention_mask, **options)
        return attention_output, probe

    def add_branch(self, branch, residual):
        return branch + residual

    def mlp_branch(self, hidden_states):
        hidden_states = self.intermediate(self.layernorm_after(hidden_states))
        return self.output.dropout(self.output.dense(hidden_states))


class TokenPruneVideoMAEEncoder(nn.Module):
    """Holds the layers under the stock name (``encoder.layer``); the model runs them."""

    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([TokenPruneVideoMAELayer(config, i) for i in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False


class TokenPruneVideoMAEPreTrainedModel(TokenPrunePreTrainedMixin, VideoMAEPreTrainedModel):
    """`VideoMAEPreTrainedModel` with our config class and layers."""

    config_class = TokenPruneVideoMAEConfig
    config: TokenPruneVideoMAEConfig
    _no_split_modules = ["VideoMAEEmbeddings", "TokenPruneVideoMAELayer"]
    _can_record_outputs = {"hidden_states": TokenPruneVideoMAELayer, "attentions": TokenPruneVideoMAEAttention}
    stock_conversion = "videomae"
    legacy_layout_marker = "attention.attention.q_bias"
    auto_classes = {
        "AutoModel": "TokenPruneVideoMAEModel",
        "AutoModelForVideoClassification": "TokenPruneVideoMAEForVideoClassification",
    }


class TokenPruneVideoMAEModel(TokenPruneModelMixin, TokenPruneVideoMAEPreTrainedModel, VideoMAEModel):
    """`VideoMAEModel` whose layers follow a token-reduction plan; returns `TokenPruneModelOutput` (the stock
    output plus per-layer token bookkeeping; ``patch_grid`` is (time, rows, columns))."""

    def __init__(self, config: TokenPruneVideoMAEConfig):
        VideoMAEPreTrainedModel.__init__(self, config)
        self.config = config
        self.embeddings = VideoMAEEmbeddings(config)
        self.encoder = TokenPruneVideoMAEEncoder(config)
        self.layernorm = (
            None if config.use_mean_pooling else nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        )
        self.remember_built_plans()
        self.post_init()

    def input_grid(self, pixel_values, interpolate_pos_encoding) -> tuple[int, int, int]:
        return check_video_values(pixel_values, self.config)

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        keep_rate: float | None = None,
        disable_plans: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenPruneModelOutput:
        r"""
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, sequence_length)`, *optional*):
            The stock masking (pre-training); it removes tokens before the layers, so it runs without a plan only.
        keep_rate (`float`, *optional*):
            Overrides the plan's keep rate for this call (methods with a keep rate); the config is unchanged.
        disable_plans (`bool`, *optional*, defaults to `False`):
            Runs every layer in full, as the stock model with the same weights.
        """
        grid, plan, reuse, pixel_values = self.start_plans(pixel_values, False, None, keep_rate, disable_plans)
        if bool_masked_pos is not None and (plan is not None or reuse is not None or self.config.restore_tokens):
            raise ValueError(
                "bool_masked_pos removes tokens before the layers, which a plan or restore_tokens cannot follow; "
                "pass disable_plans=True (and restore_tokens=False) to mask as the stock model does."
            )
        hidden_states = self.embeddings(pixel_values, bool_masked_pos)
        hidden_states, state, traces, states = self.run_layers(self.encoder.layer, hidden_states, grid, plan, reuse)
        if self.layernorm is not None:
            hidden_states = self.layernorm(hidden_states)
        return TokenPruneModelOutput(last_hidden_state=hidden_states, **self.bookkeeping(traces, state, grid, states))


class TokenPruneVideoMAEForVideoClassification(
    TokenPruneClassifierMixin, TokenPruneVideoMAEPreTrainedModel, VideoMAEForVideoClassification
):
    """`VideoMAEForVideoClassification` on a `TokenPruneVideoMAEModel`; the output also carries the token
    bookkeeping. With ``use_mean_pooling`` (the released classifiers) it averages the tokens left, a merged token
    counted for every tubelet it holds; without, the stock head reads the first token, which only a plan that
    keeps every token leaves in place."""

    def __init__(self, config: TokenPruneVideoMAEConfig):
        VideoMAEPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.videomae = TokenPruneVideoMAEModel(config)
        self.fc_norm = nn.LayerNorm(config.hidden_size) if config.use_mean_pooling else None
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        keep_rate: float | None = None,
        disable_plans: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenPruneImageClassifierOutput:
        r"""
        keep_rate (`float`, *optional*):
            Overrides the plan's keep rate for this call (methods with a keep rate); the config is unchanged.
        disable_plans (`bool`, *optional*, defaults to `False`):
            Runs every layer in full, as the stock VideoMAE with the same weights.
        """
        if self.fc_norm is None and not disable_plans:
            config = self.config
            if not keeps_every_token(config.token_reduction, config.num_hidden_layers, config.num_patches, keep_rate):
                raise ValueError(
                    "use_mean_pooling=False classifies the first token of the sequence, which this plan moves or "
                    "removes; use a classifier with use_mean_pooling=True, or disable_plans=True."
                )
        outputs = self.videomae(pixel_values, keep_rate=keep_rate, disable_plans=disable_plans, **kwargs)
        sequence_output = outputs.last_hidden_state
        if self.fc_norm is not None:
            pooled = self.fc_norm(mean_of_tokens(sequence_output, outputs.layer_states[-1]))
        else:
            pooled = sequence_output[:, 0]
        logits = self.classifier(pooled)
        loss = None if labels is None else self.loss_function(labels, logits, self.config, **kwargs)
        aux_loss = self.auxiliary_loss(outputs, labels, **kwargs) if labels is not None else None
        if aux_loss is not None:
            loss = loss + aux_loss
        return TokenPruneImageClassifierOutput(
            loss=loss, aux_loss=aux_loss, logits=logits, **passed_through(outputs, TokenPruneImageClassifierOutput)
        )


TokenPruneVideoMAEModel.register_for_auto_class("AutoModel")
TokenPruneVideoMAEForVideoClassification.register_for_auto_class("AutoModelForVideoClassification")

__all__ = [
    "TokenPruneVideoMAEForVideoClassification",
    "TokenPruneVideoMAEModel",
    "TokenPruneVideoMAEPreTrainedModel",
]
