"""Reference fixtures from the official implementations (for maintainers; the tests never run this script).

For one method, this script imports the official model code from a checkout of its repository, builds the official
model on small, fixed, *sharpened* random weights (attention is peaky and the selections decisive, so float error
cannot flip a choice), runs fixed inputs in float64 and float32, and writes ``tests/fixtures/<name>.safetensors``
per operating point: the weights under HF ViT names, the inputs, the official logits (float64 and float32) and what
the official code kept (embedding positions of the kept patch tokens per pruning layer) or merged (ToMe: which
output token holds each input token, per layer). For DynamicViT it also writes one training step of the official
recipe (``tests/fixtures/training/``: the loss terms, the Gumbel decisions and the predictors' gradients). Nothing of
the official code is copied into this repository.

The official code needs an old timm and a few packages this project does not use; a separate environment works:

    python3 -m venv /work/venv-ref
    echo /work/venv/lib/python3.11/site-packages > /work/venv-ref/lib/python3.11/site-packages/base.pth  # torch
    /work/venv-ref/bin/pip install --no-deps timm==0.6.13
    git clone https://github.com/facebookresearch/ToMe /work/ref/ToMe   # and the others: see REPOSITORIES
    /work/venv-ref/bin/python scripts/make_reference_fixtures.py tome /work/ref/ToMe
    /work/venv-ref/bin/python scripts/make_reference_fixtures.py evit /work/ref/evit
    /work/venv-ref/bin/python scripts/make_reference_fixtures.py dynamicvit /work/ref/DynamicViT
    /work/venv-ref/bin/python scripts/make_reference_fixtures.py supervit /work/ref/SuperViT
    /work/venv-ref/bin/python scripts/make_reference_fixtures.py evo_vit /work/ref/Evo-ViT
    # Cropr's code needs timm 1.x: the same kind of environment with timm==1.0.15 (here /work/venv-ref2)
    /work/venv-ref2/bin/python scripts/make_reference_fixtures.py cropr /work/ref/cropr
    # SkipAt's code needs timm 0.5 and einops: /work/venv-ref3 with timm==0.5.4 and einops
    /work/venv-ref3/bin/python scripts/make_reference_fixtures.py skipat /work/ref/skip-attention

torchvision, torchprofile and the like are replaced by stand-in modules (the models never call them).
"""

import argparse
import collections.abc
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's hf_tokenprune (the converter)
from safetensors.torch import save_file

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
# A small ViT: 56x56 images in 4x4 patches = 14x14 patch tokens (DynamicViT's official code assumes 14x14).
MODEL = dict(
    image_size=56, patch_size=4, hidden_size=16, num_hidden_layers=12, num_attention_heads=2, intermediate_size=32,
    num_labels=5, layer_norm_eps=1e-6, qkv_bias=True, hidden_act="gelu",
)  # fmt: skip
TIMM_MODEL = dict(img_size=56, patch_size=4, embed_dim=16, depth=12, num_heads=2, mlp_ratio=2.0, num_classes=5)
STAND_INS = {"torchvision", "torchprofile", "einops", "fvcore", "thop", "tensorboardX", "wandb", "submitit"}


# ----------------------------------------------------------------------------------------------------------------
# Stand-ins for packages the official files import but never use here
# ----------------------------------------------------------------------------------------------------------------


class _AnyAttribute(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"


class _AnyModule(types.ModuleType):
    """A module in which every attribute exists (a placeholder class)."""

    __path__: list = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _AnyAttribute(name, (), {"__init__": lambda self, *args, **kwargs: None})
        setattr(self, name, value)
        return value


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        root = name.split(".")[0]
        if root in STAND_INS and importlib.machinery.PathFinder.find_spec(root) is None:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)  # only where it is not installed
        return None

    def create_module(self, spec):
        return _AnyModule(spec.name)

    def exec_module(self, module):
        pass


# ----------------------------------------------------------------------------------------------------------------
# Weights: sharpened random values, mapped from timm names to HF ViT names
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def sharpen(model: torch.nn.Module, seed: int) -> None:
    """Fixed random weights that make attention peaky and scores decisive (query/key weights 3x a unit scale)."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        noise = torch.randn(parameter.shape, generator=generator)
        if "norm" in name or "in_conv.0" in name:  # LayerNorms: around (1, 0)
            parameter.copy_((1.0 + 0.1 * noise) if name.endswith("weight") else 0.1 * noise)
        elif name.endswith(("qkv.weight", "qk.weight")):
            fan_in = parameter.shape[1]
            scale = torch.ones(parameter.shape[0], 1)
            scale[: 2 * fan_in] = 3.0  # queries and keys
            parameter.copy_(noise * scale / fan_in**0.5)
        elif parameter.dim() > 1:
            parameter.copy_(noise / parameter[0].numel() ** 0.5)
        elif "cls_token" in name or "pos_embed" in name:
            parameter.copy_(0.5 * noise)
        else:
            parameter.copy_(0.1 * noise)
    model.head.weight.mul_(0.1)  # small logits: float32 rounding of the deep features stays below 1e-5 in them
    for name, parameter in model.named_parameters():
        if "cls_token" in name or "pos_embed" in name:
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))


def hf_weights(state: dict, config: dict) -> dict:
    """The official ``state`` under TokenPruneViT names for ``config`` (HF fields and plans), through the converter
    (`hf_tokenprune.convert.layouts`, the one place that knows the official layouts); every key must be used."""
    from hf_tokenprune import TokenPruneViTConfig
    from hf_tokenprune.convert.layouts import map_weights, not_carried

    weights, unused = map_weights(state, TokenPruneViTConfig(**config))
    unused = [key for key in unused if key not in not_carried(unused, TokenPruneViTConfig(**config))]
    if unused:
        raise RuntimeError(f"the converter left official keys unused: {unused[:4]}")
    return weights


def save_checkpoint(state: dict, path: Path, method: str, plan: dict) -> None:
    """The official model's state saved as the official training scripts save it (DeiT's ``main.py`` and its forks:
    ``{"model": model_without_ddp.state_dict(), "optimizer", "epoch", "args": Namespace, ...}``)."""
    args = argparse.Namespace(model=f"{method}_tiny", input_size=MODEL["image_size"], plan=json.dumps(plan))
    content = {"model": {key: value.detach().clone() for key, value in state.items()}, "optimizer": {"state": {}},
               "epoch": 1, "args": args}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, path)


def inputs(seed: int, side: int | None = None) -> torch.Tensor:
    """Fixed images; at ``side``, resized as SuperViT's official model resizes inside (bilinear, align_corners=True),
    which then leaves them as they are."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, MODEL["image_size"], MODEL["image_size"], generator=generator)
    if side is not None:
        pixels = torch.nn.functional.interpolate(pixels, (side, side), mode="bilinear", align_corners=True)
    return pixels


# ----------------------------------------------------------------------------------------------------------------
# One runner per method: (logits, {layer: kept or owner}) of the official model
# ----------------------------------------------------------------------------------------------------------------


def run_tome(repo: Path, model, pixels: torch.Tensor, r) -> tuple[torch.Tensor, dict]:
    """ToMe's timm patch with source tracing; per layer, which output token holds each input token."""
    owners = {}

    def record(module, args, output, layer):
        source = module._tome_info["source"]  # (B, N_cur, N_in): which input tokens each token holds
        if source is not None:
            owners[layer] = source.argmax(dim=1)  # (B, N_in)

    hooks = [
        block.register_forward_hook(lambda m, a, o, layer=layer: record(m, a, o, layer))
        for layer, block in enumerate(model.blocks)
    ]
    model.r = r
    try:
        with torch.no_grad():
            logits = model(pixels)
    finally:
        for hook in hooks:
            hook.remove()
    return logits, owners


def build_tome(repo: Path):
    sys.path.insert(0, str(repo))
    import timm
    import tome

    model = timm.models.vision_transformer.VisionTransformer(**TIMM_MODEL, qkv_bias=True)
    tome.patch.timm(model, trace_source=True, prop_attn=True)
    return model


def build_evit(repo: Path, keep_rate: float, fuse: bool, layers: list[int]):
    sys.path.insert(0, str(repo))
    import evit

    rates = tuple(keep_rate if layer in layers else 1.0 for layer in range(MODEL["num_hidden_layers"]))
    return evit.EViT(**TIMM_MODEL, keep_rate=rates, fuse_token=fuse)


def run_evit(model, pixels: torch.Tensor, layers: list[int]) -> tuple[torch.Tensor, dict]:
    """EViT's ``get_idx``: per pruning layer, the kept indices among the current non-CLS tokens."""
    with torch.no_grad():
        logits, indices = model(pixels, get_idx=True)
    num_patches = (MODEL["image_size"] // MODEL["patch_size"]) ** 2
    positions = torch.arange(1, 1 + num_patches).expand(pixels.shape[0], -1)  # positions of the non-CLS tokens
    kept = {}
    for layer, index in zip(layers, indices):
        chosen = positions.gather(1, index)  # (B, K)
        kept[layer] = chosen
        made_up = torch.full((pixels.shape[0], 1), -1, dtype=positions.dtype)
        positions = torch.cat([chosen, made_up], dim=1) if model.blocks[layer].fuse_token else chosen
    return logits, kept


def build_dynamicvit(repo: Path, keep_rate: float, layers: list[int]):
    sys.path.insert(0, str(repo))
    from models import dyvit

    ratios = [keep_rate ** (stage + 1) for stage in range(len(layers))]
    return dyvit.VisionTransformerDiffPruning(**TIMM_MODEL, qkv_bias=True, pruning_loc=layers, token_ratio=ratios)


def run_dynamicvit(model, pixels: torch.Tensor, layers: list[int]) -> tuple[torch.Tensor, dict]:
    """Records the official ``batch_index_select`` on the hidden states: the kept tokens of each stage."""
    from models import dyvit

    selections, original = [], dyvit.batch_index_select

    def record(x, index):
        if x.shape[-1] != 1:  # the hidden states, not the decision mask
            selections.append(index)
        return original(x, index)

    dyvit.batch_index_select = record
    try:
        with torch.no_grad():
            logits = model(pixels)
    finally:
        dyvit.batch_index_select = original
    positions = torch.arange(1 + (MODEL["image_size"] // MODEL["patch_size"]) ** 2).expand(pixels.shape[0], -1)
    kept = {}
    for layer, index in zip(layers, selections):
        positions = positions.gather(1, index)  # index includes CLS at 0
        kept[layer] = positions[:, 1:]
    return logits, kept


def load_file(path: Path, name: str):
    """Imports one official file by path (its repository may vendor an old timm we must not import)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def recording(module, function: str, keep):
    """Wraps ``module.function`` so that every call's index argument is kept when ``keep(x)`` is true."""
    calls, original = [], getattr(module, function)

    def wrapper(x, index):
        if keep(x):
            calls.append(index)
        return original(x, index)

    setattr(module, function, wrapper)
    return calls, lambda: setattr(module, function, original)


def build_supervit(repo: Path, side: int):
    """The official model with a position table for ``side`` and one for the full resolution."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # its Block calls .cuda() on an index; run on the CPU
    super_deit = load_file(repo / "deit" / "super_deit.py", "super_deit")
    config = {k: v for k, v in TIMM_MODEL.items() if k != "img_size"}
    sides = sorted({side, TIMM_MODEL["img_size"]})
    return super_deit.VisionTransformer(img_size_list=sides, qkv_bias=True, **config)


def run_supervit(model, pixels: torch.Tensor, keep_rate: float, layers: list[int], side: int):
    """SuperViT at (``side``, ``keep_rate``): the official model resizes the input to ``side`` (bilinear,
    align_corners=True), adds that side's position table, and blocks 3, 6, 9 keep ``ceil(rate * (N + 1))``."""
    module = sys.modules["super_deit"]
    calls, restore = recording(module, "batch_index_select", lambda x: x.dim() == 3)
    try:
        with torch.no_grad():
            logits = model(pixels, img_size=side, keep_ratio=keep_rate)
    finally:
        restore()
    return logits, _compose(calls, layers, pixels.shape[0], with_cls=True, count=(side // MODEL["patch_size"]) ** 2)


def _compose(calls: list, layers: list[int], batch: int, with_cls: bool, count: int | None = None) -> dict:
    """Embedding positions of the kept patch tokens after each recorded selection (indices into the current
    sequence, CLS included when ``with_cls``); ``count`` patches (default: the full resolution's)."""
    count = count or (MODEL["image_size"] // MODEL["patch_size"]) ** 2
    positions = torch.arange(0 if with_cls else 1, 1 + count).expand(batch, -1)
    kept = {}
    for layer, index in zip(layers, calls):
        positions = positions.gather(1, index)
        kept[layer] = positions[:, 1:] if with_cls else positions
    return kept


def build_evo_vit(repo: Path, plan: dict):
    """The official model with ``prune_ratio`` and ``tradeoff`` per layer from the plan (the released models: 0.5)."""
    evo_deit = load_file(repo / "deit" / "evo_deit.py", "evo_deit")
    depth = MODEL["num_hidden_layers"]
    momentum = plan.get("attention_momentum", 0.5)
    tradeoff = momentum if isinstance(momentum, list) else [1.0] * 4 + [momentum] * (depth - 4)
    first, second = plan.get("stage_keep_rates") or [plan["keep_rate"]] * 2
    ratio = [1.0] * 4 + [first] * 4 + [second] * (depth - 8)  # read at blocks 4 and 8 (stage_wise_prune)
    config = {k: v for k, v in TIMM_MODEL.items() if k != "img_size"}
    return evo_deit.EvoVisionTransformer(
        img_size=TIMM_MODEL["img_size"], qkv_bias=True, tradeoff=tradeoff, prune_ratio=ratio,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6), **config,
    )  # fmt: skip


def run_evo_vit(model, pixels: torch.Tensor, rates: list[float]) -> tuple[torch.Tensor, dict]:
    """Evo-ViT at inference: at blocks 4 and 8 the patch tokens are re-sorted by global class attention and the first
    ``int(N * rate)`` are informative; they stay informative through the stage."""
    module = sys.modules["evo_deit"]
    calls, restore = recording(module, "easy_gather", lambda x: True)
    try:
        with torch.no_grad():
            logits = model(pixels)
    finally:
        restore()
    count = (MODEL["image_size"] // MODEL["patch_size"]) ** 2
    positions, kept = torch.arange(1, 1 + count).expand(pixels.shape[0], -1), {}
    for start, index, rate in zip((4, 8), calls, rates):
        positions = positions.gather(1, index)  # the official sorts every patch token, placeholders too
        for layer in range(start, start + 4):
            kept[layer] = positions[:, : int(count * rate)]
    return logits, kept


def build_cropr(repo: Path, plan: dict):
    sys.path.insert(0, str(repo / "cls"))  # for its `from cropr import Cropr`
    vision_transformer = load_file(repo / "cls" / "vision_transformer.py", "cropr_vision_transformer")
    fusion = plan.get("last_layer_fusion", True)
    rate = plan["tokens_per_layer"]
    projected = plan.get("scorer") == "official_projected"  # --cropr_pre_attn_norm --cropr_{q,k,v}_proj
    settings = {
        "use_cropr": True,
        "pruning_rate": rate,
        "llf": fusion,
        "num_queries": 1,
        "num_heads": 1,
        "pre_attn_norm": projected,
        "q_proj": projected,
        "k_proj": projected,
        "v_proj": projected,
        "mlp": True,
        "mlp_ratio": 4,
        "training": True,
    }  # fmt: skip  (cls/main.py's defaults)
    config = {k: v for k, v in TIMM_MODEL.items() if k != "mlp_ratio"}
    pool = "avg" if MODEL_FIELDS.get(name_of(plan), {}).get("classifier_pooling") == "mean" else "token"
    return vision_transformer.VisionTransformer(
        settings, **config, mlp_ratio=4.0, global_pool=pool, drop_path_rate=0.0, class_token=True
    )


def run_cropr(model, pixels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Records each Cropr module's choice (CLS first, then the best-scored tokens); stored under the layer whose
    input it is (module ``i`` prunes after block ``i``)."""
    cropr = sys.modules["cropr"]
    calls, original = [], cropr.Cropr.prune

    def prune(module, x, scores):
        calls.append(scores.argsort(dim=1, descending=True)[:, : x.shape[1] - module.pruning_rate])
        return original(module, x, scores)

    cropr.Cropr.prune = prune
    try:
        with torch.no_grad():
            logits = model(pixels)
    finally:
        cropr.Cropr.prune = original
    return logits, _compose(calls, list(range(1, len(calls) + 1)), pixels.shape[0], with_cls=True)


def build_skipat(repo: Path, layers: list[int]):
    sys.path.insert(0, str(repo))  # for its `from model.uformer_utils import LeFF`
    vit_skipat = load_file(repo / "model" / "vit_skipat.py", "vit_skipat")
    return vit_skipat.VisionTransformerSkipAt(**TIMM_MODEL, qkv_bias=True, skip_indices=tuple(layers))


def run_skipat(model, pixels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    with torch.no_grad():
        return model(pixels), {}


# ----------------------------------------------------------------------------------------------------------------
# Operating points and the fixture files
# ----------------------------------------------------------------------------------------------------------------

POINTS = {
    "tome": [("tome_r8", {"method": "tome", "r": 8}), ("tome_ramp", {"method": "tome", "r": (13, -0.5)})],
    "evit": [
        ("evit_fuse", {"method": "evit", "layers": [3, 6, 9], "keep_rate": 0.7, "fuse": True}),
        ("evit_drop", {"method": "evit", "layers": [3, 6, 9], "keep_rate": 0.5, "fuse": False}),
    ],
    "dynamicvit": [
        ("dynamicvit_07", {"method": "dynamicvit", "layers": [3, 6, 9], "keep_rate": 0.7}),
        ("dynamicvit_05", {"method": "dynamicvit", "layers": [3, 6, 9], "keep_rate": 0.5}),
    ],
    "supervit": [
        ("supervit_07", {"method": "supervit", "layers": [3, 6, 9], "keep_rate": 0.7}),
        ("supervit_05", {"method": "supervit", "layers": [3, 6, 9], "keep_rate": 0.5}),
        ("supervit_07_40px", {"method": "supervit", "layers": [3, 6, 9], "keep_rate": 0.7}),  # a smaller resolution
    ],
    "cropr": [
        ("cropr_llf", {"method": "cropr", "tokens_per_layer": 8, "training_heads": False}),
        (
            "cropr_no_llf",
            {"method": "cropr", "tokens_per_layer": 12, "last_layer_fusion": False, "training_heads": False},
        ),
        ("cropr_avg", {"method": "cropr", "tokens_per_layer": 8, "training_heads": False}),  # main.py's 'avg' pool
        (
            "cropr_projected",
            {"method": "cropr", "tokens_per_layer": 8, "scorer": "official_projected", "training_heads": False},
        ),
    ],  # fmt: skip
    "skipat": [
        ("skipat_3_8", {"attention_reuse": {"method": "skipat", "layers": [3, 4, 5, 6, 7, 8]}}),
        ("skipat_2_4", {"attention_reuse": {"method": "skipat", "layers": [2, 3, 4]}}),
    ],
    "evo_vit": [
        ("evo_vit_05", {"method": "evo_vit", "layers": [4, 8], "keep_rate": 0.5, "two_heads": True}),
        ("evo_vit_07", {"method": "evo_vit", "layers": [4, 8], "keep_rate": 0.7, "two_heads": True}),
        (  # a trade-off other than 0.5, where swapping the moving average's two weights shows
            "evo_vit_07_m03",
            {"method": "evo_vit", "layers": [4, 8], "keep_rate": 0.7, "two_heads": True, "attention_momentum": 0.3},
        ),
        (  # a keep ratio per stage and a trade-off per layer (the official prune_ratio and tradeoff lists)
            "evo_vit_stages",
            {
                "method": "evo_vit",
                "layers": [4, 8],
                "keep_rate": 0.7,
                "stage_keep_rates": [0.7, 0.4],
                "attention_momentum": [1.0] * 4 + [0.3, 0.4, 0.5, 0.6, 0.7, 0.3, 0.4, 0.5],
                "two_heads": True,
            },
        ),
    ],
}
REPOSITORIES = {
    "tome": "facebookresearch/ToMe", "evit": "youweiliang/evit", "dynamicvit": "raoyongming/DynamicViT",
    "supervit": "lmbxmu/SuperViT", "evo_vit": "YifanXu74/Evo-ViT", "cropr": "benbergner/cropr",
    "skipat": "Qualcomm-AI-research/skip-attention",
}  # fmt: skip
MODEL_OVERRIDES = {"cropr": {"intermediate_size": 64}}  # its blocks use timm's default MLP ratio, 4
# Model fields of one operating point: Cropr's official classifier (global_pool='avg') is our mean pooling.
# SuperViT at a smaller resolution: its own learned position table, and the input resized as the official model does.
MODEL_FIELDS = {"cropr_avg": {"classifier_pooling": "mean"}, "supervit_07_40px": {"position_tables": [40]}}
INPUT_SIDES = {"supervit_07_40px": 40}


def name_of(plan: dict) -> str:
    """The operating point's name (None for a plan of no fixture point, such as a training step's)."""
    return next((name for points in POINTS.values() for name, known in points if known is plan), None)


def official(method: str, repo: Path, plan: dict):
    """A builder (no arguments) and a runner (model, pixels) for the official model of ``plan``."""
    if method == "tome":
        r = tuple(plan["r"]) if isinstance(plan["r"], (list, tuple)) else plan["r"]
        return (lambda: build_tome(repo)), (lambda model, pixels: run_tome(repo, model, pixels, r))
    if method == "evit":
        layers = plan["layers"]
        return (lambda: build_evit(repo, plan["keep_rate"], plan["fuse"], layers)), (
            lambda model, pixels: run_evit(model, pixels, layers)
        )
    if method == "cropr":
        return (lambda: build_cropr(repo, plan)), run_cropr
    if method == "skipat":
        return (lambda: build_skipat(repo, plan["attention_reuse"]["layers"])), run_skipat
    if method == "supervit":
        side = INPUT_SIDES.get(name_of(plan), MODEL["image_size"])
        return (lambda: build_supervit(repo, side)), (
            lambda model, pixels: run_supervit(model, pixels, plan["keep_rate"], plan["layers"], side)
        )
    if method == "evo_vit":
        rates = plan.get("stage_keep_rates") or [plan["keep_rate"]] * 2
        return (lambda: build_evo_vit(repo, plan)), (lambda model, pixels: run_evo_vit(model, pixels, rates))
    layers = plan["layers"]
    return (lambda: build_dynamicvit(repo, plan["keep_rate"], layers)), (
        lambda model, pixels: run_dynamicvit(model, pixels, layers)
    )


def selections_agree(first: dict, second: dict, method: str) -> bool:
    if first.keys() != second.keys():
        return False
    if method == "tome":
        return all(torch.equal(first[k], second[k]) for k in first)
    return all(torch.equal(first[k].sort(dim=1).values, second[k].sort(dim=1).values) for k in first)


def make_fixture(method: str, repo: Path, name: str, plan: dict, commit: str, seed: int = 0) -> Path:
    build, run = official(method, repo, plan)
    for attempt in range(20):  # a seed whose float32 choices equal the float64 ones (decisive)
        torch.manual_seed(seed + attempt)
        model = build().eval()
        sharpen(model, seed + attempt)
        pixels = inputs(seed + attempt, INPUT_SIDES.get(name))
        logits32, chosen32 = run(model.float(), pixels)
        logits64, chosen64 = run(model.double(), pixels.double())
        if selections_agree(chosen32, chosen64, method):
            break
    else:
        raise RuntimeError(f"{name}: no seed gave decisive selections")
    state = model.float().state_dict()
    plans = plan if "attention_reuse" in plan else {"token_reduction": plan}
    config = {**MODEL, **MODEL_OVERRIDES.get(method, {}), **MODEL_FIELDS.get(name, {}), **plans}
    save_checkpoint(state, FIXTURES / "checkpoints" / f"{name}.pth", method, plans)
    tensors = {f"weights.{key}": value for key, value in hf_weights(state, config).items()}
    tensors["pixel_values"] = pixels.float().contiguous()
    tensors["logits_fp64"] = logits64.contiguous()
    tensors["logits_fp32"] = logits32.float().contiguous()
    kind = {"tome": "owner", "skipat": "none"}.get(method, "kept")
    for layer, value in chosen64.items():
        tensors[f"{kind}.{layer}"] = value.long().contiguous()
    metadata = {
        "method": method, "operating_point": name, "repository": REPOSITORIES[method], "commit": commit,
        "config": json.dumps(config),
        "selection": kind,
    }  # fmt: skip
    FIXTURES.mkdir(parents=True, exist_ok=True)
    path = FIXTURES / f"{name}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


# DynamicViT's training step (main.py for DeiT: DistillDiffPruningLoss_dynamic with clf_weight 1, ratio_weight 2,
# distill_weight 0.5, mse_token; VisionTransformerTeacher on the same weights).
TRAINING_STEP = ("dynamicvit_training_step", {"method": "dynamicvit", "layers": [3, 6, 9], "keep_rate": 0.7})


def make_dynamicvit_training_step(repo: Path, commit: str, seed: int = 0) -> Path:
    """One official training step on sharpened weights: the four loss terms, the decisions drawn after
    ``torch.manual_seed(seed)`` and the predictors' gradients, in ``tests/fixtures/training/``."""
    sys.path.insert(0, str(repo))
    import losses
    from models import dyvit

    name, plan = TRAINING_STEP
    layers, ratios = plan["layers"], [plan["keep_rate"] ** (stage + 1) for stage in range(len(plan["layers"]))]
    torch.manual_seed(seed)
    model = dyvit.VisionTransformerDiffPruning(
        **TIMM_MODEL, qkv_bias=True, pruning_loc=layers, token_ratio=ratios, distill=True
    )
    sharpen(model, seed)
    teacher = dyvit.VisionTransformerTeacher(**TIMM_MODEL, qkv_bias=True)
    teacher.load_state_dict(model.state_dict(), strict=False)  # the backbone; no predictors
    criterion = losses.DistillDiffPruningLoss_dynamic(
        teacher.eval(), torch.nn.CrossEntropyLoss(), clf_weight=1.0, keep_ratio=ratios, mse_token=True,
        ratio_weight=2.0, distill_weight=0.5,
    )  # fmt: skip
    pixels = inputs(seed)
    labels = torch.arange(pixels.shape[0]) % TIMM_MODEL["num_classes"]
    model.train()
    torch.manual_seed(seed)
    outputs = model(pixels)
    loss, parts = criterion(pixels, outputs, labels)
    loss.backward()
    config = {**MODEL, "token_reduction": plan}
    tensors = {f"weights.{key}": value for key, value in hf_weights(model.state_dict(), config).items()}
    gradients = {name: parameter.grad for name, parameter in model.named_parameters() if "score_predictor" in name}
    gradients = hf_weights(gradients_in_place(model, gradients), config)
    tensors.update({f"grad.{key}": value for key, value in gradients.items() if ".token_reduction." in key})
    tensors["pixel_values"], tensors["labels"] = pixels.contiguous(), labels.contiguous()
    tensors["decisions"] = torch.stack(outputs[3], dim=1).contiguous()  # (B, stages, N) hard decisions
    for part, value in zip(("cross_entropy", "ratio", "logits_kl", "token_mse"), parts):
        tensors[f"loss.{part}"] = value.detach().reshape(())
    tensors["loss.total"] = loss.detach().reshape(())
    metadata = {
        "method": "dynamicvit", "operating_point": name, "repository": REPOSITORIES["dynamicvit"], "commit": commit,
        "config": json.dumps(config), "seed": str(seed),
        "loss": "cross_entropy + 2 * ratio / 3 + 0.5 * logits_kl + 0.5 * token_mse (losses.py, main.py for DeiT)",
    }  # fmt: skip
    path = FIXTURES / "training" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


# One training step of the official recipe for the other learned methods, on sharpened weights: the loss terms and
# the gradients of every parameter, in tests/fixtures/training/<name>.safetensors (plain cross-entropy: no mixup,
# no label smoothing; no dropout or drop path).
TRAINING_STEPS = {
    "cropr": ("cropr_training_step", {"method": "cropr", "tokens_per_layer": 8}),  # auxiliary heads (engine.py)
    "evo_vit": (
        "evo_vit_training_step",
        {"method": "evo_vit", "layers": [4, 8], "keep_rate": 0.5, "attention_momentum": 0.3, "two_heads": True},
    ),  # fmt: skip
    "supervit": ("supervit_training_step", {"method": "supervit", "layers": [3, 6, 9], "keep_rate": 0.7}),
}
# SuperViT's four sub-networks in the fixture (its get_training_sub_network draws them at random).
SUPERVIT_STEP = {"keep_full": 0.7, "side": 40, "keep_small": 0.5}


def official_training_loss(method: str, model, pixels: torch.Tensor, labels: torch.Tensor) -> tuple:
    """(loss, {part: value}) of one official training step (its engine's loss), backward already run for SuperViT
    (it steps each sub-network's loss), to be run for the others."""
    cross_entropy = torch.nn.functional.cross_entropy
    if method == "cropr":  # cls/engine.py: the main loss plus every auxiliary head's, unweighted
        outputs = model(pixels)
        parts = {"main": cross_entropy(outputs[0], labels)}
        parts.update({f"aux_{i}": cross_entropy(out, labels) for i, out in enumerate(outputs[1:])})
        return sum(parts.values()), parts
    if method == "evo_vit":  # engine_deit.py: 0.5 * CE(mean-token head) + 0.5 * CE(CLS head)
        mean_logits, cls_logits = model(pixels)
        parts = {"mean_head": cross_entropy(mean_logits, labels), "cls_head": cross_entropy(cls_logits, labels)}
        return 0.5 * parts["mean_head"] + 0.5 * parts["cls_head"], parts
    # deit/engine.py super_train_one_epoch: (224, 1) CE, (224, k) KL to it, (s, 1) CE, (s, k') KL to it
    kl, parts, side = torch.nn.KLDivLoss(reduction="batchmean"), {}, SUPERVIT_STEP["side"]
    full_side = MODEL["image_size"]
    subnetworks = [("full", full_side, 1), ("pruned", full_side, SUPERVIT_STEP["keep_full"]),
                   ("small", side, 1), ("pruned_small", side, SUPERVIT_STEP["keep_small"])]  # fmt: skip
    for index, (name, size, rate) in enumerate(subnetworks):
        outputs = model(pixels, size, rate)
        if index % 2 == 0:
            loss = cross_entropy(outputs, labels)
            teacher = torch.nn.functional.softmax(outputs.detach(), dim=1)
        else:
            loss = kl(torch.nn.functional.log_softmax(outputs, dim=1), teacher)
        loss.backward()
        parts[name] = loss.detach()
    return None, parts


def make_training_step(method: str, repo: Path, commit: str, seed: int = 0) -> Path:
    """One official training step of ``method`` (`TRAINING_STEPS`) on sharpened weights."""
    name, plan = TRAINING_STEPS[method]
    torch.manual_seed(seed)
    if method == "cropr":
        model = build_cropr(repo, plan)
        config = {**MODEL, **MODEL_OVERRIDES["cropr"], "token_reduction": {**plan, "training_heads": True}}
    elif method == "evo_vit":
        model = build_evo_vit(repo, plan)
        config = {**MODEL, "token_reduction": plan}
    else:
        model = build_supervit(repo, SUPERVIT_STEP["side"])
        config = {**MODEL, "token_reduction": plan, "position_tables": [SUPERVIT_STEP["side"]]}
    sharpen(model, seed)
    model.train()
    pixels = inputs(seed)
    labels = torch.arange(pixels.shape[0]) % TIMM_MODEL["num_classes"]
    loss, parts = official_training_loss(method, model, pixels, labels)
    if loss is not None:
        loss.backward()
    total = loss.detach() if loss is not None else sum(parts.values())
    tensors = {f"weights.{key}": value for key, value in hf_weights(model.state_dict(), config).items()}
    gradients = {key: (p.grad if p.grad is not None else torch.zeros_like(p)) for key, p in model.named_parameters()}
    gradients = hf_weights(gradients_in_place(model, gradients), config)
    tensors.update({f"grad.{key}": value for key, value in gradients.items()})
    tensors["pixel_values"], tensors["labels"] = pixels.contiguous(), labels.contiguous()
    for part, value in parts.items():
        tensors[f"loss.{part}"] = value.detach().reshape(())
    tensors["loss.total"] = total.reshape(())
    metadata = {
        "method": method, "operating_point": name, "repository": REPOSITORIES[method], "commit": commit,
        "config": json.dumps(config), "seed": str(seed), "subnetworks": json.dumps(SUPERVIT_STEP),
    }  # fmt: skip
    path = FIXTURES / "training" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def gradients_in_place(model: torch.nn.Module, gradients: dict) -> dict:
    """The model's state with each parameter in ``gradients`` replaced by its gradient (same names and layout)."""
    return {key: gradients.get(key, value) for key, value in model.state_dict().items()}


def repository_commit(repo: Path, given: str | None) -> str:
    if given:
        return given
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=sorted(POINTS))
    parser.add_argument("repo", help="a checkout of the method's official repository")
    parser.add_argument("--commit", default=None, help="the checkout's commit (default: git rev-parse HEAD)")
    args = parser.parse_args(argv)
    repo = Path(args.repo).resolve()
    if not repo.is_dir():
        raise SystemExit(f"repo {repo} is not a directory; pass a checkout of {REPOSITORIES[args.method]}.")
    import transformers.models.auto.image_processing_auto  # noqa: F401  (before the stand-ins: it probes torchvision)

    from hf_tokenprune import TokenPruneViTConfig  # noqa: F401  (the converter's classes, loaded likewise)

    sys.meta_path.insert(0, _StandIns())
    six = types.ModuleType("torch._six")  # removed in torch 2; DynamicViT's utils.py still imports it
    six.inf, six.string_classes, six.container_abcs = math.inf, str, collections.abc
    sys.modules.setdefault("torch._six", six)
    os.chdir(repo)  # some official files open paths relative to their repository
    commit = repository_commit(repo, args.commit)
    for name, plan in POINTS[args.method]:
        print(f"wrote {make_fixture(args.method, repo, name, plan, commit)}")
    if args.method == "dynamicvit":
        print(f"wrote {make_dynamicvit_training_step(repo, commit)}")
    if args.method in TRAINING_STEPS:
        print(f"wrote {make_training_step(args.method, repo, commit)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
