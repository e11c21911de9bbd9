# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""ToMe: token merging by bipartite soft matching.

Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023 (arXiv 2210.09461); reference code
facebookresearch/ToMe.

In every layer with ``r > 0``, after the attention residual and before the MLP, the tokens are split into two
alternating sets A and B. Each A token finds its most similar B token (cosine similarity of the layer's keys,
averaged over heads); the ``r`` most similar pairs are merged by a size-weighted average. The CLS token is never
merged. Merged tokens remember how many patches they stand for, and later attention adds ``log(size)`` to the
logits of each key (proportional attention, an additive float bias that keeps SDPA usable).

``r`` is an int (the same every layer), a ``(r, inflection)`` ramp (``inflection`` in [-1, 1]: 0 is constant,
positive merges fewer tokens early and more late; the counts are the reference ``parse_r``'s) or a per-layer list.
A layer never merges more than half of its non-CLS tokens.
"""

import torch

from .token_reduction import (
    AttentionProbe,
    Paper,
    TokenReduction,
    TokenState,
    add_rows,
    check_bool,
    check_options,
    descending_order,
    gather_tokens,
    padding_of,
    register_reduction,
)


def _schedule(value, num_layers: int) -> list[int]:
    """Turns the ``r`` option into a per-layer list of merge counts."""
    field = "token_reduction['r']"
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_pair = isinstance(value, (list, tuple)) and len(value) == 2 and (isinstance(value, tuple) or num_layers != 2)
    if is_int:
        schedule = [value] * num_layers
    elif is_pair:
        r, inflection = value
        if isinstance(r, bool) or not isinstance(r, int) or not isinstance(inflection, (int, float)):
            raise ValueError(f"{field} = {value!r}: a ramp is (r, inflection) with an int r and a float inflection.")
        if not -1.0 <= inflection <= 1.0:
            raise ValueError(f"{field} = {value!r}: the inflection must be in [-1, 1].")
        schedule = _ramp(r, inflection, num_layers)
    elif isinstance(value, (list, tuple)) and len(value) == num_layers:
        schedule = list(value)
    else:
        raise ValueError(
            f"{field} = {value!r} must be an int, an (r, inflection) pair or a list of {num_layers} per-layer ints."
        )
    if any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in schedule):
        raise ValueError(f"{field} = {value!r}: merge counts must be non-negative integers.")
    return schedule


def _ramp(r: int, inflection: float, num_layers: int) -> list[int]:
    """ToMe's ``parse_r``: the first layer's count is truncated (``lo = int(r * (1 - inflection))``), the last is
    ``2 r - lo``, and the layers between follow the line between them, each truncated."""
    low = int(r * (1.0 - inflection))
    step = (2 * r - 2 * low) / max(num_layers - 1, 1)
    return [int(low + step * layer) for layer in range(num_layers)]


def merge_counts(schedule: list[int], num_tokens: int, num_prefix: int = 1) -> list[tuple[int, int, int]]:
    """(tokens entering the attention, tokens entering the MLP, r merged) per layer; r is capped at half the
    non-prefix tokens, as many as set A can give."""
    counts = []
    for r in schedule:
        r = min(r, (num_tokens - num_prefix) // 2)
        counts.append((num_tokens, num_tokens - r, r))
        num_tokens -= r
    return counts


@register_reduction("tome")
class ToMeReduction(TokenReduction):
    options = {"r": 8, "proportional_attention": True}
    runtime_options = ("r",)
    paper = Paper(
        "Token Merging: Your ViT But Faster", "Bolya et al., ICLR 2023", "2210.09461", "facebookresearch/ToMe"
    )
    headline_plan = {"r": 8}
    keep_all_plan = {"r": 0}
    operating_points = ("r", (0.25, 0.35, 0.45, 0.6))  # the fraction of the patch tokens merged over the depth

    @classmethod
    def operating_point(cls, strength, config):
        """``r`` that merges about ``strength`` of the patch tokens over the depth."""
        return {"method": cls.method, "r": max(1, round(strength * config.num_patches / config.num_hidden_layers))}

    @classmethod
    def check_plan(cls, plan, config):
        num_layers = config.num_hidden_layers
        plan = check_options(plan, cls.options, "token_reduction")
        plan["r"] = _schedule(plan["r"], num_layers)
        plan["proportional_attention"] = check_bool(
            plan["proportional_attention"], "token_reduction['proportional_attention']"
        )
        tokens = config.num_patches + 1
        for layer, r in enumerate(plan["r"]):
            if r > (tokens - 1) // 2:
                raise ValueError(
                    f"token_reduction['r'] asks layer {layer} to merge {r} tokens, but it holds {tokens} tokens "
                    f"and can merge at most {(tokens - 1) // 2} (half of its non-CLS tokens); lower r."
                )
            tokens -= r
        return plan

    @classmethod
    def token_counts(cls, plan, num_layers, num_patches, keep_rate=None):
        return [(a, m) for a, m, _ in merge_counts(plan["r"], num_patches + 1)]

    @classmethod
    def extra_macs(cls, plan, config, counts):
        # Bipartite matching: (N/2 x N/2) cosine similarities of head-averaged keys.
        head_dim = config.hidden_size // config.num_attention_heads
        return [((a + 1) // 2) * (a // 2) * head_dim if a > m else 0 for a, m in counts]

    @classmethod
    def first_active_layer(cls, plan, config):
        return next((layer for layer, r in enumerate(plan["r"]) if r > 0), config.num_hidden_layers)

    @classmethod
    def build(cls, plan, config, layer_idx):
        return cls(plan, config, layer_idx)  # every layer: r is a runtime option and may become > 0

    @classmethod
    def uses_key_bias(cls, plan):
        return plan["proportional_attention"] and any(r > 0 for r in plan["r"])

    def __init__(self, plan, config, layer_idx):
        super().__init__(plan, config, layer_idx)
        self.needs_keys = True

    def after_attention(self, x: torch.Tensor, state: TokenState, probe: AttentionProbe):
        num_prefix = state.num_prefix
        r = min(state.plan["r"][self.layer_idx], (x.shape[1] - num_prefix) // 2)
        if r <= 0:
            return x, state
        padding = padding_of(state)
        src, dst, unmerged = bipartite_matching(probe.keys, r, num_prefix, padding)
        x, state = merge_tokens(x, state, src, dst, unmerged, padding)
        if self.plan["proportional_attention"]:
            state = state.replace(key_bias=state.sizes[..., 0].log())
        return x, state


# The score of a pair of padding tokens: above any cosine similarity, so padding merges into padding first.
PADDING_PAIR_SCORE = 2.0


def bipartite_matching(keys: torch.Tensor, r: int, num_prefix: int, padding: torch.Tensor | None = None):
    """Decides which ``r`` tokens of set A (even indices) merge into which tokens of set B (odd indices).

    Returns ``src`` (B, r) and ``unmerged`` (B, N_a - r) indices into A, and ``dst`` (B, r) indices into B. With
    ``padding`` (B, N), True for padding tokens (SigLIP 2's NaFlex inputs), a padding token and a real one never
    pair (a real token could otherwise absorb padding), and pairs of padding tokens come first: the merges are
    spent on padding before any real token is touched, and padding values never change the real tokens' matching.
    """
    metric = keys / keys.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]  # (B, N_a, d), (B, N_b, d)
    scores = a @ b.transpose(1, 2)  # (B, N_a, N_b) cosine similarity
    if padding is not None:
        a_pad, b_pad = padding[:, ::2, None], padding[:, None, 1::2]
        scores = scores.masked_fill(a_pad & b_pad, PADDING_PAIR_SCORE).masked_fill(a_pad != b_pad, -torch.inf)
    # Prefix tokens are never merged: the first (P + 1) // 2 of A as sources, the first P // 2 of B as targets.
    scores[:, : (num_prefix + 1) // 2] = -torch.inf  # (scores is a fresh product: writing into it is safe)
    scores[:, :, : num_prefix // 2] = -torch.inf
    best, best_b = scores.max(dim=-1)  # (B, N_a) each A token's best B match
    # Equal similarities in position order in every runtime; float32 holds the indices exactly.
    order = descending_order(best)  # most similar pairs first
    src = order[:, :r]
    unmerged = order[:, r:].float().topk(order.shape[1] - r, dim=-1, largest=False).values.long()  # spatial order
    dst = best_b.gather(1, src)
    return src, dst, unmerged


def merge_tokens(
    x: torch.Tensor, state: TokenState, src, dst, unmerged, padding: torch.Tensor | None = None
) -> tuple[torch.Tensor, TokenState]:
    """Applies a matching: size-weighted average of merged tokens; sizes, positions and owner follow.

    With ``padding`` (B, N), True for padding tokens (SigLIP 2: `padding_of` the state), a pair of a real token and
    a padding one is merged only when a layer's ``r`` leaves no other choice (`bipartite_matching` ranks such pairs
    last); then the padding weighs nothing and the merged token is real (its position a real member's), so padding
    never changes a real token and a real token never becomes padding."""
    batch, length, _ = x.shape
    positions = state.positions
    sizes = state.sizes if state.sizes is not None else x.new_ones(batch, length, 1)
    owner = state.owner if state.owner is not None else torch.arange(length, device=x.device).expand(batch, -1)

    # A tokens sit at even sequence indices, B tokens at odd ones. The merged sequence is the unmerged A tokens,
    # then every B token; each merged A token is added into its B target, at ``num_unmerged + dst``.
    num_unmerged = unmerged.shape[1]
    odd = (torch.arange(length // 2, device=x.device) * 2 + 1).expand(batch, -1)  # (B, N_b)
    kept = torch.cat([unmerged * 2, odd], dim=1)  # (B, N')
    targets, sources = dst + num_unmerged, src * 2
    # Where each old token went: kept tokens to their new index, merged A tokens to their B target.
    ranks = torch.arange(kept.shape[1], device=x.device).expand(batch, -1)
    destination = torch.zeros_like(positions).scatter(1, kept, ranks).scatter(1, sources, targets)  # (B, N)

    # Size-weighted sums and the sizes travel together: one gather of the kept tokens, one gather of the sources
    # and one row sum into the targets for both.
    weights = sizes if padding is None else sizes * counted_members(padding, destination, kept.shape[1])
    values = torch.cat([x if state.sizes is None and padding is None else x * weights, weights], dim=-1)
    merged = add_rows(gather_tokens(values, kept), targets, gather_tokens(values, sources))  # (B, N', C + 1)
    new_sizes = merged[..., -1:]  # (B, N', 1)
    new_x = merged[..., :-1] / new_sizes  # size-weighted average
    new_positions = positions.gather(1, kept)
    if padding is not None:
        new_positions = real_position_first(new_positions, positions, padding, kept, sources, targets)
    if state.num_prefix > 1:  # the prefix tokens in B move up to the front
        order, new_index = prefix_first_order(state.num_prefix, num_unmerged, new_x.shape[1], x.device)
        new_x, new_sizes, new_positions = (
            gather_tokens(t, order.expand(batch, -1)) for t in (new_x, new_sizes, new_positions)
        )
        destination = new_index[destination]
    return new_x, state.replace(sizes=new_sizes, positions=new_positions, owner=destination.gather(1, owner))


def counted_members(padding: torch.Tensor, destination: torch.Tensor, length: int) -> torch.Tensor:
    """(B, N, 1): whether a token's value counts in the merged token it goes to (``destination`` (B, N) of
    ``length`` merged tokens): every real token, and padding only where no real token joins it."""
    real = (~padding)[..., None]  # (B, N, 1)
    group_real = add_rows(torch.zeros(padding.shape[0], length, 1, device=padding.device), destination, real.float())
    return real | (gather_tokens(group_real, destination) == 0)  # (B, N, 1) bool, as a 0/1 weight


def real_position_first(new_positions, positions, padding, kept, sources, targets) -> torch.Tensor:
    """``new_positions`` (B, N') where a padding target that took in real sources gets the smallest real source's
    position, so the merged token counts as real."""
    none = torch.iinfo(positions.dtype).max
    real_sources = torch.where(padding.gather(1, sources), none, positions.gather(1, sources))  # (B, r)
    first_real = torch.full_like(new_positions, none).scatter_reduce(1, targets, real_sources, reduce="amin")
    return torch.where(padding.gather(1, kept) & (first_real < none), first_real, new_positions)


def prefix_first_order(num_prefix: int, num_unmerged: int, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A merged sequence is (unmerged A tokens, B tokens); with more than one prefix token, those in B (odd
    indices) would sit after the A tokens. Returns the order (1, N') that puts the prefix tokens first, in their
    order, and for each old index its new one (N',). With one prefix token (CLS, in A) or none the order is the
    identity."""
    in_a, in_b = (num_prefix + 1) // 2, num_prefix // 2
    prefix = [index // 2 if index % 2 == 0 else num_unmerged + index // 2 for index in range(num_prefix)]
    order = [*prefix, *range(in_a, num_unmerged), *range(num_unmerged + in_b, length)]  # prefix in its own order
    new_index = [0] * length
    for new, old in enumerate(order):
        new_index[old] = new
    return torch.tensor([order], device=device), torch.tensor(new_index, device=device)
