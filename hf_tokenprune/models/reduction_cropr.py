# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""Token Cropr: learned, task-specific token pruning with auxiliary heads.

Bergner, Lippert, Mahendran, "Token Cropr: Faster ViTs for Quite a Few Tasks", arXiv 2412.00965, 2024;
reference code benbergner/cropr.

After every block but the last (the last two with ``last_layer_fusion``) a scorer removes a fixed number of tokens;
an int ``tokens_per_layer = R`` removes ``R + 1`` at the first module and ``R`` at the others, as the reference code
does (``schedule[0] += 1``: 197 tokens become 20 on ViT-L with R = 8). The scorer is a cross-attention with learned
queries: a token's score is the sum over heads and queries of the raw logits ``q . k_i``. In training an auxiliary
head sees the block's output *detached* (softmax attention of the queries, MLP, classifier) and adds its task loss
to the model's loss: it trains the queries and the scorer, never the backbone. With ``last_layer_fusion`` the pruned
tokens are kept aside and rejoin (in patch order) before the final block.

At inference only the scorer is needed; because the queries are fixed, the score of a token reduces
to ``x_i . sum_m q_m``, an O(N * d) product.

Two scorers, chosen by ``scorer``:

- ``"official"`` (the default): the reference code's defaults (``cls/main.py``): one head, no LayerNorm before the
  cross-attention, no query, key or value projections: the scorer is the learned queries alone (768 parameters at
  ViT-B with one query). The auxiliary head's MLP norm has eps 1e-6 and its classifier norm 1e-5, as there.
- ``"projected"``: a LayerNorm and biased query and key projections (and a value projection in the auxiliary head),
  with the model's head count by default (about 1.2M scorer parameters at ViT-B). It scores
  ``LayerNorm(x_i) . (W_k^T sum_m W_q q_m)`` at inference.
- ``"official_projected"``: the reference code's projected setting (``--cropr_pre_attn_norm --cropr_q_proj
  --cropr_k_proj --cropr_v_proj``): the same structure without biases, its LayerNorm at eps 1e-6, one head by
  default, the auxiliary head's norms as ``"official"``'s.

The reference classifier (``global_pool="avg"``) classifies the final norm of the mean of every token, CLS included:
a ViT config's ``classifier_pooling="mean"`` (converted Cropr checkpoints set it). With several queries the reference
sends one prediction per query to a loss that expects one per image, so it trains with one query; ours averages the
queries' outputs before the head (``aux_head="pooled"``).

``aux_head="per_query"`` is the official segmentation variant: one learned query per patch of the grid
(``num_queries`` becomes the number of patches) and the auxiliary head predicts a label for each query instead of
one for the image; a dense model trains it against the patch labels.
"""

import torch
from torch import nn
from transformers import initialization as init

from .token_reduction import (
    Paper,
    TokenReduction,
    TokenState,
    check_bool,
    check_choice,
    check_int,
    check_options,
    keep_tokens,
    padding_of,
    padding_ranked_last,
    park_tokens,
    rank_patches,
    register_reduction,
    rejoin_parked,
)

SCORERS = ("official", "projected", "official_projected")
OFFICIAL_AUX_EPS = (1e-6, 1e-5)  # the reference auxiliary head: MLP norm, classifier norm
OFFICIAL_NORM_EPS = 1e-6  # the reference cross-attention's LayerNorm (pre_attn_norm)


def scorer_heads(plan, config) -> int:
    """Heads of the cross-attention: the plan's, else 1 (official) or the model's (projected)."""
    if plan["num_heads"] is not None:
        return plan["num_heads"]
    return config.num_attention_heads if plan["scorer"] == "projected" else 1


def _num_modules(plan, num_layers):
    return num_layers - 2 if plan["last_layer_fusion"] else num_layers - 1


def _check_schedule(plan, config) -> list[int]:
    """``tokens_per_layer`` as a list with one count per pruning module (after blocks 0, 1, ...)."""
    count = _num_modules(plan, config.num_hidden_layers)
    field = "token_reduction['tokens_per_layer']"
    value = plan["tokens_per_layer"]
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        value = [value + 1] + [value] * (count - 1)  # the reference removes one more at the first module
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value] * count
    if not isinstance(value, (list, tuple)) or len(value) != count:
        raise ValueError(
            f"{field} = {value!r} must be an int or a list of {count} counts, one per pruning module (after every "
            f"block but the last{' two, with last_layer_fusion' if plan['last_layer_fusion'] else ''})."
        )
    patches = config.num_patches
    for index, removed in enumerate(value):
        check_int(removed, field, 0, patches, "tokens removed after a block")
        patches -= removed
        if patches < 1:
            raise ValueError(
                f"{field} = {list(value)!r} removes every patch token by block {index}; at most "
                f"{config.num_patches - 1} tokens can be removed in total."
            )
    return list(value)


class CrossAttentionScorer(nn.Module):
    """Learned queries attending to the tokens: scores for pruning, and an auxiliary prediction in training."""

    def __init__(self, config, plan):
        super().__init__()
        width, self.num_heads = config.hidden_size, scorer_heads(plan, config)
        self.head_dim = width // self.num_heads
        self.queries = nn.Parameter(torch.empty(1, plan["num_queries"], width))
        projected, bias = plan["scorer"] != "official", plan["scorer"] == "projected"
        eps = config.layer_norm_eps if bias else OFFICIAL_NORM_EPS
        self.norm = nn.LayerNorm(width, eps=eps) if projected else nn.Identity()
        self.q_proj = nn.Linear(width, width, bias=bias) if projected else nn.Identity()
        self.k_proj = nn.Linear(width, width, bias=bias) if projected else nn.Identity()
        if plan["training_heads"]:  # training only: dropped from inference checkpoints
            self.aux_head = AuxiliaryHead(config, plan, self.num_heads)
        self.init_tokenprune_weights()

    @torch.no_grad()
    def init_tokenprune_weights(self, std: float = 0.02) -> None:
        """Queries ~ N(0, 1/d) cut at +-2 sigma, as the reference's ``trunc_normal_tf_``; HF's loader calls it for
        missing weights only."""
        std = self.queries.shape[-1] ** -0.5
        init.trunc_normal_(self.queries, std=std, a=-2 * std, b=2 * std)

    def fast_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Inference scores (B, N): the same ranking as ``sum_heads sum_queries q . k_i`` at O(N * d)."""
        query = self.q_proj(self.queries).sum(dim=1)[0]  # (d,) sum over queries
        weight = query if isinstance(self.k_proj, nn.Identity) else self.k_proj.weight.t() @ query  # (d,)
        return self.norm(x) @ weight

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: (scores (B, N), auxiliary logits (B, labels)) from detached tokens; ``padding`` (B, N) keys
        are left out of the auxiliary head's attention."""
        batch, length, width = x.shape
        x = self.norm(x.detach())
        query = self.q_proj(self.queries).expand(batch, -1, -1)  # (B, M, d)
        query = query.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, M, hd)
        key = self.k_proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, hd)
        logits = query @ key.transpose(-1, -2)  # (B, H, M, N) raw logits
        if padding is not None:
            logits = logits.masked_fill(padding[:, None, None, :], -torch.inf)
        return logits.sum(dim=(1, 2)), self.aux_head(x, logits)


class AuxiliaryHead(nn.Module):
    """Value projection, softmax attention of the learned queries, MLP and classifier (training only)."""

    def __init__(self, config, plan, num_heads):
        super().__init__()
        width, projected = config.hidden_size, plan["scorer"] == "projected"
        self.num_heads, self.scaling = num_heads, (width // num_heads) ** -0.5
        if plan["scorer"] == "official_projected":
            self.v_proj = nn.Linear(width, width, bias=False)
        else:
            self.v_proj = nn.Linear(width, width) if projected else nn.Identity()
        self.out_proj = nn.Linear(width, width) if num_heads > 1 else nn.Identity()
        eps = (config.layer_norm_eps,) * 2 if projected else OFFICIAL_AUX_EPS
        self.mlp_norm = nn.LayerNorm(width, eps=eps[0])
        hidden = int(width * plan["mlp_ratio"])
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.head_norm = nn.LayerNorm(width, eps=eps[1])
        self.head = nn.Linear(width, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.per_query = plan["aux_head"] == "per_query"

    def forward(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        value = self.v_proj(x).view(batch, length, self.num_heads, -1).transpose(1, 2)  # (B, H, N, hd)
        pooled = (logits * self.scaling).softmax(dim=-1) @ value  # (B, H, M, hd)
        pooled = self.out_proj(pooled.transpose(1, 2).reshape(batch, -1, width))  # (B, M, d)
        pooled = pooled + self.mlp(self.mlp_norm(pooled))
        if self.per_query:  # one prediction per query: (B, M, labels)
            return self.head(self.head_norm(pooled))
        return self.head(self.head_norm(pooled.mean(dim=1)))  # (B, labels)


@register_reduction("cropr")
class CroprReduction(TokenReduction):
    options = {
        "tokens_per_layer": 8,
        "last_layer_fusion": True,
        "num_queries": 1,
        "scorer": "official",
        "num_heads": None,
        "mlp_ratio": 4.0,
        "aux_loss_weight": 1.0,
        "training_heads": True,
        "aux_head": "pooled",
    }
    runtime_options = ("tokens_per_layer", "aux_loss_weight")
    training_only_modules = ("scorer.aux_head",)
    paper = Paper(
        "Token Cropr: Faster ViTs for Quite a Few Tasks",
        "Bergner, Lippert and Mahendran, CVPR 2025",
        "2412.00965",
        "benbergner/cropr",
    )
    headline_plan = {"tokens_per_layer": 8}  # 8 fewer tokens after every block, last-layer fusion
    keep_all_plan = {"tokens_per_layer": 0}
    operating_points = ("tokens_per_layer", (0.5, 0.7, 0.9))  # the fraction of the patch tokens pruned in all

    @classmethod
    def operating_point(cls, strength, config):
        """``tokens_per_layer`` that prunes about ``strength`` of the patch tokens by the last pruning module."""
        depth = config.num_hidden_layers
        return {
            "method": cls.method,
            "tokens_per_layer": max(1, round(strength * config.num_patches / max(1, depth - 2))),
        }

    @classmethod
    def check_plan(cls, plan, config):
        plan = check_options(plan, cls.options, "token_reduction")
        plan["last_layer_fusion"] = check_bool(plan["last_layer_fusion"], "token_reduction['last_layer_fusion']")
        if _num_modules(plan, config.num_hidden_layers) < 1:
            raise ValueError(f"cropr needs more layers than {config.num_hidden_layers} for its pruning modules.")
        plan["tokens_per_layer"] = _check_schedule(plan, config)
        check_int(plan["num_queries"], "token_reduction['num_queries']", 1, 4096)
        check_choice(plan["scorer"], "token_reduction['scorer']", SCORERS)
        if plan["num_heads"] is not None:
            check_int(plan["num_heads"], "token_reduction['num_heads']", 1, config.hidden_size)
            if config.hidden_size % plan["num_heads"]:
                raise ValueError(
                    f"token_reduction['num_heads'] = {plan['num_heads']} must divide hidden_size {config.hidden_size}."
                )
        for key in ("mlp_ratio", "aux_loss_weight"):
            value = plan[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"token_reduction['{key}'] = {value!r} must be a non-negative number.")
            plan[key] = float(value)
        plan["training_heads"] = check_bool(plan["training_heads"], "token_reduction['training_heads']")
        check_choice(plan["aux_head"], "token_reduction['aux_head']", ("pooled", "per_query"))
        if plan["aux_head"] == "per_query":  # one query per patch (1, the default, means "as many as patches")
            plan["num_queries"] = config.num_patches if plan["num_queries"] == 1 else plan["num_queries"]
            if plan["num_queries"] != config.num_patches:
                raise ValueError(
                    f"token_reduction['num_queries'] = {plan['num_queries']} must equal the {config.num_patches} "
                    "patches with aux_head='per_query' (one query per patch)."
                )
        return plan

    @classmethod
    def token_counts(cls, plan, num_layers, num_patches, keep_rate=None):
        counts, tokens = [], num_patches + 1
        for layer in range(num_layers):
            if plan["last_layer_fusion"] and layer == num_layers - 1:
                tokens = num_patches + 1  # the pruned tokens rejoin before the final block
            counts.append((tokens, tokens))
            if layer < len(plan["tokens_per_layer"]):
                tokens -= min(plan["tokens_per_layer"][layer], tokens - 2)
        return counts

    @classmethod
    def extra_macs(cls, plan, config, counts):
        # Inference scorer: one d-vector product per token after each pruning module's block.
        width = config.hidden_size
        return [m * width if layer < len(plan["tokens_per_layer"]) else 0 for layer, (_, m) in enumerate(counts)]

    @classmethod
    def first_active_layer(cls, plan, config):
        return 1  # the sequence shrinks after block 0

    @classmethod
    def build(cls, plan, config, layer_idx):
        prunes = layer_idx < _num_modules(plan, config.num_hidden_layers)
        rejoins = plan["last_layer_fusion"] and layer_idx == config.num_hidden_layers - 1
        return cls(plan, config, layer_idx) if prunes or rejoins else None

    def __init__(self, plan, config, layer_idx):
        super().__init__(plan, config, layer_idx)
        self.module_index = layer_idx if layer_idx < len(plan["tokens_per_layer"]) else None
        if self.module_index is not None:
            self.scorer = CrossAttentionScorer(config, plan)
        self.keep_pruned = plan["last_layer_fusion"] or bool(config.restore_tokens)

    def before_block(self, x: torch.Tensor, state: TokenState):
        if self.module_index is None:  # the final block with last-layer fusion
            return rejoin_parked(x, state)
        return x, state

    def after_block(self, x: torch.Tensor, state: TokenState):
        if self.module_index is None:
            return x, state
        num_prefix = state.num_prefix
        num_patches = x.shape[1] - num_prefix
        removed = min(state.plan["tokens_per_layer"][self.module_index], num_patches - 1)
        if removed <= 0:
            return x, state
        # 1. Score the tokens; in training the auxiliary head also predicts the label from detached tokens.
        if self.training and hasattr(self.scorer, "aux_head"):
            scores, aux_logits = self.scorer(x, padding_of(state))
            state = state.replace(aux_logits=state.aux_logits + ((aux_logits, state.plan["aux_loss_weight"]),))
        else:
            scores = self.scorer.fast_scores(x)
        # 2. Keep the best-scored patch tokens (CLS always stays); set the others aside if they rejoin later.
        scores = padding_ranked_last(scores[:, num_prefix:], state)  # padding never kept over a real token
        keep, pruned = rank_patches(scores, num_patches - removed, num_prefix)
        if self.keep_pruned:
            state = park_tokens(x, state, pruned)
        return keep_tokens(x, state, keep)
