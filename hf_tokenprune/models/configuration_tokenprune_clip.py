# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""TokenPruneCLIPVisionConfig and TokenPruneCLIPConfig: CLIP's configs with the plan fields of every TokenPrune
config (for `TokenPruneCLIPConfig`, those of its vision tower)."""

from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

from .configuration_tokenprune_common import PLAN_FIELDS, TokenPruneConfigMixin


class TokenPruneCLIPVisionConfig(TokenPruneConfigMixin, CLIPVisionConfig):
    r"""A [`CLIPVisionConfig`] with the fields of [`TokenPruneViTConfig`] (``token_reduction``,
    ``attention_reuse``, ``restore_tokens``). CLIP's vision tower has one prefix token (the class embedding), like
    ViT; it is also read from a full CLIP checkpoint (its ``vision_config``).
    """

    model_type = "tokenprune_clip_vision_model"
    stock_model_type = "clip_vision_model"
    base_config_key = "vision_config"
    composite_model_types = ("clip", "tokenprune_clip")  # a full CLIP checkpoint, stock or ours

    token_reduction: dict | None = None
    attention_reuse: dict | None = None
    restore_tokens: bool = False


class TokenPruneCLIPConfig(CLIPConfig):
    r"""A [`CLIPConfig`] whose ``vision_config`` is a [`TokenPruneCLIPVisionConfig`]: the vision tower follows a
    plan, the text tower is stock. ``token_reduction``, ``attention_reuse`` and ``restore_tokens`` read and write the
    vision config's fields, so ``from_pretrained(..., token_reduction=...)`` works as for the other families.
    """

    model_type = "tokenprune_clip"
    sub_configs_defaults = {"vision_config": TokenPruneCLIPVisionConfig, "text_config": CLIPTextConfig}

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """Reads a stock CLIP config as ours."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type not in ("clip", cls.model_type):
            raise ValueError(
                f"{pretrained_model_name_or_path} is a {model_type!r} checkpoint; TokenPruneCLIPConfig loads 'clip' "
                f"checkpoints and its own ({cls.model_type!r})."
            )
        config_dict["model_type"] = cls.model_type
        return config_dict, kwargs


def _vision_field(name):
    def read(self):
        return getattr(self.vision_config, name)

    def write(self, value):
        setattr(self.vision_config, name, value)

    return property(read, write, doc=f"The vision tower's ``{name}``.")


for _name in PLAN_FIELDS:
    setattr(TokenPruneCLIPConfig, _name, _vision_field(_name))

TokenPruneCLIPVisionConfig.register_for_auto_class()
TokenPruneCLIPConfig.register_for_auto_class()

__all__ = ["TokenPruneCLIPConfig", "TokenPruneCLIPVisionConfig"]
