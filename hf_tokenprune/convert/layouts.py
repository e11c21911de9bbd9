"""The official checkpoints' key layouts, mapped onto our classes: the one place that knows them.

Every official model here is a timm-style ViT (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``, ``head``; a distilled DeiT adds
``dist_token`` and ``head_dist``) plus the method's own modules. `map_weights` reads a state dict through a `Keys`
that records every key it takes, so a key that nothing maps is reported, never dropped silently.
"""

from __future__ import annotations

from typing import Any

# DynamicViT's score predictor (official name -> ours, under vit.layers.<layer>.token_reduction.predictor).
DYNAMICVIT_PREDICTOR = {"in_conv.0": "project.0", "in_conv.1": "project.1", "out_conv.0": "classify.0",
                        "out_conv.2": "classify.2", "out_conv.4": "classify.4"}  # fmt: skip
# SkipAt's LeFF (official param_<k>) -> our Phi (vit.layers.<layer>.attention_reuse).
SKIPAT_PHI = {"linear1.0": "expand", "dwconv.0": "depthwise", "linear2.0": "reduce", "eca.conv": "gate.conv"}
# Token Cropr's module (official cropr.<i>) -> ours (vit.layers.<i>.token_reduction.scorer).
CROPR_SCORER = {"cross_attn.queries": "queries", "cross_attn.mlp_norm": "aux_head.mlp_norm",
                "cross_attn.mlp.fc1": "aux_head.mlp.0", "cross_attn.mlp.fc2": "aux_head.mlp.2",
                "head.norm": "aux_head.head_norm", "head.head": "aux_head.head"}  # fmt: skip
PARTS = ("weight", "bias")
# Its projected scorer (official --cropr_pre_attn_norm/q_proj/k_proj/v_proj: no biases) and multi-head output.
CROPR_PROJECTED = {"cross_attn.attn_norm": ("norm", PARTS), "cross_attn.q": ("q_proj", ("weight",)),
                   "cross_attn.k": ("k_proj", ("weight",)),
                   "cross_attn.v": ("aux_head.v_proj", ("weight",))}  # fmt: skip
CROPR_HEADS = {"cross_attn.proj": ("aux_head.out_proj", PARTS)}


class Keys:
    """A state dict that remembers which keys were taken."""

    def __init__(self, state: dict[str, Any]):
        self.state, self.used = state, set()

    def __contains__(self, key: str) -> bool:
        return key in self.state

    def take(self, key: str) -> Any:
        if key not in self.state:
            raise KeyError(key)
        self.used.add(key)
        return self.state[key]

    def unused(self) -> list[str]:
        return [key for key in self.state if key not in self.used]

    def count(self, prefix: str) -> int:
        """How many numbered modules ``prefix.<i>.`` the state holds."""
        indices = {key[len(prefix) + 1 :].split(".")[0] for key in self.state if key.startswith(prefix + ".")}
        return len([index for index in indices if index.isdigit()])


def split_attention(keys: Keys, layer: int) -> dict[str, Any]:
    """Block ``layer``'s fused ``qkv`` (or Evo-ViT's ``qks``/``vs``, ``norms``, ``projs``) in the plain layout."""
    block = f"blocks.{layer}."
    out = {}
    for part in PARTS:
        if f"qks.{layer}.qk.{part}" in keys:  # Evo-ViT keeps its attention outside the blocks
            q, k = keys.take(f"qks.{layer}.qk.{part}").chunk(2)
            v = keys.take(f"vs.{layer}.v.{part}")
            out[f"o_proj.{part}"] = keys.take(f"projs.{layer}.{part}")
            out[f"norm1.{part}"] = keys.take(f"norms.{layer}.{part}")
        else:
            q, k, v = keys.take(f"{block}attn.qkv.{part}").chunk(3)
            out[f"o_proj.{part}"] = keys.take(f"{block}attn.proj.{part}")
            out[f"norm1.{part}"] = keys.take(f"{block}norm1.{part}")
        out[f"q_proj.{part}"], out[f"k_proj.{part}"], out[f"v_proj.{part}"] = q, k, v
    return out


def backbone(keys: Keys, depth: int, prefix: str, position_table: Any) -> dict[str, Any]:
    """The timm backbone under our names (``prefix`` is ``vit`` or ``deit``); the final norm is ``norm`` or, for
    a model that pools a mean (timm's ``global_pool='avg'``), ``fc_norm``."""
    out = {
        f"{prefix}.embeddings.cls_token": keys.take("cls_token"),
        f"{prefix}.embeddings.position_embeddings": position_table,
        f"{prefix}.embeddings.patch_embeddings.projection.weight": keys.take("patch_embed.proj.weight"),
        f"{prefix}.embeddings.patch_embeddings.projection.bias": keys.take("patch_embed.proj.bias"),
    }
    if "dist_token" in keys:
        out[f"{prefix}.embeddings.distillation_token"] = keys.take("dist_token")
    final = "fc_norm" if "fc_norm.weight" in keys else "norm"
    for part in PARTS:
        out[f"{prefix}.layernorm.{part}"] = keys.take(f"{final}.{part}")
    for layer in range(depth):
        ours, block = f"{prefix}.layers.{layer}.", f"blocks.{layer}."
        attention = split_attention(keys, layer)
        for part in PARTS:
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                out[f"{ours}attention.{name}.{part}"] = attention[f"{name}.{part}"]
            out[f"{ours}layernorm_before.{part}"] = attention[f"norm1.{part}"]
            out[f"{ours}layernorm_after.{part}"] = keys.take(f"{block}norm2.{part}")
            out[f"{ours}mlp.fc1.{part}"] = keys.take(f"{block}mlp.fc1.{part}")
            out[f"{ours}mlp.fc2.{part}"] = keys.take(f"{block}mlp.fc2.{part}")
    return out


def heads(keys: Keys, distilled: bool) -> dict[str, Any]:
    """The classifier(s): ``head`` (and ``head_dist``); Evo-ViT's training head ``head_cls``/``norm_cls``."""
    out = {}
    for part in PARTS:
        if distilled:
            out[f"cls_classifier.{part}"] = keys.take(f"head.{part}")
            out[f"distillation_classifier.{part}"] = keys.take(f"head_dist.{part}")
        else:
            out[f"classifier.{part}"] = keys.take(f"head.{part}")
        if f"head_cls.{part}" in keys:
            out[f"cls_classifier.{part}"] = keys.take(f"head_cls.{part}")
            out[f"cls_norm.{part}"] = keys.take(f"norm_cls.{part}")
    return out


def method_modules(keys: Keys, config: Any, prefix: str) -> dict[str, Any]:
    """The method's own modules (DynamicViT's predictors, Cropr's scorers and auxiliary heads, SkipAt's Phi)."""
    out = {}
    plan = config.token_reduction or {}
    if plan.get("method") == "dynamicvit":
        for stage, layer in enumerate(plan["layers"]):
            for theirs, ours in DYNAMICVIT_PREDICTOR.items():
                for part in PARTS:
                    out[f"{prefix}.layers.{layer}.token_reduction.predictor.{ours}.{part}"] = keys.take(
                        f"score_predictor.{stage}.{theirs}.{part}"
                    )
    if plan.get("method") == "cropr":
        for module in range(len(plan["tokens_per_layer"])):
            target = f"{prefix}.layers.{module}.token_reduction.scorer."
            for theirs, ours in CROPR_SCORER.items():
                names = [""] if theirs.endswith("queries") else [f".{part}" for part in PARTS]
                for name in names:
                    value = keys.take(f"cropr.{module}.{theirs}{name}")
                    if plan["training_heads"] or not ours.startswith("aux_head"):  # else: an inference model
                        out[target + ours + name] = value
            extra = {**(CROPR_PROJECTED if plan["scorer"] == "official_projected" else {}),
                     **(CROPR_HEADS if f"cropr.{module}.cross_attn.proj.weight" in keys else {})}  # fmt: skip
            for theirs, (ours, parts) in extra.items():
                for part in parts:
                    value = keys.take(f"cropr.{module}.{theirs}.{part}")
                    if plan["training_heads"] or not ours.startswith("aux_head"):
                        out[f"{target}{ours}.{part}"] = value
    reuse = config.attention_reuse or {}
    if reuse.get("method") == "skipat":
        for index, layer in enumerate(reuse["layers"]):
            for theirs, ours in SKIPAT_PHI.items():
                for part in PARTS if theirs != "eca.conv" else ("weight",):
                    out[f"{prefix}.layers.{layer}.attention_reuse.{ours}.{part}"] = keys.take(
                        f"param_{index + 1}.{theirs}.{part}"
                    )
    return out


def not_carried(unused: list[str], config: Any) -> dict[str, str]:
    """Keys nothing takes that the official model does not use either at this plan -> why: SkipAt's Phi modules
    beyond the plan's layers (the official model builds six and uses one per skipped layer)."""
    reuse = config.attention_reuse or {}
    reasons = {}
    for key in unused:
        if reuse.get("method") == "skipat" and key.startswith("param_"):
            if int(key.split(".")[0].removeprefix("param_")) > len(reuse["layers"]):
                reasons[key] = f"a SkipAt Phi module beyond the {len(reuse['layers'])} skipped layers, unused"
    return reasons


def position_table(keys: Keys, image_size: int, patch_size: int) -> Any:
    """``pos_embed``, or SuperViT's table for ``image_size`` among its ``pos_embed_list`` (one per resolution;
    the others go to `other_position_tables`)."""
    if "pos_embed" in keys:
        return keys.take("pos_embed")
    tables = [keys.state[f"pos_embed_list.{index}"] for index in range(keys.count("pos_embed_list"))]
    tokens = (image_size // patch_size) ** 2 + 1
    for index, table in enumerate(tables):
        if table.shape[1] == tokens:
            return keys.take(f"pos_embed_list.{index}")
    raise KeyError("pos_embed")


def table_side(table: Any, patch_size: int) -> int:
    """The image side a position table (1, 1 + n * n, C) serves."""
    return round((table.shape[1] - 1) ** 0.5) * patch_size


def other_position_tables(keys: Keys, config: Any, prefix: str) -> dict[str, Any]:
    """SuperViT's tables for the sides in ``config.position_tables`` (``vit.embeddings.position_tables.<side>``)."""
    out = {}
    for side in getattr(config, "position_tables", None) or []:
        for index in range(keys.count("pos_embed_list")):
            key = f"pos_embed_list.{index}"
            if table_side(keys.state[key], config.patch_size) == side:
                out[f"{prefix}.embeddings.position_tables.{side}"] = keys.take(key)
    return out


def map_weights(state: dict[str, Any], config: Any) -> tuple[dict[str, Any], list[str]]:
    """``state`` (an official checkpoint's model weights) under the names of our model for ``config``, and the
    keys of ``state`` nothing took. A key the layout needs and ``state`` lacks raises KeyError naming it."""
    keys = Keys(state)
    distilled = "dist_token" in keys
    prefix = "deit" if distilled else "vit"
    table = position_table(keys, config.image_size, config.patch_size)
    out = backbone(keys, config.num_hidden_layers, prefix, table)
    out.update(heads(keys, distilled))
    out.update(method_modules(keys, config, prefix))
    out.update(other_position_tables(keys, config, prefix))
    return {key: value.detach().float().contiguous() for key, value in out.items()}, keys.unused()
