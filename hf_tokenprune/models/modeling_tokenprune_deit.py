# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""TokenPruneDeiT: HF DeiT (with its distillation token) whose layers follow a token-reduction plan.

Only the difference from ``transformers.models.deit.modeling_deit`` is written here. A DeiT layer is a ViT layer
(same modules, same names), so the layers, the forward of the base model and the classifier's loss are ViT's; what
differs is the embeddings (CLS and distillation token, both prefix tokens that no method drops or merges), the
config and the classifier with two heads.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.models.deit.modeling_deit import (
    DeiTEmbeddings,
    DeiTForImageClassificationWithTeacher,
    DeiTForImageClassificationWithTeacherOutput,
    DeiTModel,
    DeiTPooler,
    DeiTPreTrainedModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from .configuration_tokenprune_deit import TokenPruneDeiTConfig
from .modeling_tokenprune_common import (
    TokenPruneClassifierMixin,
    TokenPruneModelMixin,
    TokenPrunePreTrainedMixin,
    passed_through,
)
from .modeling_tokenprune_vit import TokenPruneViTAttention, TokenPruneViTLayer, TokenPruneViTModel

# Stock DeiT checkpoints are stored in the 4.x ViT layout; transformers renames them only for its own classes.
register_checkpoint_conversion_mapping(
    "TokenPruneDeiTModel", get_checkpoint_conversion_mapping("ViTModel"), overwrite=True
)


@dataclass
class TokenPruneDeiTWithTeacherOutput(DeiTForImageClassificationWithTeacherOutput):
    """`DeiTForImageClassificationWithTeacherOutput` plus a loss and the token bookkeeping of
    `TokenPruneModelOutput` (positions 0 and 1 are the CLS and the distillation token)."""

    loss: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None
    token_counts: tuple | None = None
    token_positions: tuple | None = None
    token_owner: tuple | None = None
    patch_grid: tuple | None = None
    token_policy: torch.Tensor | None = None


class TokenPruneDeiTPreTrainedModel(TokenPrunePreTrainedMixin, DeiTPreTrainedModel):
    """`DeiTPreTrainedModel` with our config class and the ViT layers that follow a plan."""

    config_class = TokenPruneDeiTConfig
    config: TokenPruneDeiTConfig
    _no_split_modules = ["DeiTEmbeddings", "TokenPruneViTLayer"]
    _can_record_outputs = {"hidden_states": TokenPruneViTLayer, "attentions": TokenPruneViTAttention}
    auto_classes = {
        "AutoModel": "TokenPruneDeiTModel",
        "AutoModelForImageClassification": "TokenPruneDeiTForImageClassificationWithTeacher",
    }


class TokenPruneDeiTModel(TokenPruneModelMixin, TokenPruneDeiTPreTrainedModel, DeiTModel):
    """`DeiTModel` whose layers follow a token-reduction plan; its forward is `TokenPruneViTModel`'s (the same
    arguments, ``keep_rate`` and ``disable_plans`` included, and the same bookkeeping in the output)."""

    def __init__(self, config: TokenPruneDeiTConfig, add_pooling_layer: bool = True, use_mask_token: bool = False):
        DeiTPreTrainedModel.__init__(self, config)
        self.config = config
        self.embeddings = DeiTEmbeddings(config, use_mask_token=use_mask_token)
        self.layers = nn.ModuleList([TokenPruneViTLayer(config, i) for i in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = DeiTPooler(config) if add_pooling_layer else None
        self.remember_built_plans()
        self.post_init()

    forward = TokenPruneViTModel.forward


class TokenPruneDeiTForImageClassificationWithTeacher(
    TokenPruneClassifierMixin, TokenPruneDeiTPreTrainedModel, DeiTForImageClassificationWithTeacher
):
    """`DeiTForImageClassificationWithTeacher` on a `TokenPruneDeiTModel`. It differs from the stock class in that
    it can also train: with ``labels`` the loss is half the cross-entropy of the CLS head on ``labels`` and half
    that of the distillation head on ``distillation_labels`` (a teacher's hard predictions, DeiT's hard
    distillation), or on ``labels`` when none are given; the methods' auxiliary losses are added."""

    def __init__(self, config: TokenPruneDeiTConfig):
        DeiTPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.deit = TokenPruneDeiTModel(config, add_pooling_layer=False)
        self.cls_classifier = self._head(config)
        self.distillation_classifier = self._head(config)
        self.post_init()

    @staticmethod
    def _head(config):
        return nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        distillation_labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        attention_mask: torch.Tensor | None = None,
        keep_rate: float | None = None,
        disable_plans: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenPruneDeiTWithTeacherOutput:
        r"""
        distillation_labels (`torch.LongTensor`, *optional*):
            Targets of the distillation head (a teacher's predictions); ``labels`` when not given.
        keep_rate (`float`, *optional*):
            Overrides the plan's keep rate for this call (methods with a keep rate); the config is unchanged.
        disable_plans (`bool`, *optional*, defaults to `False`):
            Runs every layer in full, as the stock DeiT with the same weights.
        """
        outputs = self.deit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            attention_mask=attention_mask,
            keep_rate=keep_rate,
            disable_plans=disable_plans,
            **kwargs,
        )
        cls_logits = self.cls_classifier(outputs.last_hidden_state[:, 0])  # (B, labels)
        distillation_logits = self.distillation_classifier(outputs.last_hidden_state[:, 1])
        loss = aux_loss = None
        if labels is not None:
            targets = labels if distillation_labels is None else distillation_labels
            loss = 0.5 * self.loss_function(labels, cls_logits, self.config, **kwargs)
            loss = loss + 0.5 * self.loss_function(targets, distillation_logits, self.config, **kwargs)
            aux_loss = self.auxiliary_loss(outputs, labels, **kwargs)
            loss = loss if aux_loss is None else loss + aux_loss
        return TokenPruneDeiTWithTeacherOutput(
            loss=loss,
            aux_loss=aux_loss,
            logits=(cls_logits + distillation_logits) / 2,
            cls_logits=cls_logits,
            distillation_logits=distillation_logits,
            **passed_through(outputs, TokenPruneDeiTWithTeacherOutput),
        )


TokenPruneDeiTModel.register_for_auto_class("AutoModel")
TokenPruneDeiTForImageClassificationWithTeacher.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "TokenPruneDeiTForImageClassificationWithTeacher",
    "TokenPruneDeiTModel",
    "TokenPruneDeiTPreTrainedModel",
    "TokenPruneDeiTWithTeacherOutput",
]
