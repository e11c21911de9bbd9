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

_CONFIGS = "models.configuration_tokenprune_"
_MODELS = "models.modeling_tokenprune_"
_PUBLIC = {
    "TokenPruneViTConfig": _CONFIGS + "vit",
    "TokenPruneViTForImageClassification": _MODELS + "vit",
    "TokenPruneViTImageClassifierOutput": _MODELS + "vit",
    "TokenPruneViTModel": _MODELS + "vit",
    "TokenPruneViTModelOutput": _MODELS + "vit",
    "TokenPruneViTBackbone": _MODELS + "vit_dense",
    "TokenPruneViTForSemanticSegmentation": _MODELS + "vit_dense",
    "TokenPruneViTSemanticSegmenterOutput": _MODELS + "vit_dense",
    "TokenPruneDeiTConfig": _CONFIGS + "deit",
    "TokenPruneDeiTModel": _MODELS + "deit",
    "TokenPruneDeiTForImageClassificationWithTeacher": _MODELS + "deit",
    "TokenPruneDinov2Config": _CONFIGS + "dinov2",
    "TokenPruneDinov2WithRegistersConfig": _CONFIGS + "dinov2",
    "TokenPruneDinov2Model": _MODELS + "dinov2",
    "TokenPruneDinov2ForImageClassification": _MODELS + "dinov2",
    "TokenPruneDinov2WithRegistersModel": _MODELS + "dinov2",
    "TokenPruneDinov2WithRegistersForImageClassification": _MODELS + "dinov2",
    "TokenPruneCLIPConfig": _CONFIGS + "clip",
    "TokenPruneCLIPVisionConfig": _CONFIGS + "clip",
    "TokenPruneCLIPModel": _MODELS + "clip",
    "TokenPruneCLIPVisionModel": _MODELS + "clip",
    "TokenPruneCLIPVisionModelWithProjection": _MODELS + "clip",
    "TokenPruneSiglipVisionConfig": _CONFIGS + "siglip",
    "TokenPruneSiglipVisionModel": _MODELS + "siglip",
    "TokenPruneSiglip2VisionConfig": _CONFIGS + "siglip2",
    "TokenPruneSiglip2VisionModel": _MODELS + "siglip2",
    "REDUCTION_METHODS": "models.token_reduction",
    "TokenReduction": "models.token_reduction",
    "register_reduction": "models.token_reduction",
}
# What each config class serves through transformers' Auto classes (an installed package needs no remote code).
_AUTO_CLASSES = {
    "TokenPruneViTConfig": {
        "AutoModel": "TokenPruneViTModel",
        "AutoModelForImageClassification": "TokenPruneViTForImageClassification",
        "AutoModelForSemanticSegmentation": "TokenPruneViTForSemanticSegmentation",
        "AutoBackbone": "TokenPruneViTBackbone",
    },
    "TokenPruneDeiTConfig": {
        "AutoModel": "TokenPruneDeiTModel",
        "AutoModelForImageClassification": "TokenPruneDeiTForImageClassificationWithTeacher",
    },
    "TokenPruneDinov2Config": {
        "AutoModel": "TokenPruneDinov2Model",
        "AutoModelForImageClassification": "TokenPruneDinov2ForImageClassification",
    },
    "TokenPruneDinov2WithRegistersConfig": {
        "AutoModel": "TokenPruneDinov2WithRegistersModel",
        "AutoModelForImageClassification": "TokenPruneDinov2WithRegistersForImageClassification",
    },
    "TokenPruneCLIPVisionConfig": {"AutoModel": "TokenPruneCLIPVisionModel"},
    "TokenPruneSiglipVisionConfig": {"AutoModel": "TokenPruneSiglipVisionModel"},
    "TokenPruneSiglip2VisionConfig": {"AutoModel": "TokenPruneSiglip2VisionModel"},
    "TokenPruneCLIPConfig": {
        "AutoModel": "TokenPruneCLIPModel",
        "AutoModelForZeroShotImageClassification": "TokenPruneCLIPModel",
    },
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
    *sorted({f"{__name__}.{module}" for module in _PUBLIC.values() if module != "models.token_reduction"}),
)
_registered = False


def register() -> None:
    """Registers every TokenPrune config with AutoConfig and its models with the Auto classes of `_AUTO_CLASSES`,
    and installs the Hub hooks (`hf_tokenprune.hub.install`). Idempotent; runs by itself when it is needed."""
    global _registered
    if _registered:
        return
    _registered = True
    for finder in [f for f in sys.meta_path if isinstance(f, _RegisterOnImport)]:
        sys.meta_path.remove(finder)
    import transformers

    from . import hub

    for config_name, autos in _AUTO_CLASSES.items():
        config = _load(config_name)
        transformers.AutoConfig.register(config.model_type, config, exist_ok=True)
        for auto, model_name in autos.items():
            getattr(transformers, auto).register(config, _load(model_name), exist_ok=True)
    hub.install()  # model.push_to_hub and Trainer.push_to_hub of TokenPrune models upload our model card


def _load(name: str):
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)


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
    return _load(name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = sorted(_PUBLIC)
