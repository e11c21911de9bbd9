"""hf_tokenprune: faster Vision Transformers for Hugging Face transformers, by spending less on tokens that carry
little (token skipping, pruning, merging) and on attention that repeats itself (attention reuse)."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .models.configuration_tokenprune_deit import TokenPruneDeiTConfig
from .models.configuration_tokenprune_vit import TokenPruneViTConfig
from .models.modeling_tokenprune_deit import TokenPruneDeiTForImageClassificationWithTeacher, TokenPruneDeiTModel
from .models.modeling_tokenprune_vit import (
    TokenPruneViTForImageClassification,
    TokenPruneViTImageClassifierOutput,
    TokenPruneViTModel,
    TokenPruneViTModelOutput,
)
from .models.token_reduction import REDUCTION_METHODS, TokenReduction, register_reduction

__version__ = "0.1.0"

# An installed package needs no remote code: the Auto classes know our model type.
AutoConfig.register(TokenPruneViTConfig.model_type, TokenPruneViTConfig, exist_ok=True)
AutoModel.register(TokenPruneViTConfig, TokenPruneViTModel, exist_ok=True)
AutoModelForImageClassification.register(TokenPruneViTConfig, TokenPruneViTForImageClassification, exist_ok=True)
AutoConfig.register(TokenPruneDeiTConfig.model_type, TokenPruneDeiTConfig, exist_ok=True)
AutoModel.register(TokenPruneDeiTConfig, TokenPruneDeiTModel, exist_ok=True)
AutoModelForImageClassification.register(
    TokenPruneDeiTConfig, TokenPruneDeiTForImageClassificationWithTeacher, exist_ok=True
)

from . import hub as _hub  # noqa: E402

# model.push_to_hub and Trainer.push_to_hub of TokenPruneViT models upload hf_tokenprune's model card.
_hub.install()

__all__ = [
    "REDUCTION_METHODS",
    "TokenPruneDeiTConfig",
    "TokenPruneDeiTForImageClassificationWithTeacher",
    "TokenPruneDeiTModel",
    "TokenPruneViTConfig",
    "TokenPruneViTForImageClassification",
    "TokenPruneViTImageClassifierOutput",
    "TokenPruneViTModel",
    "TokenPruneViTModelOutput",
    "TokenReduction",
    "register_reduction",
]
