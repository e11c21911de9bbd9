# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""DynamicViT: a learned predictor decides which tokens to keep before chosen layers.

Rao et al., "DynamicViT: Efficient Vision Transformers with Dynamic Token Sparsification", NeurIPS 2021
(arXiv 2106.02034); reference code raoyongming/DynamicViT.

Before each listed layer a small predictor looks at every patch token (its own features and a global, keep-weighted
average) and gives it a keep probability. After stage ``i`` (0-based) ``int(N * keep_rate ** (i + 1))`` of the
original ``N`` patch tokens remain (floor, as the reference code counts; at least one).

- Inference: top-k of the predicted keep score and a gather, so the sequence really shrinks (static shapes).
- Training, ``train_mode="mask"`` (the paper): hard Gumbel-softmax decisions with a straight-through gradient;
  dropped tokens stay in the sequence but are masked out of every other token's attention, so gradients reach the
  predictor. A keep-ratio loss pulls the kept fraction of each stage towards its target. No training speed-up, and
  ``token_counts`` in training report the full sequence the layers really process.
- ``policy_gradient``: what a hidden key's decision learns in the masked softmax (`policy_attention`). The forward
  is the reference code's either way. ``"official"`` is the reference's derivative, unbounded when a query's
  strongest key is hidden: on a sharp attention it sends hundreds to the predictor, the keep-ratio loss no longer
  counts, and training keeps every token (the reference code and ours alike, step for step:
  ``scripts/dynamicvit_official_training.py``). ``"bounded"`` (default) caps the hidden key's strength at the
  strongest visible key's, and each stage's kept fraction stays at its target.
- ``train_mode`` accepts only ``"mask"``. A former ``"gather"`` mode (Gumbel top-k and a gather in training, kept
  tokens scaled by ``1 + p - stop_gradient(p)``) was removed: that gradient only told the predictor whether a
  *larger* kept token helps, never whether keeping or dropping it does, and on the cluttered digits it learned to
  keep background. A key-visibility variant (``log(1 + p - sg(p))`` on kept keys' logits) was tried and barely beat
  random selection, so no gather mode ships.
"""

import math

import torch
from torch import nn
from transformers import initialization as init

from .token_reduction import (
    Paper,
    TokenReduction,
    TokenState,
    check_choice,
    check_keep_rate,
    check_layers,
    check_options,
    keep_tokens,
    padding_of,
    padding_ranked_last,
    park_tokens,
    rank_patches,
    register_reduction,
    scaled_layers,
)

TRAIN_MODES = ("mask",)
POLICY_GRADIENTS = ("bounded", "official")
PREDICTOR_EPS = 1e-5


def stage_keep_ratios(plan, keep_rate=None):
    """The fraction of the original patch tokens each stage keeps: ``keep_rate ** (i + 1)``."""
    rate = plan["keep_rate"] if keep_rate is None else keep_rate
    return [rate ** (stage + 1) for stage in range(len(plan["layers"]))]


def stage_keep_counts(plan, num_patches, keep_rate=None):
    """Patch tokens kept after each stage: ``int(N * keep_rate ** (i + 1))``, the same float expression as the
    reference code (raoyongming/DynamicViT ``num_keep_node``), so the counts agree to the token; at least one."""
    return [min(num_patches, max(1, int(num_patches * ratio))) for ratio in stage_keep_ratios(plan, keep_rate)]


class KeepPredictor(nn.Module):
    """Per-token keep/drop log-probabilities from local features and a keep-weighted global feature.

    It starts out keeping every token with probability ``initial_keep`` (the output bias; the other weights are
    HF's usual initialisation), so the paper's masked training starts at the kept fraction the ratio loss asks for
    rather than at one half: an untrained predictor would otherwise mask half the keys of every stage at random.
    """

    def __init__(self, width: int, eps: float, initial_keep: float = 0.5):
        super().__init__()
        self.initial_keep = min(max(initial_keep, 0.01), 0.99)
        self.project = nn.Sequential(nn.LayerNorm(width, eps=eps), nn.Linear(width, width), nn.GELU())
        self.classify = nn.Sequential(
            nn.Linear(width, width // 2),
            nn.GELU(),
            nn.Linear(width // 2, width // 4),
            nn.GELU(),
            nn.Linear(width // 4, 2),
            nn.LogSoftmax(dim=-1),
        )
        self.init_tokenprune_weights()

    @torch.no_grad()
    def init_tokenprune_weights(self, std: float = 0.02) -> None:
        """Output bias for a keep probability of ``initial_keep``; HF's loader calls it for missing weights only."""
        log_odds = math.log(self.initial_keep / (1.0 - self.initial_keep))
        init.copy_(self.classify[-2].bias, torch.tensor([0.5 * log_odds, -0.5 * log_odds]))

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """(B, N, 2) log-probabilities of (keep, drop); ``keep`` (B, N, 1) weights the global average."""
        features = self.project(tokens)  # (B, N, d)
        half = features.shape[-1] // 2
        local, global_part = features[..., :half], features[..., half:]
        if keep is None:
            pooled = global_part.mean(dim=1, keepdim=True)
        else:
            pooled = (global_part * keep).sum(dim=1, keepdim=True) / keep.sum(dim=1, keepdim=True).clamp_min(1e-6)
        return self.classify(torch.cat([local, pooled.expand_as(local)], dim=-1))


def real_patches(state: TokenState, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, N_cur - num_prefix, 1): 1 for a real patch token, 0 for padding; ``None`` when the input has none."""
    padding = padding_of(state)
    return None if padding is None else (~padding[:, state.num_prefix :, None]).to(dtype)


@register_reduction("dynamicvit")
class DynamicViTReduction(TokenReduction):
    options = {
        "layers": None,
        "keep_rate": 0.7,
        "ratio_loss_weight": 2.0,
        "train_mode": "mask",
        "policy_gradient": "bounded",
    }
    runtime_options = ("keep_rate", "ratio_loss_weight")
    uses_keep_rate = True
    paper = Paper(
        "DynamicViT: Efficient Vision Transformers with Dynamic Token Sparsification",
        "Rao et al., NeurIPS 2021",
        "2106.02034",
        "raoyongming/DynamicViT",
    )
    headline_plan = {"keep_rate": 0.7}  # layers 3, 6, 9 of 12
    keep_all_plan = {"keep_rate": 1.0}
    operating_points = ("keep_rate", (0.9, 0.7, 0.5))

    @classmethod
    def check_plan(cls, plan, config):
        plan = check_options(plan, cls.options, "token_reduction")
        num_layers = config.num_hidden_layers
        if plan["layers"] is None:
            plan["layers"] = [layer for layer in scaled_layers([3, 6, 9], num_layers) if layer > 0] or [num_layers - 1]
        plan["layers"] = check_layers(plan["layers"], "token_reduction['layers']", num_layers, low=1)
        plan["keep_rate"] = check_keep_rate(plan["keep_rate"], "token_reduction['keep_rate']")
        weight = plan["ratio_loss_weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"token_reduction['ratio_loss_weight'] = {weight!r} must be a non-negative number.")
        plan["ratio_loss_weight"] = float(weight)
        if plan["train_mode"] == "gather":
            raise ValueError(
                "token_reduction['train_mode'] = 'gather' was removed (its gradient taught the predictor to keep "
                "background); allowed: ['mask'], the paper's masked training."
            )
        check_choice(plan["train_mode"], "token_reduction['train_mode']", TRAIN_MODES)
        check_choice(plan["policy_gradient"], "token_reduction['policy_gradient']", POLICY_GRADIENTS)
        return plan

    @classmethod
    def token_counts(cls, plan, num_layers, num_patches, keep_rate=None):
        counts, tokens, kept = [], num_patches + 1, stage_keep_counts(plan, num_patches, keep_rate)
        for layer in range(num_layers):
            if layer in plan["layers"]:
                tokens = 1 + kept[plan["layers"].index(layer)]
            counts.append((tokens, tokens))
        return counts

    @classmethod
    def extra_macs(cls, plan, config, counts):
        # The predictor on the tokens entering each listed layer: d*d + d*d/2 + d*d/8 + d/2 per token.
        width = config.hidden_size
        per_token = width * width + width * (width // 2) + (width // 2) * (width // 4) + (width // 4) * 2
        tokens_before = [counts[0][0]] + [m for _, m in counts[:-1]]
        return [(n - 1) * per_token if layer in plan["layers"] else 0 for layer, n in enumerate(tokens_before)]

    @classmethod
    def first_active_layer(cls, plan, config):
        return plan["layers"][0]

    @classmethod
    def build(cls, plan, config, layer_idx):
        return cls(plan, config, layer_idx) if layer_idx in plan["layers"] else None

    def __init__(self, plan, config, layer_idx):
        super().__init__(plan, config, layer_idx)
        self.stage = plan["layers"].index(layer_idx)
        # The reference predictor's LayerNorm has PyTorch's default eps (1e-5), whatever the backbone's.
        self.predictor = KeepPredictor(config.hidden_size, PREDICTOR_EPS, initial_keep=plan["keep_rate"])
        self.park_dropped = bool(config.restore_tokens)

    def before_block(self, x: torch.Tensor, state: TokenState):
        num_prefix = state.num_prefix
        num_patches = state.num_embedding_tokens - num_prefix
        if self.training:  # the paper's masked training; the ratio loss aims at the rate, as the reference
            return self._mask(x, state, stage_keep_ratios(state.plan)[self.stage])
        target = stage_keep_counts(state.plan, num_patches)[self.stage]
        if target >= x.shape[1] - num_prefix:
            return x, state
        real = real_patches(state, x.dtype)  # padding (SigLIP 2) stays out of the global feature, ranked last
        scores = self.predictor(x[:, num_prefix:], real)[..., 0]  # (B, N_cur) log keep probability
        keep, dropped = rank_patches(padding_ranked_last(scores, state), target, num_prefix)
        if self.park_dropped:
            state = park_tokens(x, state, dropped)
        return keep_tokens(x, state, keep)

    def _mask(self, x, state, target_ratio):
        """The paper's training: hard Gumbel decisions mask attention; a ratio loss steers the kept fraction."""
        num_prefix = state.num_prefix
        previous = state.key_policy  # (B, T) or None: earlier stages' decisions, 1 for prefix tokens
        previous_patches = None if previous is None else previous[:, num_prefix:, None]
        real = real_patches(state, x.dtype)  # (B, N, 1) 0 for padding (SigLIP 2), or None
        weights = previous_patches if real is None else real if previous_patches is None else previous_patches * real
        log_probs = self.predictor(x[:, num_prefix:], weights)
        decision = nn.functional.gumbel_softmax(log_probs, hard=True)[..., 0]  # (B, N) straight-through 0/1
        if weights is not None:  # dropped earlier, or padding: never kept (padding keys stay masked)
            decision = decision * weights[..., 0]
        if real is None:
            kept_fraction = decision.mean(dim=1)
        else:  # the fraction of the image's own patches: padding counts neither as kept nor as dropped
            kept_fraction = decision.sum(dim=1) / real[..., 0].sum(dim=1).clamp_min(1.0)
        ratio_loss = ((kept_fraction - target_ratio) ** 2).mean()
        ratio_loss = ratio_loss * state.plan["ratio_loss_weight"] / len(state.plan["layers"])
        policy = torch.cat([decision.new_ones(decision.shape[0], num_prefix), decision], dim=1)  # (B, T)
        aux_loss = ratio_loss if state.aux_loss is None else state.aux_loss + ratio_loss
        return x, state.replace(key_policy=policy, aux_loss=aux_loss, policy_gradient=state.plan["policy_gradient"])
