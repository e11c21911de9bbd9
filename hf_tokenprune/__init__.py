"""hf_tokenprune: faster Vision Transformers for Hugging Face transformers, by spending less on tokens that carry
little (token skipping, pruning, merging) and on attention that repeats itself (attention reuse)."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForZeroShotImageClassification,
)

from .models.configuration_tokenprune_clip import TokenPruneCLIPConfig, TokenPruneCLIPVisionConfig
from .models.configuration_tokenprune_deit import TokenPruneDeiTConfig
from .models.configuration_tokenprune_dinov2 import TokenPruneDinov2Config, TokenPruneDinov2WithRegistersConfig
from .models.configuration_tokenprune_siglip import TokenPruneSiglipVisionConfig
from .models.configuration_tokenprune_vit import TokenPruneViTConfig
from .models.modeling_tokenprune_clip import (
    TokenPruneCLIPModel,
    TokenPruneCLIPVisionModel,
    TokenPruneCLIPVisionModelWithProjection,
)
from .models.modeling_tokenprune_deit import TokenPruneDeiTForImageClassificationWithTeacher, TokenPruneDeiTModel
from .models.modeling_tokenprune_dinov2 import (
    TokenPruneDinov2ForImageClassification,
    TokenPruneDinov2Model,
    TokenPruneDinov2WithRegistersForImageClassification,
    TokenPruneDinov2WithRegistersModel,
)
from .models.modeling_tokenprune_siglip import TokenPruneSiglipVisionModel
from .models.modeling_tokenprune_vit import (
    TokenPruneViTForImageClassification,
    TokenPruneViTImageClassifierOutput,
    TokenPruneViTModel,
    TokenPruneViTModelOutput,
)
from .models.token_reduction import REDUCTION_METHODS, TokenReduction, register_reduction

__version__ = "0.1.0"

# An installed package needs no remote code: the Auto classes know our model types.
FAMILY_CLASSES = (
    (TokenPruneViTConfig, TokenPruneViTModel, TokenPruneViTForImageClassification),
    (TokenPruneDeiTConfig, TokenPruneDeiTModel, TokenPruneDeiTForImageClassificationWithTeacher),
    (TokenPruneDinov2Config, TokenPruneDinov2Model, TokenPruneDinov2ForImageClassification),
    (
        TokenPruneDinov2WithRegistersConfig,
        TokenPruneDinov2WithRegistersModel,
        TokenPruneDinov2WithRegistersForImageClassification,
    ),
)
for _config, _model, _classifier in FAMILY_CLASSES:
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForImageClassification.register(_config, _classifier, exist_ok=True)
AutoConfig.register(TokenPruneCLIPVisionConfig.model_type, TokenPruneCLIPVisionConfig, exist_ok=True)
AutoModel.register(TokenPruneCLIPVisionConfig, TokenPruneCLIPVisionModel, exist_ok=True)
AutoConfig.register(TokenPruneSiglipVisionConfig.model_type, TokenPruneSiglipVisionConfig, exist_ok=True)
AutoModel.register(TokenPruneSiglipVisionConfig, TokenPruneSiglipVisionModel, exist_ok=True)
AutoConfig.register(TokenPruneCLIPConfig.model_type, TokenPruneCLIPConfig, exist_ok=True)
AutoModel.register(TokenPruneCLIPConfig, TokenPruneCLIPModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(TokenPruneCLIPConfig, TokenPruneCLIPModel, exist_ok=True)

# What the benchmark pairs per family: (stock config, stock model) names in transformers, and our model class.
FAMILY_BENCHMARK_CLASSES = {
    TokenPruneViTConfig.model_type: ("ViTConfig", "ViTForImageClassification", TokenPruneViTForImageClassification),
    TokenPruneDeiTConfig.model_type: (
        "DeiTConfig",
        "DeiTForImageClassificationWithTeacher",
        TokenPruneDeiTForImageClassificationWithTeacher,
    ),
    TokenPruneDinov2Config.model_type: (
        "Dinov2Config",
        "Dinov2ForImageClassification",
        TokenPruneDinov2ForImageClassification,
    ),
    TokenPruneDinov2WithRegistersConfig.model_type: (
        "Dinov2WithRegistersConfig",
        "Dinov2WithRegistersForImageClassification",
        TokenPruneDinov2WithRegistersForImageClassification,
    ),
    TokenPruneCLIPVisionConfig.model_type: (
        "CLIPVisionConfig",
        "CLIPVisionModelWithProjection",
        TokenPruneCLIPVisionModelWithProjection,
    ),
    TokenPruneSiglipVisionConfig.model_type: ("SiglipVisionConfig", "SiglipVisionModel", TokenPruneSiglipVisionModel),
}

from . import hub as _hub  # noqa: E402

# model.push_to_hub and Trainer.push_to_hub of TokenPruneViT models upload hf_tokenprune's model card.
_hub.install()

__all__ = [
    "REDUCTION_METHODS",
    "TokenPruneCLIPConfig",
    "TokenPruneCLIPModel",
    "TokenPruneCLIPVisionConfig",
    "TokenPruneCLIPVisionModel",
    "TokenPruneCLIPVisionModelWithProjection",
    "TokenPruneDeiTConfig",
    "TokenPruneDeiTForImageClassificationWithTeacher",
    "TokenPruneDeiTModel",
    "TokenPruneDinov2Config",
    "TokenPruneDinov2ForImageClassification",
    "TokenPruneDinov2Model",
    "TokenPruneDinov2WithRegistersConfig",
    "TokenPruneDinov2WithRegistersForImageClassification",
    "TokenPruneDinov2WithRegistersModel",
    "TokenPruneSiglipVisionConfig",
    "TokenPruneSiglipVisionModel",
    "TokenPruneViTConfig",
    "TokenPruneViTForImageClassification",
    "TokenPruneViTImageClassifierOutput",
    "TokenPruneViTModel",
    "TokenPruneViTModelOutput",
    "TokenReduction",
    "register_reduction",
]
