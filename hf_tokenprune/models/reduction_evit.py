# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""EViT: keep the attentive tokens, fuse the inattentive ones.

Liang et al., "Not All Patches are What You Need: Expediting Vision Transformers via Token Reorganizations",
ICLR 2022 (arXiv 2202.07800); reference code youweiliang/evit.

At each listed layer, after the attention residual and before the MLP, the patch tokens are ranked by the CLS
token's attention to them (averaged over heads). The top ``ceil(keep_rate * N)`` stay; the others are dropped or,
with ``fuse``, summed into one extra token weighted by their CLS attention. A fused token of an earlier layer is
ranked like any other token at a later layer, as in the reference code.
"""

import math

import torch

from .token_reduction import (
    AttentionProbe,
    Paper,
    TokenReduction,
    TokenState,
    check_bool,
    check_keep_rate,
    check_layers,
    check_options,
    gather_tokens,
    keep_tokens,
    park_tokens,
    rank_patches,
    register_reduction,
    scaled_layers,
)


@register_reduction("evit")
class EViTReduction(TokenReduction):
    options = {"layers": None, "keep_rate": 0.7, "fuse": True}
    runtime_options = ("keep_rate",)
    uses_keep_rate = True
    paper = Paper(
        "Not All Patches are What You Need: Expediting Vision Transformers via Token Reorganizations",
        "Liang et al., ICLR 2022",
        "2202.07800",
        "youweiliang/evit",
    )
    headline_plan = {"keep_rate": 0.7, "fuse": True}  # layers 3, 6, 9 of 12
    keep_all_plan = {"keep_rate": 1.0}
    operating_points = ("keep_rate", (0.9, 0.8, 0.7, 0.6, 0.5))
    needs = {"cls_token": "it ranks tokens by the CLS token's attention"}

    @classmethod
    def check_plan(cls, plan, config):
        num_layers = config.num_hidden_layers
        plan = check_options(plan, cls.options, "token_reduction")
        if plan["layers"] is None:
            plan["layers"] = scaled_layers([3, 6, 9], num_layers)
        plan["layers"] = check_layers(plan["layers"], "token_reduction['layers']", num_layers)
        plan["keep_rate"] = check_keep_rate(plan["keep_rate"], "token_reduction['keep_rate']")
        plan["fuse"] = check_bool(plan["fuse"], "token_reduction['fuse']")
        return plan

    @classmethod
    def token_counts(cls, plan, num_layers, num_patches, keep_rate=None):
        keep_rate = plan["keep_rate"] if keep_rate is None else keep_rate
        counts, tokens = [], num_patches + 1
        for layer in range(num_layers):
            attention_tokens = tokens
            if layer in plan["layers"]:
                kept = cls.num_kept(tokens - 1, keep_rate)
                if kept < tokens - 1:
                    tokens = 1 + kept + int(plan["fuse"])
            counts.append((attention_tokens, tokens))
        return counts

    @classmethod
    def num_kept(cls, num_patches: int, keep_rate: float) -> int:
        """Patch tokens kept of ``num_patches``: ``ceil(keep_rate * N)``, the same float expression as
        youweiliang/evit's ``left_tokens`` (so ``0.56 * 25 = 14.000000000000002`` keeps 15, as there)."""
        return max(1, min(num_patches, math.ceil(keep_rate * num_patches)))

    @classmethod
    def extra_macs(cls, plan, config, counts):
        # The CLS attention row (1 x N keys) and the fused token's weighted sum.
        return [a * config.hidden_size * (2 if layer in plan["layers"] else 0) for layer, (a, _) in enumerate(counts)]

    @classmethod
    def first_active_layer(cls, plan, config):
        return plan["layers"][0]

    @classmethod
    def build(cls, plan, config, layer_idx):
        return cls(plan, config, layer_idx) if layer_idx in plan["layers"] else None

    def __init__(self, plan, config, layer_idx):
        super().__init__(plan, config, layer_idx)
        self.needs_cls_attention = True
        self.park_dropped = bool(config.restore_tokens)  # only needed to restore a full-length output

    def after_attention(self, x: torch.Tensor, state: TokenState, probe: AttentionProbe):
        num_prefix = state.num_prefix
        num_patches = x.shape[1] - num_prefix
        num_keep = self.num_kept(num_patches, self.keep_rate(state))
        if num_keep >= num_patches:
            return x, state

        # 1. Rank the patch tokens by how much the CLS token attends to them.
        scores = probe.cls_attention[:, num_prefix:]  # (B, N)
        keep, drop = rank_patches(scores, num_keep, num_prefix)  # (B, K), (B, N - K)
        if self.park_dropped:
            state = park_tokens(x, state, drop)

        # 2. Fuse the inattentive tokens into one, weighted by their (unnormalised) CLS attention.
        fused = None
        if self.plan["fuse"]:
            weights = probe.cls_attention.gather(1, drop).unsqueeze(-1)  # (B, N - K, 1)
            fused = (gather_tokens(x, drop) * weights).sum(dim=1, keepdim=True)  # (B, 1, C)

        # 3. Keep the prefix and the attentive tokens; append the fused token, which stands at no patch position.
        x, state = keep_tokens(x, state, keep)  # (B, P + K, C)
        if fused is not None:
            x = torch.cat([x, fused], dim=1)
            made_up = state.positions.new_full((x.shape[0], 1), -1)
            state = state.replace(positions=torch.cat([state.positions, made_up], dim=1))
        return x, state
