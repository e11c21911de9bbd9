# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""What every TokenPrune family shares: the probed attention, the layer that runs a plan's hooks, the loop that
threads a `TokenState` through the layers, and the pretrained-model plumbing (loading, initialisation, inference
checkpoints, saving).

A family file writes only what differs: where its prefix tokens are (its config's ``num_prefix_tokens``), how its
layer is laid out (three small methods of its layer: the attention branch, the residual add, the MLP branch) and the
names of its stock classes. Part of the remote-code island: only torch, transformers and siblings.
"""

import copy
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.conversion_mapping import get_checkpoint_conversion_mapping
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.vit.modeling_vit import eager_attention_forward
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from .attention_backends import attention_with_key_bias, check_attention_backend
from .configuration_tokenprune_common import TOKEN_BOOKKEEPING
from .methods import ATTENTION_REUSE_METHODS, REDUCTION_METHODS, get_reduction_class, get_reuse_class
from .token_reduction import (
    AttentionProbe,
    TokenState,
    attention_key_bias,
    check_keep_rate,
    grid_of,
    restore_full_length,
)

REUSE = "attention_reuse"  # the name attention reuse keeps its state under in a `TokenState`


@dataclass
class TokenPruneModelOutput(BaseModelOutputWithPooling):
    """`BaseModelOutputWithPooling` plus per-layer token bookkeeping.

    Args:
        token_counts: per layer, (tokens entering the attention, tokens entering the MLP), prefix tokens included.
        token_positions: per layer, a (batch, tokens in the MLP) tensor: the index of each token in the embedding
            sequence (prefix tokens first, then patch ``p`` at ``num_prefix + p`` in row-major order, -1 a token a
            method made up).
        token_owner: per layer, ``None`` or, for merging methods, a (batch, embedding tokens) tensor: the index of
            the token in that layer's MLP sequence that holds each embedding token.
        patch_grid: (rows, columns) of patches of this input.
        aux_logits: auxiliary predictions made in training, as ((logits, weight), ...) (Cropr's heads).
        aux_loss: an auxiliary loss that needs no labels, a batch mean (DynamicViT's keep-ratio loss).
        token_policy: ``None`` or, in DynamicViT's masked training, the final (batch, tokens) 0/1 keep decision.
        layer_states: per layer, the `TokenState` after it, to restore that layer's output to the full grid.
    """

    token_counts: tuple | None = None
    token_positions: tuple | None = None
    token_owner: tuple | None = None
    patch_grid: tuple | None = None
    aux_logits: tuple | None = None
    aux_loss: torch.FloatTensor | None = None
    token_policy: torch.Tensor | None = None
    layer_states: tuple | None = None


@dataclass
class TokenPruneImageClassifierOutput(ImageClassifierOutput):
    """`ImageClassifierOutput` plus the token bookkeeping of `TokenPruneModelOutput`; ``aux_loss`` is the part
    of ``loss`` that comes from auxiliary objectives (already included in ``loss``)."""

    aux_loss: torch.FloatTensor | None = None
    token_counts: tuple | None = None
    token_positions: tuple | None = None
    token_owner: tuple | None = None
    patch_grid: tuple | None = None
    token_policy: torch.Tensor | None = None


# What a head's output passes on from its base model's output (each where the head's output class has the field).
PASSED_THROUGH = ("hidden_states", "attentions", *TOKEN_BOOKKEEPING)


def passed_through(outputs, output_class) -> dict:
    """The hidden states, attentions and token bookkeeping of a base model's ``outputs`` that ``output_class``
    carries, as keyword arguments for it."""
    names = output_class.__dataclass_fields__  # (not dataclasses.fields: torch.compile cannot trace it)
    return {name: getattr(outputs, name) for name in PASSED_THROUGH if name in names}


def mean_of_tokens(x, state, start: int = 0) -> torch.Tensor:
    """The average of the tokens of ``x`` (B, N, C) from ``start`` on (past the prefix tokens, for a head that
    averages the patches), as the stock model's average pooling sees it: a merged token counts for every embedding
    token it holds (``state.sizes``, ToMe's rule), a token a masked-training policy dropped counts for none
    (``state.key_policy``); a full-length restored sequence is averaged as it is."""
    weights = None if state is None else state.sizes if state.sizes is not None else state.key_policy
    if weights is None or weights.shape[1] != x.shape[1]:
        return x[:, start:].mean(dim=1)
    weights = weights.reshape(x.shape[0], x.shape[1], 1)[:, start:].to(x.dtype)
    return (x[:, start:] * weights).sum(dim=1) / weights.sum(dim=1)


def cls_attention_row(query, key, attention_mask, scaling):
    """The CLS token's attention over all keys, averaged over heads: (B, N). Costs O(N * d), not O(N^2 * d)."""
    logits = (query[:, :, :1] @ key.transpose(-1, -2)) * scaling  # (B, H, 1, N)
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dtype != torch.bool:
        logits = logits + attention_mask[..., :1, :]
    dtype = torch.promote_types(query.dtype, torch.float32)  # at least float32; float64 stays float64
    return logits.softmax(dim=-1, dtype=dtype).mean(dim=1)[:, 0].to(query.dtype)


def policy_attention(query, key, value, policy, scaling, eps=1e-6, gradient="bounded"):
    """DynamicViT's masked softmax: a key is visible if its policy is 1, and always to itself; gradients reach the
    (straight-through) policy. Returns (B, N, H, d) like the attention interfaces.

    The forward is the reference code's. ``gradient`` says what a hidden key's decision learns: ``"official"`` the
    reference's derivative, ``exp(logit) / sum(visible exp(logits))``, which is unbounded when the query's strongest
    key is hidden (a sharp attention then sends 1e4-1e6 to the predictor and swamps the keep-ratio loss);
    ``"bounded"`` the same with the hidden key's strength capped at the strongest key the query sees, so the
    decision learns at most what revealing an equally strong key would change."""
    logits = (query @ key.transpose(-1, -2)) * scaling  # (B, H, N, N)
    logits = logits - logits.amax(dim=-1, keepdim=True)
    length = logits.shape[-1]
    eye = torch.eye(length, device=logits.device, dtype=torch.float32)
    visible = policy[:, None, None, :].float()
    visible = visible + (1.0 - visible) * eye  # (B, 1, N, N)
    strength = logits.float().exp()
    if gradient == "bounded":  # hidden keys are multiplied by 0 below: the forward does not change
        seen = visible > 0.5
        strongest = strength.masked_fill(~seen, 0.0).amax(dim=-1, keepdim=True).detach()
        strength = torch.where(seen, strength, torch.minimum(strength, strongest))
    weights = strength * visible
    weights = (weights + eps / length) / (weights.sum(dim=-1, keepdim=True) + eps)
    return (weights.to(value.dtype) @ value).transpose(1, 2)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The second half of the last dimension, negated, then the first (rotary embeddings)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class ProbedAttentionMixin:
    """The forward of an attention with ``q_proj``/``k_proj``/``v_proj`` and an output projection that can also
    report its CLS attention row and its head-averaged keys.

    The attention still goes through the configured interface (SDPA by default); the probes are computed from the
    same q/k only when a reduction method asks for them. A ``key_policy`` (DynamicViT training) switches to the
    masked softmax of ``policy_attention``; a ``key_bias`` (ToMe's proportional attention) is added to the logits.
    A family names its output projection, scaling and dropout when they differ from ViT's. ``position_embeddings``
    (cos, sin), each (B, 1, N, head_dim) with one row per token in the sequence, rotate the queries and keys first
    (rotary position embeddings: DINOv3).
    """

    output_projection = "o_proj"

    def attention_scaling(self) -> float:
        return self.scaling

    def attention_dropout_rate(self) -> float:
        return self.attention_dropout

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        probe_cls=False,
        probe_keys=False,
        key_policy=None,
        key_bias=None,
        policy_gradient="bounded",
        position_embeddings=None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, H, N, d)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if position_embeddings is not None:
            cos, sin = position_embeddings
            query, key = query * cos + rotate_half(query) * sin, key * cos + rotate_half(key) * sin

        scaling = self.attention_scaling()
        options = {"dropout": self.attention_dropout_rate() if self.training else 0.0, "scaling": scaling}
        if key_policy is not None:
            attn_output = policy_attention(query, key, value, key_policy, scaling, gradient=policy_gradient)
            attn_weights = None
        elif key_bias is not None:
            attn_output, attn_weights = attention_with_key_bias(
                self, query, key, value, attention_mask, key_bias, **options, **kwargs
            )
        else:
            interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
            attn_output, attn_weights = interface(self, query, key, value, attention_mask, **options, **kwargs)
        output = getattr(self, self.output_projection)(attn_output.reshape(*input_shape, -1).contiguous())

        probe = None
        if probe_cls or probe_keys:
            cls_mask = attention_mask if key_bias is None else key_bias[:, None, None, :].to(query.dtype)
            probe = AttentionProbe(
                cls_attention=cls_attention_row(query, key, cls_mask, scaling) if probe_cls else None,
                keys=key.mean(dim=1) if probe_keys else None,
            )
        return output, attn_weights, probe


class TokenPruneLayerMixin:
    """A layer that runs its plan's token-reduction hooks before the block, between attention and MLP, and after
    the block, and that can replace its self-attention by attention reuse. It takes and returns a `TokenState` and
    a trace of what it computed.

    A family layer calls ``build_attention_reuse`` first and ``build_token_reduction`` last in its ``__init__``,
    names its attention module and the norm before it in ``attention_parts``, and writes three small methods:
    ``attention_branch`` (what is added to the residual, and the probe), ``add_branch`` (dropout or drop path, then
    the residual) and ``mlp_branch``.
    """

    attention_parts = ("attention", "layernorm_before")

    def build_attention_reuse(self, config, layer_idx: int) -> bool:
        """Builds this layer's attention reuse; returns whether the layer keeps its own attention weights."""
        self.layer_idx = layer_idx
        reuse = config.attention_reuse
        self.attention_reuse = (
            None if reuse is None else get_reuse_class(reuse["method"]).build(reuse, config, layer_idx)
        )
        return self.attention_reuse is None or reuse["keep_replaced_attention"]

    def build_token_reduction(self, config, layer_idx: int) -> None:
        """Builds this layer's module of the token-reduction plan (or none), and freezes replaced attention."""
        plan = config.token_reduction
        self.token_reduction = (
            None if plan is None else get_reduction_class(plan["method"]).build(plan, config, layer_idx)
        )
        self.freeze_replaced_attention()

    def freeze_replaced_attention(self) -> None:
        """A reused layer keeps its own attention for stock checkpoints and ``disable_plans``, never trained."""
        if self.attention_reuse is not None and hasattr(self, self.attention_parts[0]):
            for part in self.attention_parts:
                getattr(self, part).requires_grad_(False)

    def drop_replaced_attention(self) -> list[str]:
        """Deletes the unused attention of a reused layer; returns the names of the removed parts."""
        if self.attention_reuse is None or not hasattr(self, self.attention_parts[0]):
            return []
        for part in self.attention_parts:
            delattr(self, part)
        return list(self.attention_parts)

    def forward(self, hidden_states, attention_mask=None, state=None, **kwargs):
        reduction = self.token_reduction if state.plan is not None else None  # no plan in force: a stock layer
        if reduction is not None:
            hidden_states, state = reduction.before_block(hidden_states, state)
        attention_tokens = hidden_states.shape[1]

        # Self attention, or its reuse
        residual = hidden_states
        if self.attention_reuse is not None and state.reuse is not None:
            attention_output, state = self._reuse_attention(hidden_states, state)
            probe = None
        else:
            attention_output, probe = self._attend(hidden_states, attention_mask, state, reduction, **kwargs)
            if state.reuse is not None:  # what a later reused layer starts from: (prefix rows, patch rows)
                prefix = state.num_prefix
                state = state.with_mine(REUSE, (attention_output[:, :prefix], attention_output[:, prefix:]))
        hidden_states = self.add_branch(attention_output, residual)
        if reduction is not None:
            hidden_states, state = reduction.after_attention(hidden_states, state, probe)
        trace = (attention_tokens, hidden_states.shape[1], state.positions, state.owner)

        # Fully connected
        hidden_states = self.add_branch(self.mlp_branch(hidden_states), hidden_states)
        if reduction is not None:
            hidden_states, state = reduction.after_block(hidden_states, state)
        return hidden_states, state, trace

    def _attend(self, hidden_states, attention_mask, state, reduction, **kwargs):
        if attention_mask is not None and state.key_policy is not None:
            raise ValueError(
                "attention_mask cannot be combined with a plan that masks keys in training (DynamicViT): call "
                "model.eval(), or train without an attention_mask."
            )
        if not hasattr(self, self.attention_parts[0]):
            raise ValueError(
                f"layer {self.layer_idx} reuses attention and this checkpoint dropped its own attention weights "
                "(keep_replaced_attention=false), so it cannot run with disable_plans=True."
            )
        return self.attention_branch(
            hidden_states,
            attention_mask,
            probe_cls=reduction is not None and reduction.needs_cls_attention,
            probe_keys=reduction is not None and reduction.needs_keys,
            key_policy=state.key_policy,
            policy_gradient=state.policy_gradient,
            # ToMe's proportional attention (log(size) added to each key's logits) and the input's padding keys
            key_bias=attention_key_bias(state, hidden_states.dtype),
            **kwargs,
        )

    def _reuse_attention(self, hidden_states, state):
        """This layer's attention output from the previous one: prefix rows reused, patch rows through Phi."""
        last = state.mine(REUSE)
        if hidden_states.shape[1] != state.num_embedding_tokens or last is None:
            raise ValueError(
                f"attention reuse at layer {self.layer_idx} needs the full patch grid and an earlier attention "
                f"output, but the sequence holds {hidden_states.shape[1]} of {state.num_embedding_tokens} tokens; "
                "reuse attention only in layers before the token reduction starts."
            )
        prefix, patches = last
        patches = self.attention_reuse(patches, state.grid)  # (B, N, C)
        return torch.cat([prefix, patches], dim=1), state.with_mine(REUSE, (prefix, patches))


class LayerScaleLayerMixin:
    """The branches of a layer with layer scale (DINOv2, DINOv3): ``norm1``, attention, ``layer_scale1``; drop path
    and the residual; ``norm2``, MLP, ``layer_scale2``. The reused branch is the attention's output after layer
    scale."""

    attention_parts = ("norm1", "attention", "layer_scale1")

    def attention_branch(self, hidden_states, attention_mask, **options):
        attention_output, _, probe = self.attention(self.norm1(hidden_states), attention_mask, **options)
        return self.layer_scale1(attention_output), probe

    def add_branch(self, branch, residual):
        return self.drop_path(branch) + residual

    def mlp_branch(self, hidden_states):
        return self.layer_scale2(self.mlp(self.norm2(hidden_states)))


def check_pixel_values(pixel_values, config, interpolate_pos_encoding):
    """Clear errors for inputs that would otherwise fail deep inside with a shape error."""
    if pixel_values is None:
        raise ValueError("pixel_values is required: a (batch, channels, height, width) tensor.")
    if pixel_values.dim() != 4:
        raise ValueError(
            f"pixel_values must be (batch, channels, height, width); got shape {tuple(pixel_values.shape)}."
        )
    if pixel_values.shape[1] != config.num_channels:
        raise ValueError(
            f"pixel_values has {pixel_values.shape[1]} channels but config.num_channels = {config.num_channels}."
        )
    height, width = pixel_values.shape[-2:]
    expected = grid_of(config.image_size, 1)
    if not interpolate_pos_encoding and (height, width) != expected:
        raise ValueError(
            f"pixel_values are {height}x{width} but config.image_size is {expected[0]}x{expected[1]}; resize the "
            "images or pass interpolate_pos_encoding=True."
        )
    rows, columns = grid_of((height, width), config.patch_size)
    if rows < 1 or columns < 1:
        raise ValueError(f"pixel_values are {height}x{width}, smaller than one patch ({config.patch_size}).")
    return rows, columns


def keeps_every_token(plan, num_layers: int, num_patches: int, keep_rate: float | None = None) -> bool:
    """Whether ``plan`` (with ``keep_rate``, if given) leaves the sequence of ``num_patches`` patch tokens whole, in
    place, in every layer: no plan, or a keep-all one."""
    if plan is None:
        return True
    counts = get_reduction_class(plan["method"]).token_counts(plan, num_layers, num_patches, keep_rate)
    return all(count == num_patches + 1 for layer in counts for count in layer)  # the methods count one prefix


def check_mask_fits(plan, reuse, num_layers: int, grid: tuple[int, ...]) -> None:
    """An attention mask describes the input sequence: it is refused, in one line, when the plans in force change
    that sequence for this input (a reduction that removes or merges tokens, or attention reuse); a keep-all plan
    or none leaves its meaning intact."""
    if reuse is not None:
        raise ValueError("attention_mask cannot be combined with attention_reuse: reused layers compute no attention.")
    if not keeps_every_token(plan, num_layers, math.prod(grid)):
        raise ValueError(
            f"attention_mask cannot be combined with token_reduction ({plan['method']}) as it runs on this input: "
            "the sequence changes length, so the mask would no longer match it; use a keep-all plan or "
            "disable_plans=True."
        )


def _same_structure(plan, built_plan) -> bool:
    if plan is None or built_plan is None:
        return plan is built_plan
    method = get_reduction_class(plan["method"])
    return plan["method"] == built_plan["method"] and method.structure(plan) == method.structure(built_plan)


def plan_in_force(config, built_plans, keep_rate):
    """The config's current plan with a runtime keep rate applied; refuses structural changes since the build."""
    plan, built_plan, built_reuse = config.token_reduction, *built_plans
    if not _same_structure(plan, built_plan) or config.attention_reuse != built_reuse:
        runtime = [] if plan is None else list(get_reduction_class(plan["method"]).runtime_options)
        raise ValueError(
            f"config.token_reduction or config.attention_reuse changed since the model was built (token_reduction "
            f"{built_plan} -> {plan}, attention_reuse {built_reuse} -> {config.attention_reuse}); on a built model "
            f"only token_reduction's {runtime} may change. Build a new model (from_pretrained / from_config) for "
            "another plan."
        )
    if keep_rate is None:
        return plan
    if plan is None or not get_reduction_class(plan["method"]).uses_keep_rate:
        with_rate = sorted(name for name, cls in REDUCTION_METHODS.items() if cls.uses_keep_rate)
        method = None if plan is None else plan["method"]
        raise ValueError(
            f"keep_rate={keep_rate!r} was given, but method {method!r} has none; methods with a keep "
            f"rate: {with_rate}."
        )
    return {**plan, "keep_rate": check_keep_rate(keep_rate, "keep_rate")}


class TokenPruneModelMixin:
    """The parts of a family's base-model forward that do not depend on the family: checking the inputs and the
    plan in force, threading a `TokenState` through the layers, and the bookkeeping of the output.

    A family model sets ``self.built_plans = copy.deepcopy((config.token_reduction, config.attention_reuse))`` in
    its ``__init__`` (``remember_built_plans``) and calls ``start_plans``, ``run_layers`` and ``bookkeeping``.
    """

    def remember_built_plans(self) -> None:
        """The plans the layers were built for: runtime options may change in the config, the rest may not."""
        self.built_plans = copy.deepcopy((self.config.token_reduction, self.config.attention_reuse))

    def start_plans(self, pixel_values, interpolate_pos_encoding, attention_mask, keep_rate, disable_plans):
        """Checks the inputs; returns (patch grid, plan in force, reuse in force, pixel values in the weights'
        dtype)."""
        grid = self.input_grid(pixel_values, interpolate_pos_encoding)
        plan = None if disable_plans else plan_in_force(self.config, self.built_plans, keep_rate)
        reuse = None if disable_plans else self.config.attention_reuse
        check_attention_backend(plan, self.config._attn_implementation)  # a runtime option may have added a bias
        if attention_mask is not None:
            check_mask_fits(plan, reuse, self.config.num_hidden_layers, grid)
        expected_dtype = next(self.embeddings.parameters()).dtype
        return grid, plan, reuse, pixel_values.to(expected_dtype)

    def input_grid(self, pixel_values, interpolate_pos_encoding) -> tuple[int, int]:
        """Checks ``pixel_values`` (B, C, H, W); returns their patch grid (rows, columns)."""
        return check_pixel_values(pixel_values, self.config, interpolate_pos_encoding)

    def run_layers(self, layers, hidden_states, grid, plan, reuse, attention_mask=None, padding=None, **kwargs):
        """Threads a `TokenState` through ``layers``; returns (hidden states, final state, per-layer traces,
        per-layer states). The output is full length when the config asks to restore tokens. ``padding`` (B, T),
        True at padding slots (SigLIP 2's NaFlex inputs), travels in the state: padding keys are masked in every
        layer and the methods rank padding last and merge it only with padding."""
        if attention_mask is not None:  # no mask is built when there is none to apply (it would not follow a
            # shrinking sequence: flex's BlockMask, or the full-length mask torch.export materialises)
            attention_mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask
            )
        state = TokenState.start(hidden_states, grid, plan, reuse)
        state = state.replace(num_prefix=self.config.num_prefix_tokens, padding=padding)
        traces, states = [], []
        for layer in layers:
            hidden_states, state, trace = layer(hidden_states, attention_mask, state, **kwargs)
            traces.append(trace)
            states.append(state)
        if self.config.restore_tokens:
            hidden_states = restore_full_length(hidden_states, state)
        return hidden_states, state, traces, states

    @staticmethod
    def bookkeeping(traces, state, grid, states) -> dict:
        """The token-bookkeeping fields of `TokenPruneModelOutput`, from what `run_layers` returns."""
        return dict(
            token_counts=tuple((t[0], t[1]) for t in traces),
            token_positions=tuple(t[2] for t in traces),
            token_owner=tuple(t[3] for t in traces),
            patch_grid=grid,
            aux_logits=state.aux_logits,
            aux_loss=state.aux_loss,
            token_policy=state.key_policy,
            layer_states=tuple(states),
        )


def _source_file(cls: type) -> Path | None:
    try:
        return Path(inspect.getsourcefile(cls)).resolve()
    except (TypeError, OSError):
        return None  # defined in an interactive session: certainly not a file save_pretrained copies


def island_files(model) -> set[Path]:
    """The Python files ``save_pretrained`` copies into a checkpoint of ``model``: the model's and its config's
    defining files and, recursively, the files they import with ``from .name import x``."""
    files = set()
    for cls in (type(model), type(model.config)):
        source = _source_file(cls)
        if source is not None:
            files |= {source, *(Path(f).resolve() for f in get_relative_import_files(source))}
    return files


def check_shareable(model) -> None:
    """Refuses to share a model whose plan names a method that its checkpoint's code would not contain.

    A method is built in when its class is defined in one of the files ``save_pretrained`` copies (`island_files`);
    one registered at runtime by user code (``register_reduction`` in a script or notebook) is not, and a model loaded
    with ``trust_remote_code=True`` elsewhere could not run it.

    Raises:
        ValueError: naming the method, where it is defined, and the built-in methods.
    """
    island = island_files(model)
    for field, registry in (("token_reduction", REDUCTION_METHODS), ("attention_reuse", ATTENTION_REUSE_METHODS)):
        plan = getattr(model.config, field, None)
        if not plan:
            continue
        builtin = sorted(name for name, cls in registry.items() if _source_file(cls) in island)
        cls = registry.get(plan["method"])
        if cls is None or _source_file(cls) not in island:
            where = "an unknown place" if cls is None else f"{cls.__module__} ({_source_file(cls) or 'no file'})"
            raise ValueError(
                f"{field}['method'] = {plan['method']!r} is not built into hf_tokenprune: it is registered by "
                f"{where}, a file that save_pretrained does not copy, so the model could not run where it is loaded "
                f"with trust_remote_code=True. Built-in methods: {builtin}. Add the method to hf_tokenprune/models "
                "(see CONTRIBUTING.md) to share such a model."
            )


class TokenPrunePreTrainedMixin:
    """Loading, initialisation, inference checkpoints and saving, shared by every family's pretrained model.

    A family sets ``stock_conversion`` (the transformers class whose checkpoint renamings apply to it),
    ``legacy_layout_marker`` (a key fragment found only in that older on-disk layout) and ``auto_classes``
    (Auto class -> our class name) that ``save_pretrained`` writes to the config's ``auto_map``.
    """

    stock_conversion = "ViTModel"
    legacy_layout_marker = "encoder.layer."
    auto_classes: dict = {}

    def _check_and_adjust_attn_implementation(self, attn_implementation, *args, **kwargs):
        """HF's check, then ours: a backend the plan cannot run on is refused at load time and by
        ``set_attn_implementation`` alike."""
        implementation = super()._check_and_adjust_attn_implementation(attn_implementation, *args, **kwargs)
        check_attention_backend(self.config.token_reduction, implementation)
        return implementation

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        for module in model.modules():  # loading materialises fresh parameters, all trainable
            if isinstance(module, TokenPruneLayerMixin):
                module.freeze_replaced_attention()
        return loaded

    @torch.no_grad()
    def initialize_weights(self):
        """HF's initialisation, then what its path for code outside transformers skips (it passes over every module
        without parameters of its own): the stock `_init_weights` branches of such modules (CLIP's and SigLIP's
        attention and MLP initialise their projections there; skipped, they keep the generic initialisation) and
        our methods' modules (``init_tokenprune_weights``). Both use the guarded ``transformers.initialization``
        functions, so weights loaded from a checkpoint stay untouched."""
        super().initialize_weights()

        def visit(module: torch.nn.Module, owner: PreTrainedModel) -> None:
            for child in module.children():
                visit(child, child if isinstance(child, PreTrainedModel) else owner)
            has_own = any(True for _ in module.parameters(recurse=False)) or any(
                buffer is not None for buffer in module.buffers(recurse=False)
            )
            if not has_own:
                owner._init_weights(module)

        visit(self, self)
        std = getattr(self.config, "initializer_range", 0.02)
        for module in self.modules():
            init_own = getattr(module, "init_tokenprune_weights", None)
            if init_own is not None:
                init_own(std)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also takes a state dict in the older layout that ``save_pretrained`` writes: the Trainer reads checkpoint
        files raw with this method when it resumes or loads the best model, and would otherwise find every layer
        weight missing (and only warn)."""
        renamings = get_checkpoint_conversion_mapping(self.stock_conversion) or []
        if renamings and any(self.legacy_layout_marker in key for key in state_dict):
            renamed = {}
            for key, value in state_dict.items():
                for renaming in renamings:
                    if hasattr(renaming, "rename_source_key"):
                        key, _ = renaming.rename_source_key(key)
                renamed[key] = value
            state_dict = renamed
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def drop_training_modules(self) -> list[str]:
        """Removes what only training needs (Cropr's auxiliary heads; with attention reuse, the unused attention
        weights of reused layers) and records it in the config, so a saved checkpoint loads without them, with no
        missing keys and the same eval logits. Returns the names of the removed modules."""
        removed = []
        for name, layer in self.named_modules():
            if not isinstance(layer, TokenPruneLayerMixin):
                continue
            reduction = layer.token_reduction
            for path in getattr(reduction, "training_only_modules", ()) if reduction is not None else ():
                parent_path, _, child = path.rpartition(".")
                try:
                    parent = reduction.get_submodule(parent_path)
                except AttributeError:  # this layer's module has no such part (e.g. Cropr's rejoin layer)
                    continue
                if hasattr(parent, child):
                    delattr(parent, child)
                    removed.append(f"{name}.token_reduction.{path}")
            removed += [f"{name}.{part}" for part in layer.drop_replaced_attention()]
        self._record_inference_plans()
        return removed

    def _record_inference_plans(self):
        config = self.config
        plan, reuse = config.token_reduction, config.attention_reuse
        if plan is not None and get_reduction_class(plan["method"]).training_only_modules:
            config.token_reduction = {**plan, "training_heads": False}
        if reuse is not None:
            config.attention_reuse = {**reuse, "keep_replaced_attention": False}
        for module in self.modules():
            if isinstance(module, TokenPruneModelMixin):
                module.built_plans = copy.deepcopy((config.token_reduction, config.attention_reuse))

    def push_to_hub(self, *args, **kwargs):
        """transformers' push (the weights, the config with ``auto_map``, the remote-code files and transformers'
        card), after `check_shareable`. ``hf_tokenprune.sharing.push_to_hub(model, repo_id)`` uploads
        hf_tokenprune's model card too."""
        check_shareable(self)
        return super().push_to_hub(*args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        module = type(self).__module__.split(".")[-1]
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            **{auto: f"{module}.{name}" for auto, name in self.auto_classes.items()},
        }
        return super().save_pretrained(save_directory, *args, **kwargs)


class TokenPruneClassifierMixin:
    """What a classifier on a TokenPrune backbone adds to its loss: the methods' auxiliary objectives."""

    def auxiliary_loss(self, outputs, labels, num_items_in_batch=None, **kwargs):
        """The methods' training objectives, on the same footing as the main loss: auxiliary heads go through the
        same loss function (which honours ``num_items_in_batch``); a batch-mean loss is rescaled to the per-item
        normalisation the Trainer assumes when it passes ``num_items_in_batch`` (summed over accumulation steps
        and multiplied by the number of processes)."""
        terms = [
            weight * self.loss_function(labels, logits, self.config, num_items_in_batch=num_items_in_batch, **kwargs)
            for logits, weight in (outputs.aux_logits or ())
        ]
        if outputs.aux_loss is not None:
            scale = 1.0 if num_items_in_batch is None else labels.shape[0] / num_items_in_batch
            terms.append(outputs.aux_loss * scale)
        return sum(terms[1:], terms[0]) if terms else None


__all__ = [
    "ProbedAttentionMixin",
    "check_shareable",
    "island_files",
    "TokenPruneLayerMixin",
    "TokenPruneClassifierMixin",
    "TokenPruneModelMixin",
    "TokenPruneImageClassifierOutput",
    "TokenPruneModelOutput",
    "TokenPrunePreTrainedMixin",
    "check_pixel_values",
    "cls_attention_row",
    "keeps_every_token",
    "mean_of_tokens",
    "plan_in_force",
    "policy_attention",
]
