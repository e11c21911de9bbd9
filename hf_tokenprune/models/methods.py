# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""The built-in methods, imported in this one place so that every one of them registers itself: the config and
modeling files import this file, and ``save_pretrained`` copies every file it imports, so the registries are
complete inside a checkpoint too. A new built-in method is one file next to this one and one line here.

Part of the remote-code island: it imports only its siblings.
"""

from .attention_reuse import ATTENTION_REUSE_METHODS, SkipAtPhi, get_reuse_class
from .reduction_cropr import CroprReduction
from .reduction_dynamicvit import DynamicViTReduction
from .reduction_evit import EViTReduction
from .reduction_evo_vit import EvoViTReduction
from .reduction_skipvit import SkipViTReduction
from .reduction_supervit import SuperViTReduction
from .reduction_tome import ToMeReduction
from .token_reduction import REDUCTION_METHODS, get_reduction_class

BUILT_IN_REDUCTIONS = (
    CroprReduction,
    DynamicViTReduction,
    EViTReduction,
    EvoViTReduction,
    SkipViTReduction,
    SuperViTReduction,
    ToMeReduction,
)
BUILT_IN_REUSE = (SkipAtPhi,)

__all__ = [
    "ATTENTION_REUSE_METHODS",
    "BUILT_IN_REDUCTIONS",
    "BUILT_IN_REUSE",
    "REDUCTION_METHODS",
    "get_reduction_class",
    "get_reuse_class",
]
