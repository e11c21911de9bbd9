# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""Attention backends: which of them can take the per-key bias a plan adds to the attention logits, and how.

ToMe's proportional attention adds ``log(size)`` of each key to every query's logits. ``eager`` and ``sdpa`` take it
as an additive float mask, ``flex_attention`` as a ``score_mod``; the flash kernels (``flash_attention_2``/``_3``,
``kernels-community/*``) take at most a padding mask, so a plan that needs the bias refuses them with one line rather
than run without it. Part of the remote-code island: it imports only torch, transformers and its siblings.
"""

from transformers.integrations.flex_attention import compile_friendly_flex_attention
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.vit.modeling_vit import eager_attention_forward

from .token_reduction import get_reduction_class

# The backends that add a float bias to the logits (flex_attention through its score_mod).
BIAS_BACKENDS = ("eager", "sdpa", "flex_attention")


def bias_refusal(implementation, method) -> str:
    """The one-line error for a backend that cannot add a per-key bias to the attention logits."""
    return (
        f"attn_implementation={implementation!r} cannot add {method}'s proportional-attention bias (log of each "
        "key's token count) to the attention logits; set token_reduction['proportional_attention']=False, or load "
        f"with attn_implementation='sdpa' (or one of {list(BIAS_BACKENDS)})."
    )


def check_attention_backend(plan, implementation) -> None:
    """Refuses, before any work, a backend that would have to drop a bias the plan needs."""
    if plan is None or implementation in BIAS_BACKENDS:
        return
    if get_reduction_class(plan["method"]).uses_key_bias(plan):
        raise ValueError(bias_refusal(implementation, plan["method"]))


def flex_attention_with_key_bias(module, query, key, value, key_bias, dropout=0.0, **kwargs):
    """flex_attention with a per-key bias (B, N) as its score_mod. Returns (B, N, H, d) like the interfaces.

    Checked with torch 2.13 on CPU: HF's flex interface takes a bias only as a (B, 1, N, N) score mask, which it
    reads as ``mask[b][0][q][k]``, and compiled flex crashes on that (segfault); a ``bias[b, k]`` lookup fails to
    compile once the length becomes dynamic (the next layer's shorter sequence); a lookup into the flattened bias
    compiles for every length.
    """
    if dropout > 0:
        raise ValueError("flex_attention does not support attention dropout: use it in eval mode or set it to 0.")
    bias, length = key_bias.to(query.dtype).reshape(-1), key_bias.shape[1]  # (B * N,)

    def add_key_bias(score, batch, head, query_index, key_index):
        return score + bias[batch * length + key_index]

    output = compile_friendly_flex_attention(
        query, key, value, score_mod=add_key_bias, scale=module.scaling, training=module.training
    )
    return output.transpose(1, 2).contiguous(), None


def attention_with_key_bias(module, query, key, value, attention_mask, key_bias, **kwargs):
    """The configured attention with a bias (B, N) added to every query's logit for each key: as an additive
    float mask for eager and sdpa, as a score_mod for flex_attention; other backends are refused."""
    implementation = module.config._attn_implementation
    if implementation not in BIAS_BACKENDS:
        raise ValueError(bias_refusal(implementation, "this plan"))
    if implementation == "flex_attention":
        return flex_attention_with_key_bias(module, query, key, value, key_bias, **kwargs)
    bias = key_bias[:, None, None, :].to(query.dtype)  # (B, 1, 1, N)
    attention_mask = bias if attention_mask is None else attention_mask + bias
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
    return interface(module, query, key, value, attention_mask, **kwargs)
