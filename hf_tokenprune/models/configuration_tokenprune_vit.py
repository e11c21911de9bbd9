# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""TokenPruneViTConfig: a ViTConfig with a token-reduction plan and an attention-reuse plan."""

from transformers import ViTConfig
from transformers.backbone_utils import BackboneConfigMixin

from .configuration_tokenprune_common import PLAN_FIELDS, TokenPruneConfigMixin

POOLINGS = ("cls", "mean")
STOCK_MODEL_TYPE = "vit"  # checkpoints whose weights load into TokenPruneViT as they are


class TokenPruneViTConfig(TokenPruneConfigMixin, BackboneConfigMixin, ViTConfig):
    r"""A [`ViTConfig`] with three more fields; every ViT field keeps its meaning.

    Args:
        token_reduction (`dict`, *optional*):
            `None` for a plain ViT, or a plan: `{"method": name, **options}`. Methods: `evit`, `skipvit`,
            `evo_vit`, `tome`, `supervit`, `cropr`, `dynamicvit` (and any other registered one). The plan is
            validated and completed with defaults when it is set, also when it arrives as a
            `from_pretrained(..., token_reduction=...)` keyword.
        attention_reuse (`dict`, *optional*):
            `None`, or an attention-reuse plan `{"method": "skipat", "layers": [...]}`. It can be combined with a
            token-reduction plan whose first active layer comes after every reused layer.
        restore_tokens (`bool`, *optional*, defaults to `False`):
            Whether `last_hidden_state` comes back full length, in the original patch order: parked and dropped
            tokens with the value they had when they left, merged tokens copied to every position they stand for.
        classifier_pooling (`str`, *optional*, defaults to `"cls"`):
            What `TokenPruneViTForImageClassification` classifies: `"cls"`, the final LayerNorm's CLS token (as
            `ViTForImageClassification`), or `"mean"`, the final LayerNorm of the mean of every token the last layer
            outputs, CLS included (Token Cropr's official classifier, timm-style `fc_norm`); a token ToMe merged counts
            for every patch it holds, so the mean is the one over the restored sequence.
        position_tables (`list[int]`, *optional*):
            Image sides (pixels, multiples of the patch size, other than `image_size`) that have a learned position
            table of their own, used instead of the interpolated one with `interpolate_pos_encoding=True` (SuperViT's
            reference model keeps one per resolution; converted SuperViT checkpoints set it).
        out_features / out_indices (`list`, *optional*):
            The layers `TokenPruneViTBackbone` returns as feature maps, as for transformers' backbones: stage names
            `"stem"` (the embeddings, index 0) and `"stage1"` ... `"stageN"` (after layer N). Default: the last.
    """

    model_type = "tokenprune_vit"
    stock_model_type = STOCK_MODEL_TYPE
    provides = frozenset({"cls_token", "one_grid", "two_heads"})  # the classifier has Evo-ViT's second head

    token_reduction: dict | None = None
    attention_reuse: dict | None = None
    restore_tokens: bool = False
    classifier_pooling: str = "cls"
    position_tables: list[int] | None = None
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.position_tables is not None:
            sides = self.position_tables
            if not isinstance(sides, (list, tuple)) or any(
                isinstance(side, bool) or not isinstance(side, int) or side < 1 or side % self.patch_size
                for side in sides
            ):
                raise ValueError(
                    f"position_tables = {sides!r} must be a list of image sides, multiples of the patch size "
                    f"{self.patch_size}."
                )
            self.position_tables = sorted(set(sides))
        if self.classifier_pooling not in POOLINGS:
            raise ValueError(
                f"classifier_pooling = {self.classifier_pooling!r} is not known; allowed: {list(POOLINGS)}."
            )
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)

    @property
    def stage_names(self) -> list[str]:
        """Backbone stages: the embeddings ("stem") and the output of every layer."""
        return ["stem"] + [f"stage{index}" for index in range(1, self.num_hidden_layers + 1)]

    @classmethod
    def other_family_hint(cls, model_type: str) -> str:
        if model_type != "deit":
            return ""
        return (
            ", such as google/vit-* and facebook/deit-*-patch16-224 (transformers' DeiT classes add a distillation "
            "token: load those with TokenPruneDeiTConfig)"
        )


TokenPruneViTConfig.register_for_auto_class()

__all__ = ["PLAN_FIELDS", "TokenPruneViTConfig"]
