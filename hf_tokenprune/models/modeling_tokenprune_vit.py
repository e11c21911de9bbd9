# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""TokenPruneViT: HF ViT whose layers can reduce tokens between attention and MLP.

Only the difference from ``transformers.models.vit.modeling_vit`` is written here: the layout of a ViT layer (which
norm, dropout and MLP go where) and the ViT classes' names. The attention probes, the layer's hooks, the loop that
threads a ``TokenState`` through the layers and the loading plumbing are shared by every family
(``modeling_tokenprune_common``).
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.models.vit.modeling_vit import (
    ViTAttention,
    ViTEmbeddings,
    ViTForImageClassification,
    ViTLayer,
    ViTMLP,
    ViTModel,
    ViTPooler,
    ViTPreTrainedModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_tokenprune_vit import TokenPruneViTConfig
from .modeling_tokenprune_common import (
    ProbedAttentionMixin,
    TokenPruneClassifierMixin,
    TokenPruneImageClassifierOutput,
    TokenPruneLayerMixin,
    TokenPruneModelMixin,
    TokenPruneModelOutput,
    TokenPrunePreTrainedMixin,
    check_pixel_values,  # noqa: F401  (re-exported: the tools import these from here)
    cls_attention_row,  # noqa: F401
    mean_of_tokens,
    passed_through,
    plan_in_force,  # noqa: F401
    policy_attention,  # noqa: F401
)

# transformers renames stock ViT weights (4.x layout on disk, 5.x names in memory) only for its own classes; the
# same renaming makes google/vit-* and facebook/deit-* checkpoints load into ours.
register_checkpoint_conversion_mapping(
    "TokenPruneViTModel", get_checkpoint_conversion_mapping("ViTModel"), overwrite=True
)


@dataclass
class TokenPruneViTModelOutput(TokenPruneModelOutput):
    """`BaseModelOutputWithPooling` plus per-layer token bookkeeping (see `TokenPruneModelOutput`); CLS is the one
    prefix token (position 0)."""


@dataclass
class TokenPruneViTImageClassifierOutput(TokenPruneImageClassifierOutput):
    """`ImageClassifierOutput` plus the token bookkeeping of `TokenPruneViTModelOutput`; ``aux_loss`` is the part
    of ``loss`` that comes from auxiliary objectives (already included in ``loss``)."""


class TokenPruneViTEmbeddings(ViTEmbeddings):
    """`ViTEmbeddings` with, optionally, a learned position table per image side (``config.position_tables``, as
    SuperViT's reference model has one per resolution): an image of such a side, with
    ``interpolate_pos_encoding=True``, adds its own table instead of the interpolated one."""

    def __init__(self, config: TokenPruneViTConfig, use_mask_token: bool = False):
        super().__init__(config, use_mask_token=use_mask_token)
        sides = config.position_tables or []
        self.position_tables = nn.ParameterDict(
            {str(side): nn.Parameter(torch.zeros(1, (side // config.patch_size) ** 2 + 1, config.hidden_size))
             for side in sides}
        )  # fmt: skip

    @torch.no_grad()
    def init_tokenprune_weights(self, std: float = 0.02) -> None:
        for table in self.position_tables.values():
            init.trunc_normal_(table, std=std)

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        table = self.position_tables[str(height)] if height == width and str(height) in self.position_tables else None
        return table if table is not None else super().interpolate_pos_encoding(embeddings, height, width)


class TokenPruneViTAttention(ProbedAttentionMixin, ViTAttention):
    """`ViTAttention` that can also report its CLS attention row and its head-averaged keys."""


class TokenPruneViTLayer(TokenPruneLayerMixin, ViTLayer):
    """`ViTLayer` that runs its plan's token-reduction hooks and can reuse attention (`TokenPruneLayerMixin`)."""

    def __init__(self, config: TokenPruneViTConfig, layer_idx: int):
        super(ViTLayer, self).__init__()
        if self.build_attention_reuse(config, layer_idx):
            self.attention = TokenPruneViTAttention(config)
            self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.build_token_reduction(config, layer_idx)

    def attention_branch(self, hidden_states, attention_mask, **options):
        attention_output, _, probe = self.attention(self.layernorm_before(hidden_states), attention_mask, **options)
        return attention_output, probe

    def add_branch(self, branch, residual):
        return self.dropout(branch) + residual

    def mlp_branch(self, hidden_states):
        return self.mlp(self.layernorm_after(hidden_states))


class TokenPruneViTPreTrainedModel(TokenPrunePreTrainedMixin, ViTPreTrainedModel):
    """`ViTPreTrainedModel` with our config class; `save_pretrained` also maps `AutoModel` to the base model."""

    config_class = TokenPruneViTConfig
    config: TokenPruneViTConfig
    _no_split_modules = ["ViTEmbeddings", "TokenPruneViTLayer"]
    auto_classes = {
        "AutoModel": "TokenPruneViTModel",
        "AutoModelForImageClassification": "TokenPruneViTForImageClassification",
    }


class TokenPruneViTModel(TokenPruneModelMixin, TokenPruneViTPreTrainedModel, ViTModel):
    """`ViTModel` whose layers follow a token-reduction plan; it threads a `TokenState` through the layers and
    returns `TokenPruneViTModelOutput` (the ViT outputs plus per-layer token bookkeeping)."""

    def __init__(self, config: TokenPruneViTConfig, add_pooling_layer: bool = True, use_mask_token: bool = False):
        ViTPreTrainedModel.__init__(self, config)
        self.config = config
        self.embeddings = TokenPruneViTEmbeddings(config, use_mask_token=use_mask_token)
        self.layers = nn.ModuleList([TokenPruneViTLayer(config, i) for i in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = ViTPooler(config) if add_pooling_layer else None
        self.remember_built_plans()
        self.post_init()

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        keep_rate: float | None = None,
        disable_plans: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenPruneViTModelOutput:
        r"""
        keep_rate (`float`, *optional*):
            Overrides the plan's keep rate for this call (methods with a keep rate); the config is unchanged.
        disable_plans (`bool`, *optional*, defaults to `False`):
            Runs every layer in full, as the stock ViT with the same weights (the unreduced teacher for distillation).
        """
        grid, plan, reuse, pixel_values = self.start_plans(
            pixel_values, interpolate_pos_encoding, attention_mask, keep_rate, disable_plans
        )
        hidden_states = self.embeddings(
            pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate_pos_encoding
        )
        hidden_states, state, traces, states = self.run_layers(
            self.layers, hidden_states, grid, plan, reuse, attention_mask, **kwargs
        )
        sequence_output = self.layernorm(hidden_states)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        return TokenPruneViTModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            **self.bookkeeping(traces, state, grid, states),
        )


class TokenPruneViTForImageClassification(
    TokenPruneClassifierMixin, TokenPruneViTPreTrainedModel, ViTForImageClassification
):
    """`ViTForImageClassification` on a `TokenPruneViTModel`; the output also carries the token bookkeeping."""

    def __init__(self, config: TokenPruneViTConfig):
        ViTPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.vit = TokenPruneViTModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        # Evo-ViT's two heads, as the official model: predictions come from `classifier` on the final LayerNorm of the
        # mean patch token; a CLS head with its own LayerNorm is trained alongside (new parameters of this plan only).
        self.cls_norm = self.cls_classifier = None
        if (config.token_reduction or {}).get("two_heads", False):
            self.cls_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.cls_classifier = (
                nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
            )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        keep_rate: float | None = None,
        disable_plans: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenPruneViTImageClassifierOutput:
        r"""
        keep_rate (`float`, *optional*):
            Overrides the plan's keep rate for this call (methods with a keep rate); the config is unchanged.
        disable_plans (`bool`, *optional*, defaults to `False`):
            Runs every layer in full, as the stock ViT with the same weights (the unreduced teacher for distillation).
        """
        wants_hidden_states = kwargs.pop("output_hidden_states", None)  # the call's, else the config's
        wants_hidden_states = self.config.output_hidden_states if wants_hidden_states is None else wants_hidden_states
        two_heads = self.cls_classifier is not None  # the mean head needs the tokens before the final LayerNorm
        mean_pooled = self.config.classifier_pooling == "mean"  # so does the mean of every token
        outputs = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            attention_mask=attention_mask,
            keep_rate=keep_rate,
            disable_plans=disable_plans,
            output_hidden_states=True if two_heads or mean_pooled else wants_hidden_states,
            **kwargs,
        )
        loss = None
        if two_heads:
            logits, loss = self._two_heads(outputs.hidden_states[-1], labels, **kwargs)
        else:
            pooled = (
                self.vit.layernorm(mean_of_tokens(outputs.hidden_states[-1], outputs.layer_states[-1]))
                if mean_pooled
                else outputs.last_hidden_state[:, 0, :]
            )
            logits = self.classifier(pooled)
            if labels is not None:
                loss = self.loss_function(labels, logits, self.config, **kwargs)
        if (two_heads or mean_pooled) and not wants_hidden_states:
            outputs.hidden_states = None
        aux_loss = self.auxiliary_loss(outputs, labels, **kwargs) if labels is not None else None
        if aux_loss is not None:
            loss = loss + aux_loss
        return TokenPruneViTImageClassifierOutput(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            **passed_through(outputs, TokenPruneViTImageClassifierOutput),
        )

    def _two_heads(self, hidden_states, labels, **kwargs):
        """Evo-ViT's heads on the last layer's output before the final LayerNorm (B, T, C): the prediction is
        ``classifier(LayerNorm(mean of the patch tokens))``; with labels the loss is 0.5 * CE of it plus 0.5 * CE of
        ``cls_classifier(cls_norm(CLS token))``."""
        logits = self.classifier(self.vit.layernorm(hidden_states[:, 1:].mean(dim=1)))  # (B, labels)
        if labels is None:
            return logits, None
        cls_logits = self.cls_classifier(self.cls_norm(hidden_states[:, 0]))
        loss = 0.5 * self.loss_function(labels, logits, self.config, **kwargs)
        return logits, loss + 0.5 * self.loss_function(labels, cls_logits, self.config, **kwargs)


TokenPruneViTModel.register_for_auto_class("AutoModel")
TokenPruneViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "TokenPruneViTForImageClassification",
    "TokenPruneViTModel",
    "TokenPruneViTPreTrainedModel",
    "TokenPruneViTModelOutput",
    "TokenPruneViTImageClassifierOutput",
]
