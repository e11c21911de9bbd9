# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""SkipViT: a token-level skip connection.

Ataiefard et al., "SkipViT: Speeding Up Vision Transformers with a Token-Level Skip Connection",
arXiv 2401.15293, 2024 (no public code).

At ``drop_layer``, after the attention residual, the patch tokens are ranked by the CLS token's attention; the
lowest-ranked ones (all but ``ceil(keep_rate * N)``) leave the sequence. They are not discarded: they ride an identity
path, with no attention, no MLP and no parameters, and are scattered back to their original positions before
``rejoin_layer`` (or after the last layer when ``rejoin_layer`` equals the depth), so the last blocks see the full
token map again.
"""

import torch

from .token_reduction import (
    AttentionProbe,
    Paper,
    TokenReduction,
    TokenState,
    check_int,
    check_keep_rate,
    check_options,
    keep_tokens,
    kept_count,
    park_tokens,
    rank_patches,
    register_reduction,
    rejoin_parked,
    scaled_layers,
)


@register_reduction("skipvit")
class SkipViTReduction(TokenReduction):
    # keep_rate 0.45: the paper's headline drops 55% of the tokens.
    options = {"drop_layer": None, "rejoin_layer": None, "keep_rate": 0.45}
    runtime_options = ("keep_rate",)
    uses_keep_rate = True
    paper = Paper(
        "SkipViT: Speeding Up Vision Transformers with a Token-Level Skip Connection",
        "Ataiefard et al., arXiv 2024",
        "2401.15293",
    )
    headline_plan = {"keep_rate": 0.45}  # drops 55% at layer 3, rejoins before the last
    keep_all_plan = {"keep_rate": 1.0}
    operating_points = ("keep_rate", (0.7, 0.55, 0.45, 0.3))
    needs = {"cls_token": "it ranks tokens by the CLS token's attention"}

    @classmethod
    def check_plan(cls, plan, config):
        num_layers = config.num_hidden_layers
        plan = check_options(plan, cls.options, "token_reduction")
        if num_layers < 2:
            raise ValueError(f"skipvit needs at least 2 layers (one to drop in, one to rejoin at); got {num_layers}.")
        if plan["drop_layer"] is None:
            plan["drop_layer"] = min(scaled_layers([3], num_layers)[0], num_layers - 2)
        drop = check_int(
            plan["drop_layer"], "token_reduction['drop_layer']", 0, num_layers - 2, "a layer before the last one"
        )
        if plan["rejoin_layer"] is None:
            plan["rejoin_layer"] = num_layers - 1
        check_int(
            plan["rejoin_layer"],
            "token_reduction['rejoin_layer']",
            drop + 1,
            num_layers,
            "after drop_layer; the depth means after the last layer",
        )
        plan["keep_rate"] = check_keep_rate(plan["keep_rate"], "token_reduction['keep_rate']")
        return plan

    @classmethod
    def token_counts(cls, plan, num_layers, num_patches, keep_rate=None):
        keep_rate = plan["keep_rate"] if keep_rate is None else keep_rate
        full, kept = num_patches + 1, 1 + kept_count(num_patches, keep_rate)
        counts = []
        for layer in range(num_layers):
            skipping = plan["drop_layer"] < layer < plan["rejoin_layer"]
            attention_tokens = kept if skipping else full
            mlp_tokens = kept if plan["drop_layer"] <= layer < plan["rejoin_layer"] else full
            counts.append((attention_tokens, mlp_tokens))
        return counts

    @classmethod
    def extra_macs(cls, plan, config, counts):
        # The CLS attention row at the drop layer.
        return [a * config.hidden_size if layer == plan["drop_layer"] else 0 for layer, (a, _) in enumerate(counts)]

    @classmethod
    def first_active_layer(cls, plan, config):
        return plan["drop_layer"]

    @classmethod
    def build(cls, plan, config, layer_idx):
        if (
            layer_idx == plan["drop_layer"]
            or layer_idx == plan["rejoin_layer"]
            or (layer_idx == config.num_hidden_layers - 1 and plan["rejoin_layer"] == config.num_hidden_layers)
        ):
            return cls(plan, config, layer_idx)
        return None

    def __init__(self, plan, config, layer_idx):
        super().__init__(plan, config, layer_idx)
        self.drops = layer_idx == plan["drop_layer"]
        self.needs_cls_attention = self.drops

    def after_attention(self, x: torch.Tensor, state: TokenState, probe: AttentionProbe):
        if not self.drops:
            return x, state
        num_prefix = state.num_prefix
        num_patches = x.shape[1] - num_prefix
        num_keep = kept_count(num_patches, self.keep_rate(state))
        if num_keep >= num_patches:
            return x, state
        # Rank by CLS attention; the low-ranked tokens go on the identity path with their current values.
        keep, skip = rank_patches(probe.cls_attention[:, num_prefix:], num_keep, num_prefix)
        state = park_tokens(x, state, skip)
        return keep_tokens(x, state, keep)

    def before_block(self, x: torch.Tensor, state: TokenState):
        if self.layer_idx == self.plan["rejoin_layer"]:
            return rejoin_parked(x, state)
        return x, state

    def after_block(self, x: torch.Tensor, state: TokenState):
        if self.plan["rejoin_layer"] == self.num_layers and self.layer_idx == self.num_layers - 1:
            return rejoin_parked(x, state)
        return x, state
