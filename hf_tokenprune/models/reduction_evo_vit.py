# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""Evo-ViT: slow-fast token evolution.

Xu et al., "Evo-ViT: Slow-Fast Token Evolution for Dynamic Vision Transformer", AAAI 2022 (arXiv 2108.01390);
reference code YifanXu74/Evo-ViT.

A global class attention ``g`` follows the CLS token's attention over the layers as a moving average
(``g = (1 - a) * g + a * a_cls``, with ``a = 1`` before the first stage). At the start of each stage the patch tokens
are ranked by ``g``: the top ``int(N * keep_rate)`` (floor, as the reference code counts) are *informative* and go
through attention and MLP (slow update); the others are *placeholders*. Placeholders either stay as they are
(``placeholder_update="none"``, the reference code's default) or are summarised into one representative token,
weighted by ``g``, that goes through the block with the informative tokens and whose residual update is added to
every placeholder (``"representative"``, the paper's fast update). Placeholders rejoin the sequence at the end of
each stage, so the full token map exists again after it. Only informative tokens update ``g``.

As the reference code allows, ``stage_keep_rates`` gives each stage its own keep rate (its ``prune_ratio`` read at
each stage start; ``keep_rate`` serves every stage when it is None, and a call's ``keep_rate=`` is ignored when it is
set), and ``attention_momentum`` may be a list with one trade-off per layer (its ``tradeoff``; the entries before
the first stage must be 1: ``g`` starts from the attention of the layer before it).

With ``two_heads`` the classifier gets a second head on the mean of the patch tokens, trained with the CLS head
(0.5 * cross-entropy each) and used alone at inference, as in the reference training.
"""

from typing import NamedTuple

import torch

from .token_reduction import (
    AttentionProbe,
    Paper,
    TokenReduction,
    TokenState,
    check_bool,
    check_choice,
    check_keep_rate,
    check_layers,
    check_options,
    keep_tokens,
    park_tokens,
    rank_patches,
    register_reduction,
    rejoin_parked,
    scaled_layers,
)

PLACEHOLDER_UPDATES = ("none", "representative")


class EvoViTState(NamedTuple):
    """What Evo-ViT keeps for itself in the `TokenState` (``state.mine("evo_vit")``)."""

    global_attention: torch.Tensor  # (B, T + 1) class attention averaged over layers; the last slot is a trash slot
    representative: torch.Tensor | None = None  # (B, 1, C) the placeholders' summary as it entered this block


def informative_count(num_patches: int, keep_rate: float) -> int:
    """Informative tokens of ``num_patches``: ``int(N * keep_rate)`` (YifanXu74/Evo-ViT ``N_``), at least one."""
    return max(1, min(num_patches, int(num_patches * keep_rate)))


def _check_stages(plan: dict, num_layers: int) -> list[list[int]]:
    """Stages as ``[[start, end), ...]``, from ``stages`` or from ``layers`` (each stage runs to the next start)."""
    if plan["stages"] is not None and plan["layers"] is not None:
        raise ValueError("token_reduction gives both 'stages' and 'layers' for evo_vit; give one of them.")
    if plan["stages"] is None:
        starts = plan["layers"] if plan["layers"] is not None else scaled_layers([4, 8], num_layers)
        starts = check_layers(starts, "token_reduction['layers']", num_layers, low=1)
        return [[start, end] for start, end in zip(starts, starts[1:] + [num_layers])]
    stages = plan["stages"]
    shape_ok = (
        isinstance(stages, (list, tuple))
        and stages
        and all(isinstance(s, (list, tuple)) and len(s) == 2 and all(isinstance(v, int) for v in s) for s in stages)
    )
    if not shape_ok:
        raise ValueError(f"token_reduction['stages'] = {stages!r} must be a list of [start, end) layer pairs.")
    previous_end = 1
    for start, end in stages:
        if not previous_end <= start < end <= num_layers:
            raise ValueError(
                f"token_reduction['stages'] = {[list(s) for s in stages]!r}: stage [{start}, {end}) must satisfy "
                f"{previous_end} <= start < end <= {num_layers}; stages are ordered, do not overlap, and the first "
                "starts at layer 1 or later (it ranks tokens by the attention of an earlier layer)."
            )
        previous_end = end
    return [list(s) for s in stages]


def _check_momentum(value, first_start: int, num_layers: int) -> float | list[float]:
    """``attention_momentum``: one trade-off, or one per layer whose entries before ``first_start`` are 1."""
    field = "token_reduction['attention_momentum']"
    if not isinstance(value, (list, tuple)):
        return check_keep_rate(value, field)
    if len(value) != num_layers:
        raise ValueError(f"{field} = {list(value)!r} must be one trade-off or a list of {num_layers}, one per layer.")
    values = [check_keep_rate(v, field) for v in value]
    if any(v != 1.0 for v in values[:first_start]):
        raise ValueError(
            f"{field} = {values!r}: the entries before the first stage (layer {first_start}) must be 1 (the global "
            "attention starts from the layer before the stage, as the reference code's does with trade-off 1)."
        )
    return values


@register_reduction("evo_vit")
class EvoViTReduction(TokenReduction):
    options = {
        "stages": None,
        "layers": None,
        "keep_rate": 0.5,
        "placeholder_update": "none",
        "attention_momentum": 0.5,
        "two_heads": False,
        "stage_keep_rates": None,
    }
    runtime_options = ("keep_rate",)
    uses_keep_rate = True
    paper = Paper(
        "Evo-ViT: Slow-Fast Token Evolution for Dynamic Vision Transformer",
        "Xu et al., AAAI 2022",
        "2108.01390",
        "YifanXu74/Evo-ViT",
    )
    headline_plan = {"keep_rate": 0.5}  # stages from layers 4 and 8 of 12
    keep_all_plan = {"keep_rate": 1.0}
    operating_points = ("keep_rate", (0.7, 0.5, 0.3))
    needs = {"cls_token": "it ranks tokens by the CLS token's attention"}

    @classmethod
    def plan_needs(cls, plan):
        needs = dict(cls.needs)
        if plan.get("two_heads"):
            needs["two_heads"] = "two_heads=True trains one next to the CLS head"
        return needs

    @classmethod
    def check_plan(cls, plan, config):
        num_layers = config.num_hidden_layers
        plan = check_options(plan, cls.options, "token_reduction")
        plan["stages"] = _check_stages(plan, num_layers)
        del plan["layers"]  # the canonical plan names stages only
        plan["keep_rate"] = check_keep_rate(plan["keep_rate"], "token_reduction['keep_rate']")
        check_choice(plan["placeholder_update"], "token_reduction['placeholder_update']", PLACEHOLDER_UPDATES)
        plan["attention_momentum"] = _check_momentum(plan["attention_momentum"], plan["stages"][0][0], num_layers)
        rates = plan["stage_keep_rates"]
        if rates is not None:
            field = "token_reduction['stage_keep_rates']"
            if not isinstance(rates, (list, tuple)) or len(rates) != len(plan["stages"]):
                raise ValueError(
                    f"{field} = {rates!r} must be a list of {len(plan['stages'])} keep rates, one per stage."
                )
            plan["stage_keep_rates"] = [check_keep_rate(rate, field) for rate in rates]
        plan["two_heads"] = check_bool(plan["two_heads"], "token_reduction['two_heads']")
        return plan

    @classmethod
    def _stage_of(cls, plan, layer):
        return next((s for s in plan["stages"] if s[0] <= layer < s[1]), None)

    @classmethod
    def stage_rate(cls, plan, stage_index, keep_rate):
        """The keep rate of stage ``stage_index``: its entry of ``stage_keep_rates``, else ``keep_rate``."""
        rates = plan.get("stage_keep_rates")
        return keep_rate if rates is None else rates[stage_index]

    @classmethod
    def token_counts(cls, plan, num_layers, num_patches, keep_rate=None):
        keep_rate = plan["keep_rate"] if keep_rate is None else keep_rate
        full = (num_patches + 1, num_patches + 1)
        counts = [full] * num_layers
        for index, (start, end) in enumerate(plan["stages"]):
            kept = informative_count(num_patches, cls.stage_rate(plan, index, keep_rate))
            if kept < num_patches:
                inside = 1 + kept + int(plan["placeholder_update"] == "representative")
                counts[start:end] = [(inside, inside)] * (end - start)
        return counts

    @classmethod
    def extra_macs(cls, plan, config, counts):
        # The CLS attention row where the global attention is tracked; the representative token's weighted sum.
        first, last = plan["stages"][0][0], plan["stages"][-1][0]
        macs = []
        for layer, (a, _) in enumerate(counts):
            placeholders = counts[0][0] - a if plan["placeholder_update"] == "representative" else 0
            macs.append(
                (a if first - 1 <= layer < last else 0) * config.hidden_size + placeholders * config.hidden_size
            )
        return macs

    @classmethod
    def first_active_layer(cls, plan, config):
        return plan["stages"][0][0] - 1  # the layer before the first stage ranks tokens with its own attention

    @classmethod
    def build(cls, plan, config, layer_idx):
        first_start, last_start = plan["stages"][0][0], plan["stages"][-1][0]
        tracks_attention = first_start - 1 <= layer_idx < last_start
        return cls(plan, config, layer_idx) if tracks_attention or cls._stage_of(plan, layer_idx) else None

    def __init__(self, plan, config, layer_idx):
        super().__init__(plan, config, layer_idx)
        stage = self._stage_of(plan, layer_idx)
        self.starts_stage = stage is not None and stage[0] == layer_idx
        self.stage_index = plan["stages"].index(stage) if stage is not None else None
        self.ends_stage = stage is not None and stage[1] == layer_idx + 1
        self.in_stage = stage is not None
        self.representative = plan["placeholder_update"] == "representative" and self.in_stage
        # g is read only at stage starts, so layers after the last start need not track it.
        self.needs_cls_attention = plan["stages"][0][0] - 1 <= layer_idx < plan["stages"][-1][0]
        # a = 1 before the first stage: g is the CLS attention of the layer just before it.
        momentum = plan["attention_momentum"]
        momentum = momentum[layer_idx] if isinstance(momentum, list) else momentum
        self.momentum = 1.0 if layer_idx < plan["stages"][0][0] else momentum

    def before_block(self, x: torch.Tensor, state: TokenState):
        if self.starts_stage:
            x, state = self._split(x, state)
        if self.representative and state.parked:
            x, state = self._add_representative(x, state)
        return x, state

    def after_attention(self, x: torch.Tensor, state: TokenState, probe: AttentionProbe):
        if self.needs_cls_attention:
            state = self._update_global_attention(state, probe.cls_attention)
        return x, state

    def after_block(self, x: torch.Tensor, state: TokenState):
        if self.representative and state.parked:
            x, state = self._spread_representative(x, state)
        if self.ends_stage:
            x, state = rejoin_parked(x, state)
        return x, state

    def _split(self, x, state):
        """Ranks patch tokens by global class attention; the low-ranked become placeholders (parked)."""
        num_prefix = state.num_prefix
        num_patches = x.shape[1] - num_prefix
        rate = self.stage_rate(state.plan, self.stage_index, self.keep_rate(state))
        num_keep = informative_count(num_patches, rate)
        if num_keep >= num_patches:
            return x, state
        scores = state.mine(self.method).global_attention.gather(1, state.positions[:, num_prefix:])  # (B, N)
        keep, placeholders = rank_patches(scores, num_keep, num_prefix)
        state = park_tokens(x, state, placeholders)
        return keep_tokens(x, state, keep)

    def _add_representative(self, x, state):
        """Appends one token summarising the placeholders, weighted by their global class attention."""
        values, positions = state.parked[0]  # (B, M, C), (B, M)
        own = state.mine(self.method)
        weights = own.global_attention.gather(1, positions)  # (B, M)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
        representative = torch.einsum("bm,bmc->bc", weights, values).unsqueeze(1)  # (B, 1, C)
        made_up = state.positions.new_full((x.shape[0], 1), -1)
        x = torch.cat([x, representative], dim=1)
        state = state.replace(positions=torch.cat([state.positions, made_up], dim=1))
        return x, state.with_mine(self.method, own._replace(representative=representative))

    def _spread_representative(self, x, state):
        """Adds the representative token's residual update to every placeholder, then drops it."""
        values, positions = state.parked[0]
        own = state.mine(self.method)
        update = x[:, -1:] - own.representative  # (B, 1, C)
        parked = ((values + update, positions),) + state.parked[1:]
        state = state.replace(positions=state.positions[:, :-1], parked=parked)
        return x[:, :-1], state.with_mine(self.method, own._replace(representative=None))

    def _update_global_attention(self, state, cls_attention):
        """g <- (1 - a) g + a a_cls at the positions of the tokens in the sequence (informative tokens only)."""
        num_prefix = state.num_prefix
        attention = cls_attention[:, num_prefix:]  # (B, N_cur)
        total = state.num_embedding_tokens
        positions = state.positions[:, num_prefix:]
        slots = torch.where(positions < 0, total, positions)  # made-up tokens write to a trash slot
        own = state.mine(self.method)
        if own is None:  # the first layer that tracks it
            own = EvoViTState(attention.new_zeros(attention.shape[0], total + 1))
        previous = own.global_attention
        mixed = (1 - self.momentum) * previous.gather(1, slots) + self.momentum * attention
        return state.with_mine(self.method, own._replace(global_attention=previous.scatter(1, slots, mixed)))
