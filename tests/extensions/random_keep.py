"""A throwaway token-reduction method defined outside the package, to show that a method is one class and one
registration: ``tests/conftest.py`` imports this module, and the method matrix (every test parametrized over the
registry) runs on it as on the built-in methods.

"Random keep": at each listed layer, after the attention residual, it keeps ``ceil(keep_rate * N)`` of the ``N``
patch tokens chosen by a fixed pseudo-random score of each token's original position (the same for every image, so
the choice is deterministic and batch-independent; padding ranked last), and parks or drops the rest. It has no
parameters and needs nothing of a family (no CLS token, no grid).
"""

import torch

from hf_tokenprune.models.token_reduction import (
    Paper,
    TokenReduction,
    check_keep_rate,
    check_layers,
    check_options,
    keep_tokens,
    kept_count,
    padding_ranked_last,
    park_tokens,
    rank_patches,
    register_reduction,
    scaled_layers,
)


@register_reduction("random_keep")
class RandomKeep(TokenReduction):
    options = {"layers": None, "keep_rate": 0.5}
    runtime_options = ("keep_rate",)
    uses_keep_rate = True
    paper = Paper("A throwaway method of the test suite", "hf_tokenprune's tests", "0000.00000")
    headline_plan = {"keep_rate": 0.5}  # layer 6 of 12
    keep_all_plan = {"keep_rate": 1.0}
    operating_points = ("keep_rate", (0.8, 0.5))

    @classmethod
    def check_plan(cls, plan, config):
        plan = check_options(plan, cls.options, "token_reduction")
        if plan["layers"] is None:
            plan["layers"] = scaled_layers([6], config.num_hidden_layers)
        plan["layers"] = check_layers(plan["layers"], "token_reduction['layers']", config.num_hidden_layers)
        plan["keep_rate"] = check_keep_rate(plan["keep_rate"], "token_reduction['keep_rate']")
        return plan

    @classmethod
    def token_counts(cls, plan, num_layers, num_patches, keep_rate=None):
        rate = plan["keep_rate"] if keep_rate is None else keep_rate
        counts, tokens = [], num_patches + 1
        for layer in range(num_layers):
            attention = tokens
            if layer in plan["layers"]:
                tokens = 1 + kept_count(tokens - 1, rate)
            counts.append((attention, tokens))
        return counts

    @classmethod
    def first_active_layer(cls, plan, config):
        return plan["layers"][0]

    @classmethod
    def build(cls, plan, config, layer_idx):
        return cls(plan, config, layer_idx) if layer_idx in plan["layers"] else None

    def __init__(self, plan, config, layer_idx):
        super().__init__(plan, config, layer_idx)
        self.park_dropped = bool(config.restore_tokens)

    def after_attention(self, x, state, probe):
        num_prefix = state.num_prefix
        num_patches = x.shape[1] - num_prefix
        num_keep = kept_count(num_patches, self.keep_rate(state))
        if num_keep >= num_patches:
            return x, state
        positions = state.positions[:, num_prefix:]
        scores = ((positions * 2654435761 + 97 * self.layer_idx) % 4093).to(torch.float32)  # (B, N) fixed per slot
        keep, drop = rank_patches(padding_ranked_last(scores, state), num_keep, num_prefix)  # padding last
        if self.park_dropped:
            state = park_tokens(x, state, drop)
        return keep_tokens(x, state, keep)
