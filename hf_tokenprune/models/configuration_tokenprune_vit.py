"""TokenPruneViTConfig: a ViTConfig with a token-reduction plan and an attention-reuse plan."""

import copy
from typing import Any

from transformers import ViTConfig
from transformers.backbone_utils import BackboneConfigMixin

from .attention_reuse import ATTENTION_REUSE_METHODS, check_attention_reuse
from .reduction_cropr import CroprReduction  # noqa: F401  (every built-in method is imported, so it registers)
from .reduction_dynamicvit import DynamicViTReduction  # noqa: F401
from .reduction_evit import EViTReduction  # noqa: F401
from .reduction_evo_vit import EvoViTReduction  # noqa: F401
from .reduction_skipvit import SkipViTReduction  # noqa: F401
from .reduction_supervit import SuperViTReduction  # noqa: F401
from .reduction_tome import ToMeReduction  # noqa: F401
from .token_reduction import REDUCTION_METHODS, get_reduction_class, grid_of

PLAN_FIELDS = ("token_reduction", "attention_reuse", "restore_tokens")
STOCK_MODEL_TYPE = "vit"  # checkpoints whose weights load into TokenPruneViT as they are


class TokenPruneViTConfig(BackboneConfigMixin, ViTConfig):
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
        out_features / out_indices (`list`, *optional*):
            The layers `TokenPruneViTBackbone` returns as feature maps, as for transformers' backbones: stage names
            `"stem"` (the embeddings, index 0) and `"stage1"` ... `"stageN"` (after layer N). Default: the last.
    """

    model_type = "tokenprune_vit"
    # Bookkeeping outputs (Python ints and ragged tensors) that Trainer.evaluate must not gather as logits.
    keys_to_ignore_at_inference = [
        "token_counts",
        "token_positions",
        "token_owner",
        "patch_grid",
        "aux_logits",
        "aux_loss",
        "layer_states",
    ]

    token_reduction: dict | None = None
    attention_reuse: dict | None = None
    restore_tokens: bool = False
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)

    @property
    def stage_names(self) -> list[str]:
        """Backbone stages: the embeddings ("stem") and the output of every layer."""
        return ["stem"] + [f"stage{index}" for index in range(1, self.num_hidden_layers + 1)]

    def __setattr__(self, key: str, value: Any) -> None:
        # Plans are checked whenever they are set: at construction and when transformers applies
        # `from_pretrained` keywords after construction.
        if key in PLAN_FIELDS:
            value = self._checked_plan(key, value)
        super().__setattr__(key, value)
        if key in ("token_reduction", "attention_reuse") and "attention_reuse" in self.__dict__:
            self._check_reuse_with_reduction()

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """Reads a stock ViT config (google/vit-*, and facebook/deit-* which are stored as ViT) as ours."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type not in (STOCK_MODEL_TYPE, cls.model_type):
            deit = " (transformers' DeiT classes add a distillation token, which TokenPruneViT has not)"
            raise ValueError(
                f"{pretrained_model_name_or_path} is a {model_type!r} checkpoint; TokenPruneViT loads "
                f"{STOCK_MODEL_TYPE!r} checkpoints, such as google/vit-* and facebook/deit-*-patch16-224, and its own "
                f"({cls.model_type!r}){deit if model_type == 'deit' else ''}."
            )
        config_dict["model_type"] = cls.model_type
        return config_dict, kwargs

    @property
    def patch_grid(self) -> tuple[int, int]:
        return grid_of(self.image_size, self.patch_size)

    @property
    def num_patches(self) -> int:
        rows, columns = self.patch_grid
        return rows * columns

    def _checked_plan(self, key: str, value: Any) -> Any:
        if key == "restore_tokens":
            if not isinstance(value, bool):
                raise ValueError(f"restore_tokens = {value!r} must be true or false.")
            return value
        if key == "attention_reuse":
            return check_attention_reuse(copy.deepcopy(value), self)
        if value is None:
            return None
        if not isinstance(value, dict) or "method" not in value:
            raise ValueError(
                f"token_reduction = {value!r} must be None or a dict with a 'method' key; "
                f"allowed methods: {sorted(REDUCTION_METHODS)}."
            )
        method = get_reduction_class(value["method"])
        return method.check_plan(copy.deepcopy(value), self)

    def _check_reuse_with_reduction(self) -> None:
        """Rejects plans that combine attention reuse and token reduction in a way the model cannot run."""
        if self.token_reduction is None or self.attention_reuse is None:
            return
        reuse = ATTENTION_REUSE_METHODS[self.attention_reuse["method"]]
        reduction = get_reduction_class(self.token_reduction["method"])
        reuse.check_with_reduction(self.attention_reuse, self.token_reduction, reduction, self)

    def token_counts(self, keep_rate: float | None = None, image_size: Any = None) -> list[tuple[int, int]]:
        """(tokens entering the attention, tokens entering the MLP) of every layer for this plan, CLS included."""
        rows, columns = grid_of(image_size, self.patch_size) if image_size is not None else self.patch_grid
        if self.token_reduction is None:
            return [(rows * columns + 1, rows * columns + 1)] * self.num_hidden_layers
        method = get_reduction_class(self.token_reduction["method"])
        return method.token_counts(self.token_reduction, self.num_hidden_layers, rows * columns, keep_rate)


TokenPruneViTConfig.register_for_auto_class()

__all__ = ["TokenPruneViTConfig"]
