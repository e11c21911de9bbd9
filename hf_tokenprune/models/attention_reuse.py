# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""Attention reuse: layers that skip self-attention and derive their attention output from an earlier layer's.

SkipAt: Venkataramanan et al., "Skip-Attention: Improving Vision Transformers by Paying Less Attention", ICLR 2024
(arXiv 2301.02240); reference code Qualcomm-AI-research/skip-attention.

A reused layer does not compute self-attention. Its attention output (after the output projection, before the
residual) is a parametric function of the previous layer's attention output: for the patch tokens,
Phi = Linear(d, 2d) + GELU, back to the patch grid, 5x5 depthwise convolution + GELU, Linear(2d, d), then an
efficient channel attention (ECA) gate; consecutive reused layers chain their Phi outputs. The CLS row reuses the
last computed CLS attention output. The MLPs run in every layer. The layer keeps its own attention weights, frozen
and unused, so stock checkpoints load with no unexpected keys and ``disable_plans=True`` still runs the full model
(an inference checkpoint can drop them).

Initialisation (our choice): Phi starts as the identity on its input for inputs of moderate size, i.e. a reused
layer starts by repeating the previous layer's attention output, which the SkipAt paper shows is close to what it
would have computed. With ``W1 = [I; -I]``, bias ``beta``, an identity depthwise kernel, ``W2 = [I, -I]`` and a
zero ECA kernel (gate 0.5): ``Phi(x) = GELU(GELU(x + beta)) - GELU(GELU(beta - x)) ~= 2x * 0.5 = x`` for
``|x| < beta - 2``.
"""

from typing import Any

import torch
from torch import nn
from transformers import initialization as init

from .token_reduction import (
    MethodDescription,
    Paper,
    check_bool,
    check_choice,
    check_int,
    check_layers,
    check_options,
    did_you_mean,
    scaled_layers,
)

ATTENTION_REUSE_METHODS: dict[str, type] = {}
IDENTITY_SHIFT = 8.0  # beta: Phi is the identity for |x| up to about beta - 2.5


def register_attention_reuse(name: str):
    """Class decorator that registers an attention-reuse method under ``name``."""

    def wrap(cls):
        known = ATTENTION_REUSE_METHODS.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"Attention-reuse method {name!r} is already registered by {known.__qualname__}.")
        cls.method = name
        ATTENTION_REUSE_METHODS[name] = cls
        return cls

    return wrap


def get_reuse_class(name: Any) -> type["AttentionReuse"]:
    if name not in ATTENTION_REUSE_METHODS:
        raise ValueError(
            f"attention_reuse['method'] = {name!r} is not a known method; allowed: {sorted(ATTENTION_REUSE_METHODS)}."
            + did_you_mean(name, ATTENTION_REUSE_METHODS)
        )
    return ATTENTION_REUSE_METHODS[name]


def check_attention_reuse(value: Any, config: Any) -> dict | None:
    """Validates an attention-reuse plan and fills its defaults."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("method") not in ATTENTION_REUSE_METHODS:
        raise ValueError(
            f"attention_reuse = {value!r} must be None or a dict whose 'method' is one of "
            f"{sorted(ATTENTION_REUSE_METHODS)}."
            + did_you_mean((value or {}).get("method") if isinstance(value, dict) else None, ATTENTION_REUSE_METHODS)
        )
    return ATTENTION_REUSE_METHODS[value["method"]].check_plan(value, config)


class AttentionReuse(MethodDescription, nn.Module):
    """One reused layer's replacement of its self-attention. Like a token-reduction method, the class describes
    itself for the tools (`paper`, `headline_plan`, `operating_points`, `needs`) and its plan (`check_plan`,
    `check_with_reduction`, `macs`, `build`)."""

    options: dict = {}


class EfficientChannelAttention(nn.Module):
    """ECA: a channel gate from a 1-d convolution over the token-averaged channels."""

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv(x.mean(dim=1, keepdim=True))  # (B, 1, C)
        return x * torch.sigmoid(gate)


@register_attention_reuse("skipat")
class SkipAtPhi(AttentionReuse):
    """Phi of one reused layer: maps the previous attention output of the patch tokens to this layer's."""

    options = {
        "layers": None,
        "kernel_size": 5,
        "hidden_ratio": 2,
        "init": "identity",
        "keep_replaced_attention": True,
    }
    paper = Paper(
        "Skip-Attention: Improving Vision Transformers by Paying Less Attention",
        "Venkataramanan et al., ICLR 2024",
        "2301.02240",
        "Qualcomm-AI-research/skip-attention",
    )
    headline_plan = {}  # layers 3-8 of 12
    operating_points = ("layers", (0.25, 0.5))  # the fraction of the depth that reuses attention
    needs = {"one_grid": "Phi convolves over the patch grid"}

    @classmethod
    def operating_point(cls, strength, config):
        """The reused layers for a fraction of the depth, placed as the paper places them: at 12 layers a half is
        blocks 3-8 and a quarter 3-5 (from the end of the first quarter on); at 4 layers [1, 2] and [1]."""
        depth = config.num_hidden_layers
        start = min(depth - 1, max(1, round(depth / 4)))
        return {
            "method": cls.method,
            "layers": list(range(start, min(depth, start + max(1, round(strength * depth))))),
        }

    @classmethod
    def check_plan(cls, plan: dict, config: Any) -> dict:
        plan = check_options(plan, cls.options, "attention_reuse")
        num_layers = config.num_hidden_layers
        if plan["layers"] is None:
            plan["layers"] = scaled_layers([3, 4, 5, 6, 7, 8], num_layers)
        plan["layers"] = check_layers(plan["layers"], "attention_reuse['layers']", num_layers, low=1)
        kernel = check_int(plan["kernel_size"], "attention_reuse['kernel_size']", 1, 31, "an odd size")
        if kernel % 2 == 0:
            raise ValueError(f"attention_reuse['kernel_size'] = {kernel} must be odd.")
        check_int(plan["hidden_ratio"], "attention_reuse['hidden_ratio']", 1, 16)
        check_choice(plan["init"], "attention_reuse['init']", ("identity", "random"))
        if plan["init"] == "identity" and plan["hidden_ratio"] < 2:
            raise ValueError("attention_reuse['init'] = 'identity' needs hidden_ratio >= 2 (Phi holds x and -x).")
        check_bool(plan["keep_replaced_attention"], "attention_reuse['keep_replaced_attention']")
        return plan

    @classmethod
    def check_with_reduction(cls, plan: dict, reduction: dict, reduction_class: Any, config: Any) -> None:
        """Phi needs the full patch grid: every reused layer must come before the reduction changes anything."""
        first = reduction_class.first_active_layer(reduction, config)
        late = [layer for layer in plan["layers"] if layer >= first]
        if late:
            raise ValueError(
                f"attention_reuse['layers'] = {plan['layers']} reuses attention at layer(s) {late}, but "
                f"token_reduction ({reduction['method']}) changes the tokens from layer {first} on; SkipAt's Phi "
                f"needs the full patch grid, so reused layers must all be below {first}."
            )

    @classmethod
    def macs(cls, plan: dict, config: Any, num_patches: int) -> int:
        """Multiply-accumulates of Phi per image (replacing the layer's attention)."""
        hidden = plan["hidden_ratio"] * config.hidden_size
        return num_patches * (2 * config.hidden_size * hidden + hidden * plan["kernel_size"] ** 2)

    @classmethod
    def build(cls, plan: dict, config: Any, layer_idx: int) -> "SkipAtPhi | None":
        return cls(plan, config) if layer_idx in plan["layers"] else None

    def __init__(self, plan: dict, config: Any):
        super().__init__()
        width, hidden, kernel = config.hidden_size, plan["hidden_ratio"] * config.hidden_size, plan["kernel_size"]
        self.expand = nn.Linear(width, hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden)
        self.reduce = nn.Linear(hidden, width)
        self.gate = EfficientChannelAttention()
        self.activation = nn.GELU()
        self.identity_init = plan["init"] == "identity"
        self.init_tokenprune_weights()

    @torch.no_grad()
    def init_tokenprune_weights(self, std: float = 0.02) -> None:
        """The identity initialisation (see the module docstring); HF's loader calls it for missing weights only."""
        if not self.identity_init:
            return
        width, hidden = self.reduce.out_features, self.expand.out_features
        eye = torch.eye(width)
        expand = torch.zeros(hidden, width)
        expand[:width], expand[width : 2 * width] = eye, -eye
        init.copy_(self.expand.weight, expand)
        init.constant_(self.expand.bias, IDENTITY_SHIFT)
        kernel = torch.zeros(self.depthwise.weight.shape)
        kernel[:, 0, kernel.shape[2] // 2, kernel.shape[3] // 2] = 1.0
        init.copy_(self.depthwise.weight, kernel)
        init.zeros_(self.depthwise.bias)
        reduce = torch.zeros(width, hidden)
        reduce[:, :width], reduce[:, width : 2 * width] = eye, -eye
        init.copy_(self.reduce.weight, reduce)
        init.zeros_(self.reduce.bias)
        init.zeros_(self.gate.conv.weight)

    def forward(self, previous: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """(B, N, d) previous attention output of the patch tokens -> (B, N, d) this layer's. On a video grid
        (time, rows, columns) the convolution runs on each time slice, 2-D as in the paper; the gate pools the clip."""
        batch, length, _ = previous.shape
        hidden = self.activation(self.expand(previous))  # (B, N, 2d)
        # The token layout is already channels-last: view it as (B [x time], 2d, rows, cols) without a copy.
        spatial = hidden.view(-1, grid[-2], grid[-1], hidden.shape[-1]).permute(0, 3, 1, 2)
        weight = self.depthwise.weight.contiguous(memory_format=torch.channels_last)
        spatial = nn.functional.conv2d(
            spatial, weight, self.depthwise.bias, padding=self.depthwise.padding, groups=self.depthwise.groups
        )
        hidden = self.activation(spatial.permute(0, 2, 3, 1).reshape(batch, length, -1))  # (B, N, 2d)
        return self.gate(self.reduce(hidden))
