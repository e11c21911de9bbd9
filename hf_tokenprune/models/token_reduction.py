# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""Token reduction: the per-forward bookkeeping, the registry and the shared decide-then-apply helpers.

A method *decides* (which tokens to keep, which pairs to merge, which tokens to park) and the helpers here *apply*
that decision to the hidden states and to the bookkeeping that travels with them through the layers:

- ``positions``: for each token in the sequence, its index in the embedding sequence (0 is CLS, ``p + 1`` is patch
  ``p``, -1 is a token a method made up, such as EViT's fused token);
- ``sizes`` and ``owner``: for merging methods, how many embedding tokens each token stands for, and which token of
  the sequence now holds each embedding token;
- ``parked``: tokens taken out of the sequence on an identity path, with their positions, so that they can rejoin.

A method also describes itself on its class (`TokenReduction`): its paper and official code, its headline
operating point, the plan under which it removes nothing, its operating points from mild to strong, and what it
needs from a model family (`FEATURES`). The tools (cards, benchmarks, the tuner, support tables, the test matrix)
read these; none keeps a list of method names.

Everything here is part of the remote-code island: it imports only the standard library and torch.
"""

import dataclasses
import difflib
import math
from typing import Any

import torch
from torch import nn

# ----------------------------------------------------------------------------------------------------------------
# What a method is, and what it needs from a family
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Paper:
    """Where a method comes from: its paper, authors and venue, arXiv id and official code (GitHub owner/name)."""

    title: str
    authors: str
    arxiv: str
    code: str | None = None


# What a method may need from a model family (a method's ``needs``); each family's config says which of these it
# provides (``provides``), and a plan that needs more is refused when it is set.
FEATURES = {
    "cls_token": "a CLS token",
    "one_grid": "one patch grid shared by every image of a batch",
    "two_heads": "a classifier with a second head on the mean patch token",
}


def check_fits(field: str, method: Any, plan: dict, provides: Any, family: str, registry: dict) -> None:
    """Refuses, in one line, a plan whose method needs a feature the family does not provide; names the methods of
    ``registry`` that run on the family."""
    for feature, why in method.plan_needs(plan).items():
        if feature not in provides:
            runs = sorted(name for name, cls in registry.items() if set(cls.needs) <= set(provides))
            others = f"the methods that run on it: {runs}" if runs else f"no {field} method runs on it"
            raise ValueError(
                f"{field}['method'] = {plan['method']!r} needs {FEATURES[feature]} ({why}), which {family} does not "
                f"have; {others}."
            )


# ----------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------

REDUCTION_METHODS: dict[str, type["TokenReduction"]] = {}


def register_reduction(name: str):
    """Class decorator that registers a token-reduction method under ``name`` (lower case, digits, underscores)."""

    def wrap(cls):
        if not isinstance(name, str) or not name or not all(c.islower() or c.isdigit() or c == "_" for c in name):
            raise ValueError(
                f"A token-reduction method name must be lower-case letters, digits and '_'; got {name!r}."
            )
        known = REDUCTION_METHODS.get(name)
        same_class = known is not None and (known.__module__, known.__qualname__) == (cls.__module__, cls.__qualname__)
        if known is not None and not same_class:
            raise ValueError(f"Token-reduction method {name!r} is already registered by {known.__qualname__}.")
        cls.method = name
        REDUCTION_METHODS[name] = cls
        return cls

    return wrap


def did_you_mean(name: Any, choices: Any) -> str:
    """`` Did you mean 'evit'?`` for a name close to one of ``choices`` (a typo), else an empty string."""
    close = difflib.get_close_matches(str(name), [str(choice) for choice in choices], n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def get_reduction_class(name: Any) -> type["TokenReduction"]:
    if name not in REDUCTION_METHODS:
        raise ValueError(
            f"token_reduction['method'] = {name!r} is not a known method; allowed: {sorted(REDUCTION_METHODS)}."
            + did_you_mean(name, REDUCTION_METHODS)
        )
    return REDUCTION_METHODS[name]


# ----------------------------------------------------------------------------------------------------------------
# Plan validation helpers (pure Python: used by the config, so errors come at construction)
# ----------------------------------------------------------------------------------------------------------------


def check_options(plan: dict, allowed: dict, field: str) -> dict:
    """Returns ``plan`` with defaults filled in; unknown keys raise a ``ValueError`` that lists the allowed ones."""
    unknown = sorted(set(plan) - set(allowed) - {"method"})
    if unknown:
        raise ValueError(
            f"{field} has unknown option(s) {unknown} for method {plan.get('method')!r}; allowed: {sorted(allowed)}."
        )
    return {"method": plan["method"], **{k: plan.get(k, v) for k, v in allowed.items()}}


def check_keep_rate(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{field} = {value!r} is outside the allowed range (0, 1] (the fraction of tokens kept).")
    return float(value)


def check_int(value: Any, field: str, low: int, high: int, meaning: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        extra = f" ({meaning})" if meaning else ""
        raise ValueError(f"{field} = {value!r} must be an integer in [{low}, {high}]{extra}.")
    return value


def check_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{field} = {value!r} must be true or false.")
    return value


def check_choice(value: Any, field: str, choices: tuple) -> Any:
    if value not in choices:
        raise ValueError(
            f"{field} = {value!r} is not allowed; allowed: {list(choices)}." + did_you_mean(value, choices)
        )
    return value


def check_layers(value: Any, field: str, num_layers: int, low: int = 0) -> list[int]:
    """A strictly increasing list of layer indices in ``[low, num_layers - 1]``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(
            f"{field} = {value!r} must be a non-empty list of layer indices in [{low}, {num_layers - 1}]."
        )
    layers = [
        check_int(v, field, low, num_layers - 1, f"a layer index of this {num_layers}-layer model") for v in value
    ]
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"{field} = {list(value)!r} must be strictly increasing (no repeated or unordered layers).")
    return layers


def scaled_layers(base: list[int], num_layers: int, base_depth: int = 12) -> list[int]:
    """Scales layer indices given for a ``base_depth``-layer model to ``num_layers`` (duplicates removed)."""
    scaled = [min(num_layers - 1, max(0, round(layer * num_layers / base_depth))) for layer in base]
    return sorted(set(scaled))


def grid_of(image_size: Any, patch_size: Any) -> tuple[int, int]:
    """(rows, columns) of patches for an image size and a patch size (ints or pairs)."""
    image = tuple(image_size) if isinstance(image_size, (list, tuple)) else (image_size, image_size)
    patch = tuple(patch_size) if isinstance(patch_size, (list, tuple)) else (patch_size, patch_size)
    return image[0] // patch[0], image[1] // patch[1]


def kept_count(num_tokens: int, keep_rate: float) -> int:
    """``ceil(keep_rate * num_tokens)``, robust to float noise (0.7 * 10 is 7.000000000000001)."""
    return min(num_tokens, max(1, math.ceil(round(keep_rate * num_tokens, 6))))


# ----------------------------------------------------------------------------------------------------------------
# Per-forward state
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TokenState:
    """Bookkeeping that travels with the hidden states through the layers of one forward pass.

    Its fields are what the methods share with the layers, the model and one another (the shared helpers, the
    attention and the heads read them); what only one method needs travels in ``own``, under the method's name
    (`mine`, `with_mine`). Layers never mutate a state; they return a new one (`replace`), so gradient checkpointing
    can replay a layer safely.
    """

    positions: torch.Tensor  # (B, N_cur) index in the embedding sequence, -1 for made-up tokens
    num_prefix: int = 1  # leading tokens (CLS) never dropped or merged
    plan: dict | None = None  # the plan in force for this call: the config's, with a runtime keep rate applied
    reuse: dict | None = None  # the attention-reuse plan in force
    grid: tuple[int, ...] = (0, 0)  # patch grid (rows, columns) of this input; (time, rows, columns) for video
    padding: torch.Tensor | None = None  # (B, T) True at padding slots of the embedding sequence (SigLIP 2 NaFlex)
    parked: tuple = ()  # ((values (B, M, C), positions (B, M)), ...) tokens on the identity path
    # Merged tokens (read by the helpers that keep, restore and pad tokens, and by the attention):
    sizes: torch.Tensor | None = None  # (B, N_cur, 1) embedding tokens merged into each token
    owner: torch.Tensor | None = None  # (B, T) index of the token holding each embedding token
    key_bias: torch.Tensor | None = None  # (B, N_cur) added to every query's logit for each key (log of the size)
    # Read by the attention and the outputs:
    key_policy: torch.Tensor | None = None  # (B, N_cur) 0/1 keys the attention may use (masked training)
    policy_gradient: str = "bounded"  # what the masked attention's backward sends to key_policy (policy_attention)
    # Training objectives, read by the heads:
    aux_logits: tuple = ()  # ((logits (B, labels), weight), ...) auxiliary predictions to train on the labels
    aux_loss: torch.Tensor | None = None  # an auxiliary loss that needs no labels, a batch mean
    own: dict = dataclasses.field(default_factory=dict)  # method name -> what only that method reads

    @classmethod
    def start(
        cls, embeddings: torch.Tensor, grid: tuple[int, int], plan: dict | None, reuse: dict | None = None
    ) -> "TokenState":
        batch, length = embeddings.shape[:2]
        positions = torch.arange(length, device=embeddings.device).expand(batch, length)
        return cls(positions=positions, plan=plan, grid=grid, reuse=reuse)

    @property
    def num_embedding_tokens(self) -> int:
        return math.prod(self.grid) + self.num_prefix

    def replace(self, **changes) -> "TokenState":
        return dataclasses.replace(self, **changes)

    def mine(self, owner: str) -> Any:
        """What ``owner`` (a method's name) left for itself in this state, or None."""
        return self.own.get(owner)

    def with_mine(self, owner: str, value: Any) -> "TokenState":
        """This state with ``owner``'s private state replaced by ``value``."""
        return self.replace(own={**self.own, owner: value})


@dataclasses.dataclass
class AttentionProbe:
    """What a layer's attention can tell a reduction method, computed only when the method asks for it."""

    cls_attention: torch.Tensor | None = None  # (B, N) CLS row of the attention, averaged over heads
    keys: torch.Tensor | None = None  # (B, N, head_dim) keys averaged over heads


def padding_of(state: TokenState) -> torch.Tensor | None:
    """(B, N_cur) True where the current token is padding (it holds a padding slot of the input), or ``None`` when
    the input has no padding. Derived from the positions, so it follows every keep, merge, park and rejoin (a merged
    token holds a real member's position whenever a real token went into it: see ToMe's `merge_tokens`)."""
    if state.padding is None:
        return None
    positions = state.positions
    return state.padding.gather(1, positions.clamp_min(0)) & (positions >= 0)


def attention_key_bias(state: TokenState, dtype: torch.dtype) -> torch.Tensor | None:
    """The per-key bias every query's attention adds: ``state.key_bias`` (ToMe's log sizes) and, for padding keys,
    the most negative value of ``dtype`` (padding is never attended to, as the stock model's padding mask does)."""
    padding = padding_of(state)
    if padding is None:
        return state.key_bias
    bias = torch.zeros(padding.shape, dtype=dtype, device=padding.device).masked_fill(padding, torch.finfo(dtype).min)
    return bias if state.key_bias is None else bias + state.key_bias.to(dtype)


def padding_ranked_last(scores: torch.Tensor, state: TokenState) -> torch.Tensor:
    """``scores`` (B, N_cur - num_prefix) of the non-prefix tokens with padding tokens set to -inf, so that a
    padding token is never kept over a real one."""
    padding = padding_of(state)
    return scores if padding is None else scores.masked_fill(padding[:, state.num_prefix :], -torch.inf)


# ----------------------------------------------------------------------------------------------------------------
# Apply helpers
# ----------------------------------------------------------------------------------------------------------------


def flat_rows(index: torch.Tensor, length: int) -> torch.Tensor:
    """A (B, K) index into sequences of ``length`` tokens as a (B * K,) index into the batch's rows laid end to end."""
    offsets = torch.arange(index.shape[0], device=index.device).unsqueeze(1) * length  # (B, 1)
    return (index + offsets).reshape(-1)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, j]]`` for a (B, N, ...) tensor and a (B, K) index.

    Whole rows are copied (``index_select`` on the flattened batch), one index per token: several times faster
    than ``gather`` with an index expanded over the channels, which reads one index per element.
    """
    batch, length, *rest = x.shape
    rows = x.reshape(batch * length, *rest).index_select(0, flat_rows(index, length))
    return rows.reshape(*index.shape, *rest)


def add_rows(x: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``x`` with ``values[b, j]`` added to token ``index[b, j]`` (repeated indices add up): (B, N, ...)."""
    batch, length, *rest = x.shape
    flat_values = values.reshape(-1, *rest)
    return x.reshape(batch * length, *rest).index_add(0, flat_rows(index, length), flat_values).reshape(x.shape)


def put_rows(x: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``x`` with token ``index[b, j]`` replaced by ``values[b, j]`` (a repeated index keeps one of its values)."""
    batch, length, *rest = x.shape
    flat_values = values.reshape(-1, *rest)
    return x.reshape(batch * length, *rest).index_copy(0, flat_rows(index, length), flat_values).reshape(x.shape)


def descending_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices that sort the last dimension of ``scores`` best first, equal scores in position order.

    Every runtime then keeps the same tokens where scores tie (an untrained scorer gives many equal scores): PyTorch
    sorts stably; an ONNX export becomes a TopK with a constant k (a sort would read its k from the shape at run
    time, which TensorRT refuses), and ONNX's TopK puts the lower index first among equals.
    """
    if torch.onnx.is_in_onnx_export():
        return scores.topk(scores.shape[-1], dim=-1).indices
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def rank_patches(scores: torch.Tensor, num_keep: int, num_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Splits the non-prefix tokens by score: returns (kept, dropped) sequence indices, best first (ties in
    position order, `descending_order`).

    ``scores`` is (B, N_cur - num_prefix); the returned indices point into the full sequence.
    """
    order = descending_order(scores) + num_prefix  # (B, N_patches)
    return order[:, :num_keep], order[:, num_keep:]


def keep_tokens(x: torch.Tensor, state: TokenState, keep: torch.Tensor) -> tuple[torch.Tensor, TokenState]:
    """Keeps the prefix tokens and the tokens at ``keep`` (B, K) sequence indices, in that order."""
    prefix = torch.arange(state.num_prefix, device=x.device).expand(x.shape[0], -1)
    index = torch.cat([prefix, keep], dim=1)  # (B, P + K)
    sizes = None if state.sizes is None else gather_tokens(state.sizes, index)
    key_bias = None if state.key_bias is None else state.key_bias.gather(1, index)
    positions = state.positions.gather(1, index)
    return gather_tokens(x, index), state.replace(positions=positions, sizes=sizes, key_bias=key_bias)


def park_tokens(x: torch.Tensor, state: TokenState, index: torch.Tensor) -> TokenState:
    """Puts the tokens at ``index`` (B, M) on the identity path, with their current values."""
    parked = (gather_tokens(x, index), state.positions.gather(1, index))
    return state.replace(parked=state.parked + (parked,))


def scatter_to_embedding_order(x: torch.Tensor, state: TokenState) -> torch.Tensor:
    """Writes the sequence and every parked token to their embedding positions: (B, T, C).

    Made-up tokens (position -1) are left out; positions that no token holds stay zero.
    """
    batch, _, channels = x.shape
    total = state.num_embedding_tokens
    out = x.new_zeros(batch, total + 1, channels)  # one extra trash slot for made-up tokens
    for values, positions in ((x, state.positions), *state.parked):
        out = put_rows(out, torch.where(positions < 0, total, positions), values)
    return out[:, :total]


def rejoin_parked(x: torch.Tensor, state: TokenState) -> tuple[torch.Tensor, TokenState]:
    """Puts every parked token back: the sequence becomes full length, in embedding order."""
    if not state.parked:
        return x, state
    full = scatter_to_embedding_order(x, state)
    positions = torch.arange(full.shape[1], device=x.device).expand(full.shape[0], -1)
    return full, state.replace(positions=positions, parked=(), sizes=None, key_bias=None)


def restore_full_length(x: torch.Tensor, state: TokenState) -> torch.Tensor:
    """A full-length (B, T, C) sequence in embedding order: parked tokens with the value they had when they left,
    merged tokens copied to every position they stand for."""
    if state.owner is not None:
        return gather_tokens(x, state.owner)
    if x.shape[1] == state.num_embedding_tokens and not state.parked:
        return x  # nothing was removed: the sequence is already in embedding order
    return scatter_to_embedding_order(x, state)


# ----------------------------------------------------------------------------------------------------------------
# Base class of a method
# ----------------------------------------------------------------------------------------------------------------


class MethodDescription:
    """What a method (token reduction or attention reuse) is, for the tools: cards, the benchmark's default plans,
    the tuner, the accuracy benchmark, support refusals and the test matrix read these class attributes; none of
    them keeps a list of method names."""

    method: str = ""
    paper: Paper | None = None
    headline_plan: dict = {}  # the options of its headline operating point (the others at their defaults)
    keep_all_plan: dict | None = None  # options under which it removes nothing (it must then equal the stock model)
    # (option, strengths mildest first) that `operating_point` turns into plans: the tuner's grid and the accuracy
    # benchmark's points.
    operating_points: tuple = ()
    needs: dict = {}  # feature of `FEATURES` a family must provide -> why the method needs it

    @classmethod
    def plan_needs(cls, plan: dict) -> dict:
        """What this plan needs from a family (`needs`, plus what its options add)."""
        return dict(cls.needs)

    @classmethod
    def operating_point(cls, strength: Any, config: Any) -> dict:
        """The plan at one strength of `operating_points` for a model of ``config``."""
        option = cls.operating_points[0]
        return {"method": cls.method, option: strength}


class TokenReduction(MethodDescription, nn.Module):
    """One method's work at one layer. The layer calls three hooks; each returns ``(hidden_states, state)``.

    - ``before_block``: before the layer's attention (rejoin parked tokens, start a stage);
    - ``after_attention``: after the attention residual and before the MLP (where EViT and ToMe act);
    - ``after_block``: after the MLP residual (end a stage).

    Class-level pure-Python helpers describe the plan: ``check_plan`` validates and fills defaults, ``token_counts``
    simulates the token count each layer sees (used for validation, FLOPs and tests), ``build`` says whether a
    layer needs a module at all.
    """

    options: dict = {}  # option name -> default
    # Options that only set amounts: read from the plan in force at every forward, so a built model follows
    # changes to them (keep-rate schedules, runtime overrides). The others are fixed when the model is built.
    runtime_options: tuple = ()
    uses_keep_rate: bool = False
    # Submodules (relative to the method's module) needed only to train; an inference checkpoint leaves them out.
    training_only_modules: tuple = ()

    def __init__(self, plan: dict, config: Any, layer_idx: int):
        super().__init__()
        self.plan = plan
        self.layer_idx = layer_idx
        self.num_layers = config.num_hidden_layers
        self.needs_cls_attention = False
        self.needs_keys = False

    # -- plan (class level, no tensors) --------------------------------------------------------------------------
    @classmethod
    def check_plan(cls, plan: dict, config: Any) -> dict:
        """Validates ``plan`` for ``config`` (depth, image and patch size) and fills its defaults."""
        return check_options(plan, cls.options, "token_reduction")

    @classmethod
    def token_counts(
        cls, plan: dict, num_layers: int, num_patches: int, keep_rate: float | None = None
    ) -> list[tuple[int, int]]:
        """(tokens entering the attention, tokens entering the MLP) of every layer, CLS included."""
        return [(num_patches + 1, num_patches + 1)] * num_layers

    @classmethod
    def extra_macs(cls, plan: dict, config: Any, counts: list[tuple[int, int]]) -> list[int]:
        """Multiply-accumulates per image that the method adds at each layer (scorers, CLS rows, matching)."""
        return [0] * len(counts)

    @classmethod
    def first_active_layer(cls, plan: dict, config: Any) -> int:
        """The first layer whose input sequence changes or that needs its own attention probe (conservative: 0)."""
        return 0

    @classmethod
    def build(cls, plan: dict, config: Any, layer_idx: int) -> "TokenReduction | None":
        return cls(plan, config, layer_idx)

    @classmethod
    def uses_key_bias(cls, plan: dict) -> bool:
        """Whether the plan adds a per-key bias to the attention logits (``state.key_bias``); backends that cannot
        take one are refused."""
        return False

    @classmethod
    def structure(cls, plan: dict) -> dict:
        """The part of a plan that decides which modules exist; it cannot change on a built model."""
        return {key: value for key, value in plan.items() if key not in cls.runtime_options}

    def keep_rate(self, state: TokenState) -> float:
        return state.plan["keep_rate"]

    # -- hooks ----------------------------------------------------------------------------------------------------
    def before_block(self, x: torch.Tensor, state: TokenState):
        return x, state

    def after_attention(self, x: torch.Tensor, state: TokenState, probe: AttentionProbe):
        return x, state

    def after_block(self, x: torch.Tensor, state: TokenState):
        return x, state

    def extra_repr(self) -> str:
        return f"method={self.method!r}, layer={self.layer_idx}"
