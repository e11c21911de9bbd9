# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""TokenPruneDINOv3ViT: HF DINOv3 ViT whose layers follow a token-reduction plan.

Only the difference from ``transformers.models.dinov3_vit`` is written here. A DINOv3 layer is DINOv2's (``norm1``,
attention, ``layer_scale1``, drop path; ``norm2``, MLP or gated MLP, ``layer_scale2``); the prefix is the CLS token
and the registers; the patch tokens' queries and keys are rotated by their patch's rotary angles (RoPE). Tokens
move under a plan (dropped, parked and rejoined, fused, merged), so each layer gathers the angles of the patch each
token holds (``state.positions``): a kept token keeps its own angles through every reduction; a merged token (ToMe)
has its destination's position, so its destination's angles; a made-up token (EViT's fused token) and the prefix
are not rotated, as the stock model leaves the prefix.
"""

import torch
from torch import nn
from transformers.backbone_utils import BackboneMixin, filter_output_hidden_states
from transformers.models.dinov3_vit.modeling_dinov3_vit import (
    DINOv3ViTAttention,
    DINOv3ViTBackboneOutput,
    Dinov3ViTDropPath,
    DINOv3ViTEmbeddings,
    DINOv3ViTGatedMLP,
    DINOv3ViTLayer,
    DINOv3ViTLayerScale,
    DINOv3ViTMLP,
    DINOv3ViTModel,
    DINOv3ViTPreTrainedModel,
    DINOv3ViTRopePositionEmbedding,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_tokenprune_dinov3 import TokenPruneDINOv3ViTConfig
from .modeling_tokenprune_common import (
    LayerScaleLayerMixin,
    ProbedAttentionMixin,
    TokenPruneLayerMixin,
    TokenPruneModelMixin,
    TokenPruneModelOutput,
    TokenPrunePreTrainedMixin,
)
from .token_reduction import restore_full_length


def rotation_table(position_embeddings, num_prefix: int):
    """The stock (cos, sin) rows (num_patches, head_dim) behind ``num_prefix + 1`` identity rows: row 0 for a made-up
    token, rows 1..P for the prefix, row ``i + 1`` for embedding index ``i``. Built once per forward."""
    cos, sin = position_embeddings
    identity_cos, zeros = cos.new_ones(num_prefix + 1, cos.shape[-1]), sin.new_zeros(num_prefix + 1, sin.shape[-1])
    return torch.cat([identity_cos, cos]), torch.cat([zeros, sin])


def token_rotation(table, positions: torch.Tensor):
    """(cos, sin), each (B, 1, N, head_dim): the rotary angles of the patch each token of the sequence holds
    (``positions``: embedding indices, the prefix first, -1 for a made-up token), identity for the prefix and
    made-up tokens."""
    index = positions + 1
    return table[0][index].unsqueeze(1), table[1][index].unsqueeze(1)


class TokenPruneDINOv3ViTAttention(ProbedAttentionMixin, DINOv3ViTAttention):
    """`DINOv3ViTAttention` that can also report its CLS attention row and its head-averaged keys (from the rotated
    queries and keys)."""

    def attention_dropout_rate(self) -> float:
        return self.dropout


class TokenPruneDINOv3ViTLayer(LayerScaleLayerMixin, TokenPruneLayerMixin, DINOv3ViTLayer):
    """`DINOv3ViTLayer` that runs its plan's hooks and can reuse attention (`TokenPruneLayerMixin`); it rotates
    each token's query and key by the angles of the patch the token holds."""

    def __init__(self, config, layer_idx: int):
        super(DINOv3ViTLayer, self).__init__()
        if self.build_attention_reuse(config, layer_idx):
            self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.attention = TokenPruneDINOv3ViTAttention(config)
            self.layer_scale1 = DINOv3ViTLayerScale(config)
        self.drop_path = Dinov3ViTDropPath(config.drop_path_rate) if config.drop_path_rate > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = DINOv3ViTGatedMLP(config) if config.use_gated_mlp else DINOv3ViTMLP(config)
        self.layer_scale2 = DINOv3ViTLayerScale(config)
        self.build_token_reduction(config, layer_idx)

    def _attend(self, hidden_states, attention_mask, state, reduction, position_embeddings=None, **kwargs):
        rotation = token_rotation(position_embeddings, state.positions)  # a `rotation_table`
        return super()._attend(hidden_states, attention_mask, state, reduction, position_embeddings=rotation, **kwargs)


class TokenPruneDINOv3ViTEncoder(nn.Module):
    """Holds the layers under the stock name (``model.layer``); the model runs them."""

    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([TokenPruneDINOv3ViTLayer(config, i) for i in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False


class TokenPruneDINOv3ViTPreTrainedModel(TokenPrunePreTrainedMixin, DINOv3ViTPreTrainedModel):
    """`DINOv3ViTPreTrainedModel` with our config class and layers."""

    config_class = TokenPruneDINOv3ViTConfig
    config: TokenPruneDINOv3ViTConfig
    _no_split_modules = ["DINOv3ViTEmbeddings", "TokenPruneDINOv3ViTLayer"]
    _can_record_outputs = {"hidden_states": TokenPruneDINOv3ViTLayer, "attentions": TokenPruneDINOv3ViTAttention}
    stock_conversion = "DINOv3ViTModel"
    legacy_layout_marker = "attention.attention.query"
    auto_classes = {"AutoModel": "TokenPruneDINOv3ViTModel", "AutoBackbone": "TokenPruneDINOv3ViTBackbone"}


class TokenPruneDINOv3ViTEncoding(TokenPruneModelMixin):
    """The embeddings, the rotary angles, the layers under a plan and the final norm, shared by the model and the
    backbone (which hold them under the same names, as the stock classes do)."""

    def build_encoding(self, config) -> None:
        self.embeddings = DINOv3ViTEmbeddings(config)
        self.rope_embeddings = DINOv3ViTRopePositionEmbedding(config)
        self.model = TokenPruneDINOv3ViTEncoder(config)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.remember_built_plans()

    def encode(self, pixel_values, bool_masked_pos, attention_mask, keep_rate, disable_plans, **kwargs):
        """(hidden states before the final norm, final state, traces, states, grid)."""
        grid, plan, reuse, pixel_values = self.start_plans(
            pixel_values, True, attention_mask, keep_rate, disable_plans
        )
        hidden_states = self.embeddings(pixel_values, bool_masked_pos=bool_masked_pos)
        table = rotation_table(self.rope_embeddings(pixel_values), self.config.num_prefix_tokens)
        hidden_states, state, traces, states = self.run_layers(
            self.model.layer, hidden_states, grid, plan, reuse, attention_mask,
            position_embeddings=table, **kwargs,
        )  # fmt: skip
        return hidden_states, state, traces, states, grid


class TokenPruneDINOv3ViTModel(TokenPruneDINOv3ViTEncoding, TokenPruneDINOv3ViTPreTrainedModel, DINOv3ViTModel):
    """`DINOv3ViTModel` whose layers follow a token-reduction plan; returns `TokenPruneModelOutput` (the stock
    outputs, ``pooler_output`` the CLS token, plus per-layer token bookkeeping)."""

    def __init__(self, config):
        DINOv3ViTPreTrainedModel.__init__(self, config)
        self.config = config
        self.build_encoding(config)
        self.post_init()

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
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
        hidden_states, state, traces, states, grid = self.encode(
            pixel_values, bool_masked_pos, attention_mask, keep_rate, disable_plans, **kwargs
        )
        sequence_output = self.norm(hidden_states)
        return TokenPruneModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=sequence_output[:, 0],
            **self.bookkeeping(traces, state, grid, states),
        )


class TokenPruneDINOv3ViTBackbone(TokenPruneDINOv3ViTEncoding, BackboneMixin, TokenPruneDINOv3ViTPreTrainedModel):
    """`DINOv3ViTBackbone` on the plan's layers: each chosen stage as a full-grid feature map (the tokens a plan
    removed restored at their patches, with the value they had when they left; merged tokens copied to every patch
    they stand for), normalised as the stock backbone does. It turns on ``restore_tokens`` in its config."""

    def __init__(self, config):
        config.restore_tokens = True  # the grid needs every token a plan removes
        super().__init__(config)  # BackboneMixin: the stages of the config
        self.build_encoding(config)
        self.num_features = [config.hidden_size for _ in range(config.num_hidden_layers + 1)]
        self.post_init()

    @can_return_tuple
    @filter_output_hidden_states
    def forward(
        self,
        pixel_values: torch.Tensor,
        keep_rate: float | None = None,
        disable_plans: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> DINOv3ViTBackboneOutput:
        r"""
        keep_rate (`float`, *optional*): overrides the plan's keep rate for this call.
        disable_plans (`bool`, *optional*): runs the same weights as the stock backbone.
        """
        kwargs.pop("output_hidden_states", None)
        hidden_states, states, grid, attentions = self._stages(pixel_values, keep_rate, disable_plans, **kwargs)
        batch, prefix = pixel_values.shape[0], self.config.num_prefix_tokens
        feature_maps, last = [], len(self.stage_names) - 1
        for index, (name, hidden, state) in enumerate(zip(self.stage_names, hidden_states, (None, *states))):
            full = hidden if state is None else restore_full_length(hidden, state)
            if index == last or self.config.apply_layernorm:
                full = self.norm(full)
            if index == last:
                sequence_output = full
            if name in self.out_features:
                patches = full[:, prefix:]
                if self.config.reshape_hidden_states:
                    patches = patches.reshape(batch, grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
                feature_maps.append(patches)
        output = DINOv3ViTBackboneOutput(
            feature_maps=tuple(feature_maps), hidden_states=hidden_states, attentions=attentions
        )
        output.last_hidden_state = sequence_output  # as the stock backbone: the last stage, full length, normalised
        return output

    @capture_outputs(tie_last_hidden_states=False)
    def _run(self, pixel_values, keep_rate, disable_plans, **kwargs):
        hidden_states, state, traces, states, grid = self.encode(
            pixel_values, None, None, keep_rate, disable_plans, **kwargs
        )
        return TokenPruneModelOutput(last_hidden_state=hidden_states, **self.bookkeeping(traces, state, grid, states))

    def _stages(self, pixel_values, keep_rate, disable_plans, **kwargs):
        outputs = self._run(pixel_values, keep_rate, disable_plans, output_hidden_states=True, **kwargs)
        return outputs.hidden_states, outputs.layer_states, outputs.patch_grid, outputs.attentions


TokenPruneDINOv3ViTModel.register_for_auto_class("AutoModel")
TokenPruneDINOv3ViTBackbone.register_for_auto_class("AutoBackbone")

__all__ = [
    "TokenPruneDINOv3ViTBackbone",
    "TokenPruneDINOv3ViTModel",
    "TokenPruneDINOv3ViTPreTrainedModel",
]
