# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""Dense prediction on TokenPruneViT: a transformers backbone and a light semantic-segmentation model.

Both read the full patch grid whatever the plan: each layer's output is put back in patch order with the shared
``restore_full_length`` helper (tokens that left the sequence with the value they had when they left, parked tokens
where they belong, merged tokens copied to every patch they stand for, Cropr's pruned tokens re-inserted). The
methods know nothing of the task; the dense task lives here.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.backbone_utils import BackboneMixin, filter_output_hidden_states
from transformers.modeling_outputs import BackboneOutput, SemanticSegmenterOutput
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from .modeling_tokenprune_common import passed_through
from .modeling_tokenprune_vit import (  # noqa: F401  (the image-classification class: for the auto_map)
    TokenPruneViTForImageClassification,
    TokenPruneViTModel,
    TokenPruneViTPreTrainedModel,
)
from .token_reduction import restore_full_length

DEFAULT_IGNORE_INDEX = 255  # as transformers' segmentation configs (semantic_loss_ignore_index)


def restore_every_token(config) -> None:
    """A dense model needs every removed token kept aside so the full grid can be rebuilt: it turns on
    ``restore_tokens`` itself (in its config, so a saved folder says so too)."""
    if not config.restore_tokens:
        config.restore_tokens = True


def grid_features(hidden: torch.Tensor, state, grid: tuple[int, int], norm: nn.Module) -> torch.Tensor:
    """One layer's output as a (B, C, rows, columns) map in patch order; ``state`` is None for the embeddings."""
    full = hidden if state is None else restore_full_length(hidden, state)  # (B, 1 + rows * columns, C)
    prefix = full.shape[1] - grid[0] * grid[1]
    patches = norm(full)[:, prefix:]  # (B, rows * columns, C)
    return patches.transpose(1, 2).reshape(patches.shape[0], -1, grid[0], grid[1])


# Folders saved by a dense model serve every Auto class of the family: its own two and the ViT ones.
DENSE_AUTO_CLASSES = {
    **TokenPruneViTPreTrainedModel.auto_classes,
    "AutoBackbone": "TokenPruneViTBackbone",
    "AutoModelForSemanticSegmentation": "TokenPruneViTForSemanticSegmentation",
}


class TokenPruneViTBackbone(BackboneMixin, TokenPruneViTPreTrainedModel):
    """A transformers backbone (`BackboneMixin`) on a `TokenPruneViTModel`, as `Dinov2Backbone` is on DINOv2.

    ``config.out_features`` / ``out_indices`` choose the stages (``"stem"`` is the embeddings, ``"stageN"`` the
    output of layer N); each feature map is ``(batch, hidden_size, rows, columns)`` on the full patch grid, after
    the model's final LayerNorm. It plugs into `UperNetForSemanticSegmentation` through ``backbone_config``.
    ``hidden_states``, when asked for (the call's ``output_hidden_states``, else the config's), are the layers'
    outputs as computed (the reduced sequences). It turns on ``restore_tokens`` in its config: the grid needs every
    token a plan removes.
    """

    auto_classes = DENSE_AUTO_CLASSES

    def __init__(self, config):
        super().__init__(config)
        restore_every_token(config)
        self.num_features = [config.hidden_size] * len(config.stage_names)
        self.vit = TokenPruneViTModel(config, add_pooling_layer=False)
        self.post_init()

    @can_return_tuple
    @filter_output_hidden_states
    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool | None = None,
        keep_rate: float | None = None,
        disable_plans: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BackboneOutput:
        r"""
        keep_rate (`float`, *optional*): overrides the plan's keep rate for this call.
        disable_plans (`bool`, *optional*): runs the same weights as stock ViT.
        """
        outputs = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            keep_rate=keep_rate,
            disable_plans=disable_plans,
            **kwargs,  # output_hidden_states=True (the feature maps read them) and the call's output_attentions
        )
        states = (None, *outputs.layer_states)  # hidden_states[0] is the embeddings, then one per layer
        stages = len(self.stage_names)
        feature_maps = tuple(
            grid_features(outputs.hidden_states[i], states[i], outputs.patch_grid, self.vit.layernorm)
            for i in sorted(index % stages for index in self.out_indices)
        )
        return BackboneOutput(
            feature_maps=feature_maps, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


@dataclass
class TokenPruneViTSemanticSegmenterOutput(SemanticSegmenterOutput):
    """`SemanticSegmenterOutput` (logits at the image size) plus the token bookkeeping of the classification
    output; ``aux_loss`` is the part of ``loss`` from auxiliary objectives (already included in ``loss``)."""

    aux_loss: torch.FloatTensor | None = None
    token_counts: tuple | None = None
    token_positions: tuple | None = None
    token_owner: tuple | None = None
    patch_grid: tuple | None = None


def check_labels(labels: torch.Tensor | None, pixel_values: torch.Tensor) -> None:
    if labels is None:
        return
    expected = (pixel_values.shape[0], *pixel_values.shape[-2:])
    if labels.dim() != 3 or tuple(labels.shape) != expected or labels.is_floating_point():
        raise ValueError(
            f"labels must be an integer (batch, height, width) map of class indices matching pixel_values, i.e. "
            f"{expected}; got {labels.dtype} of shape {tuple(labels.shape)}."
        )


def pixel_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Cross-entropy averaged over the labelled pixels (zero, not NaN, when a batch has none)."""
    losses = nn.functional.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    labelled = (labels != ignore_index).sum().clamp_min(1)
    return losses.sum() / labelled


def patch_labels(labels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The label of each patch: the pixel map downsampled to the grid by nearest neighbour, as in Cropr's code."""
    down = nn.functional.interpolate(labels[:, None].float(), size=grid, mode="nearest")
    return down[:, 0].long()  # (B, rows, columns)


class TokenPruneViTForSemanticSegmentation(TokenPruneViTPreTrainedModel):
    """A ViT with Segmenter's linear decoder: a linear classifier on every patch token of the full grid, upsampled
    bilinearly to the image. ``labels`` (batch, height, width) give a per-pixel cross-entropy that skips
    ``config.semantic_loss_ignore_index`` (default 255); auxiliary objectives of the plan (Cropr's per-query heads
    on the patch grid, DynamicViT's ratio loss) are added to ``loss``, so the stock `Trainer` trains them. Like
    `TokenPruneViTBackbone`, it turns on ``restore_tokens`` in its config."""

    accepts_loss_kwargs = False  # a per-pixel mean loss

    auto_classes = DENSE_AUTO_CLASSES

    def __init__(self, config):
        super().__init__(config)
        restore_every_token(config)
        self.vit = TokenPruneViTModel(config, add_pooling_layer=False)
        self.segmentation_head = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @property
    def ignore_index(self) -> int:
        return getattr(self.config, "semantic_loss_ignore_index", DEFAULT_IGNORE_INDEX)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        keep_rate: float | None = None,
        disable_plans: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenPruneViTSemanticSegmenterOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch, height, width)`, *optional*): class index of every pixel.
        keep_rate (`float`, *optional*): overrides the plan's keep rate for this call.
        disable_plans (`bool`, *optional*): runs the same weights as stock ViT.
        """
        if pixel_values is not None:
            check_labels(labels, pixel_values)
        outputs = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            keep_rate=keep_rate,
            disable_plans=disable_plans,
            **kwargs,
        )
        grid = outputs.patch_grid
        sequence = outputs.last_hidden_state  # full length in patch order (restore_tokens), after the LayerNorm
        patches = sequence[:, sequence.shape[1] - grid[0] * grid[1] :]  # (B, rows * columns, C)
        patch_logits = self.segmentation_head(patches).transpose(1, 2)  # (B, labels, rows * columns)
        patch_logits = patch_logits.reshape(patch_logits.shape[0], -1, *grid)
        logits = nn.functional.interpolate(
            patch_logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False
        )  # (B, labels, H, W)
        loss = aux_loss = None
        if labels is not None:
            loss = pixel_loss(logits, labels, self.ignore_index)
            aux_loss = self.auxiliary_loss(outputs, labels, grid)
            loss = loss if aux_loss is None else loss + aux_loss
        return TokenPruneViTSemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            aux_loss=aux_loss,
            **passed_through(outputs, TokenPruneViTSemanticSegmenterOutput),
        )

    def auxiliary_loss(self, outputs, labels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor | None:
        """The plan's auxiliary objectives: per-patch predictions (B, rows * columns, labels), such as Cropr's
        per-query heads, against the patch labels; a label-free loss (DynamicViT's ratio loss) as it is."""
        terms = []
        if outputs.aux_logits:
            targets = patch_labels(labels, grid)
        for logits, weight in outputs.aux_logits or ():
            if logits.dim() != 3 or logits.shape[1] != grid[0] * grid[1]:
                raise ValueError(
                    f"an auxiliary head of the plan predicts shape {tuple(logits.shape)}, but a dense model needs "
                    f"one prediction per patch ({grid[0] * grid[1]}); for cropr set aux_head='per_query'."
                )
            grid_logits = logits.transpose(1, 2).reshape(logits.shape[0], -1, *grid)  # (B, labels, rows, columns)
            terms.append(weight * pixel_loss(grid_logits, targets, self.ignore_index))
        if outputs.aux_loss is not None:
            terms.append(outputs.aux_loss)
        return sum(terms[1:], terms[0]) if terms else None


TokenPruneViTBackbone.register_for_auto_class("AutoBackbone")
TokenPruneViTForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

__all__ = [
    "TokenPruneViTBackbone",
    "TokenPruneViTForSemanticSegmentation",
    "TokenPruneViTSemanticSegmenterOutput",
]
