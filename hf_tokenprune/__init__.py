"""hf_tokenprune: faster Vision Transformers for Hugging Face transformers, by spending less on tokens that carry
little (token skipping, pruning, merging) and on attention that repeats itself (attention reuse).

Importing the package is cheap (``hf-tokenprune --help`` needs neither torch nor transformers): the public names
load on first use, and the Auto classes learn our model type as soon as transformers' Auto modules are imported
(or a public name is used), so ``AutoModelForImageClassification.from_pretrained(folder)`` needs no remote code.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_PUBLIC = {
    "TokenPruneViTConfig": "models.configuration_tokenprune_vit",
    "TokenPruneViTForImageClassification": "models.modeling_tokenprune_vit",
    "TokenPruneViTImageClassifierOutput": "models.modeling_tokenprune_vit",
    "TokenPruneViTModel": "models.modeling_tokenprune_vit",
    "TokenPruneViTModelOutput": "models.modeling_tokenprune_vit",
    "TokenPruneViTBackbone": "models.modeling_tokenprune_vit_dense",
    "TokenPruneViTForSemanticSegmentation": "models.modeling_tokenprune_vit_dense",
    "TokenPruneViTSemanticSegmenterOutput": "models.modeling_tokenprune_vit_dense",
    "REDUCTION_METHODS": "models.token_reduction",
    "TokenReduction": "models.token_reduction",
    "register_reduction": "models.token_reduction",
}
# Once one of these has been imported, our classes are registered with the Auto classes (and push_to_hub routed
# through our card), as soon as no module of torch, transformers or this package is half-way through its import.
_TRIGGERS = (
    "transformers.models.auto.configuration_auto",
    "transformers.models.auto.auto_factory",
    "transformers.models.auto.modeling_auto",
    "transformers.modeling_utils",
    "transformers.pipelines",
    "transformers.trainer",
    f"{__name__}.models.configuration_tokenprune_vit",
    f"{__name__}.models.modeling_tokenprune_vit",
)
_registered = False


def register() -> None:
    """Registers TokenPruneViT with AutoConfig, AutoModel, AutoModelForImageClassification,
    AutoModelForSemanticSegmentation and AutoBackbone, and installs the Hub hooks (`hf_tokenprune.hub.install`).
    Idempotent; runs by itself when it is needed."""
    global _registered
    if _registered:
        return
    _registered = True
    for finder in [f for f in sys.meta_path if isinstance(f, _RegisterOnImport)]:
        sys.meta_path.remove(finder)
    from transformers import (
        AutoBackbone,
        AutoConfig,
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForSemanticSegmentation,
    )

    from . import hub
    from .models.configuration_tokenprune_vit import TokenPruneViTConfig
    from .models.modeling_tokenprune_vit import TokenPruneViTForImageClassification, TokenPruneViTModel
    from .models.modeling_tokenprune_vit_dense import TokenPruneViTBackbone, TokenPruneViTForSemanticSegmentation

    AutoConfig.register(TokenPruneViTConfig.model_type, TokenPruneViTConfig, exist_ok=True)
    AutoModel.register(TokenPruneViTConfig, TokenPruneViTModel, exist_ok=True)
    AutoModelForImageClassification.register(TokenPruneViTConfig, TokenPruneViTForImageClassification, exist_ok=True)
    AutoModelForSemanticSegmentation.register(TokenPruneViTConfig, TokenPruneViTForSemanticSegmentation, exist_ok=True)
    AutoBackbone.register(TokenPruneViTConfig, TokenPruneViTBackbone, exist_ok=True)
    hub.install()  # model.push_to_hub and Trainer.push_to_hub of TokenPruneViT models upload our model card


def _importing() -> bool:
    """Whether a module of torch, transformers or this package (but the package itself) is still being imported:
    registering then would import them again half-made."""
    for name, module in list(sys.modules.items()):
        if name != __name__ and name.partition(".")[0] in ("torch", "transformers", __name__):
            if getattr(getattr(module, "__spec__", None), "_initializing", False):
                return True
    return False


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Calls `register` after one of `_TRIGGERS` has been imported, when no import is half-way."""

    def find_spec(self, name, path, target=None):
        if name not in _TRIGGERS or _registered:
            return None
        for finder in sys.meta_path:  # the real finders locate the module
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            load = spec.loader.exec_module

            def exec_module(module):
                load(module)
                module.__spec__._initializing = False  # this one is done
                if not _importing():
                    register()

            spec.loader.exec_module = exec_module
        return spec


if any(name in sys.modules for name in _TRIGGERS) and not _importing():
    register()
else:
    sys.meta_path.insert(0, _RegisterOnImport())


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    register()
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = sorted(_PUBLIC)
