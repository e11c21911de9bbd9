"""Shared tiny models and the per-method test matrix.

The matrix comes from the method registry: every registered method is tested at its headline operating point
(``headline_plan``) and at its keep-all plan (``keep_all_plan``), as its class declares them, so a new method is
tested by registering it. A throwaway method and a throwaway family defined outside the package
(``tests/extensions/``) are registered here, so the method and family matrices run on them too.
"""

import os

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from extensions import random_keep, vit_msn_family  # noqa: E402,F401  (registers the throwaway method)

import hf_tokenprune  # noqa: E402
from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForImageClassification  # noqa: E402
from hf_tokenprune.families import register_family  # noqa: E402

register_family(vit_msn_family.ROW)
hf_tokenprune.register()  # its Auto classes too

# Tiny ViT: 32x32 images, 4x4 patches (64 patches), 4 layers, odd MLP width.
TINY = dict(
    image_size=32,
    patch_size=4,
    hidden_size=48,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=75,
    num_labels=5,
)
METHODS = dict(sorted(hf_tokenprune.REDUCTION_METHODS.items()))
BUILT_IN = {name for name, cls in METHODS.items() if cls.__module__.startswith("hf_tokenprune.")}

# A plan that really removes tokens, per method: its headline operating point (4-layer model).
REDUCING_PLANS = {name: {"method": name, **cls.headline_plan} for name, cls in METHODS.items()}

# The same methods with nothing removed: must reproduce stock ViT.
KEEP_ALL_PLANS = {name: {"method": name, **cls.keep_all_plan} for name, cls in METHODS.items()}

# More variants that must also behave (counts, restore, compile).
VARIANT_PLANS = {
    "evit-drop": {"method": "evit", "layers": [0, 2], "keep_rate": 0.5, "fuse": False},
    "skipvit-rejoin-at-end": {"method": "skipvit", "drop_layer": 2, "rejoin_layer": 4, "keep_rate": 0.4},
    "evo_vit-representative": {
        "method": "evo_vit",
        "layers": [1, 3],
        "keep_rate": 0.5,
        "placeholder_update": "representative",
    },
    "evo_vit-none": {"method": "evo_vit", "stages": [[1, 3]], "keep_rate": 0.3, "placeholder_update": "none"},
    "tome-ramp": {"method": "tome", "r": (8, 0.5)},
    "tome-list": {"method": "tome", "r": [10, 0, 6, 4], "proportional_attention": False},
    "evo_vit-two-heads": {"method": "evo_vit", "layers": [2], "keep_rate": 0.5, "two_heads": True},
    "cropr-no-fusion": {"method": "cropr", "tokens_per_layer": [10, 8, 6], "last_layer_fusion": False},
    "cropr-projected": {"method": "cropr", "tokens_per_layer": 8, "scorer": "projected", "last_layer_fusion": False},
}
# Attention reuse alone and combined with a reduction that starts after the reused layers.
REUSE_PLANS = {
    "skipat": {"attention_reuse": {"method": "skipat", "layers": [1, 2]}},
    "skipat+evit": {
        "attention_reuse": {"method": "skipat", "layers": [1]},
        "token_reduction": {"method": "evit", "layers": [2, 3], "keep_rate": 0.5},
    },
    "skipat+tome": {
        "attention_reuse": {"method": "skipat", "layers": [1, 2]},
        "token_reduction": {"method": "tome", "r": [0, 0, 0, 10]},
    },
}

ALL_REDUCING = {**REDUCING_PLANS, **VARIANT_PLANS}


def tiny_config(**overrides) -> TokenPruneViTConfig:
    return TokenPruneViTConfig(**{**TINY, **overrides})


@pytest.fixture(scope="session")
def stock_model() -> ViTForImageClassification:
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(**TINY)).eval()


@pytest.fixture(scope="session")
def pixels() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def pruned_model(stock: ViTForImageClassification, **config) -> TokenPruneViTForImageClassification:
    """A TokenPruneViT with the stock model's weights (new parameters seeded, so two calls agree)."""
    torch.manual_seed(0)
    model = TokenPruneViTForImageClassification(tiny_config(**config)).eval()
    missing, unexpected = model.load_state_dict(stock.state_dict(), strict=False)
    new = {name for name, _ in model.named_parameters()} - set(stock.state_dict())
    assert set(missing) == new and not unexpected
    return model


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine run much faster on one thread (no OpenMP spin-waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The CLI's --threads sets torch's thread count for the whole process: restore it after each test, so that
    later tests (and the subprocesses they compare with, which start with the default) compute with the same count."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
