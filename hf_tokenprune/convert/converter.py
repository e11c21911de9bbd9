"""`convert_official_checkpoint`: an official checkpoint (the authors' layout) as a TokenPrune model folder.

The steps, each refusing bad input in one line before the next: the arguments; the file (read without executing
anything, `checkpoint.read_state`); whether its keys are the method's layout (`layouts`); its shapes against
``arch``; the plan (the official operating point of the method's checkpoints, `sources`, changed by what the
checkpoint holds and by the caller's plan); every key mapped and every parameter filled; then the folder (weights,
config with remote code, an image processor that does the official evaluation transform, and a card that names the
source, the accuracy its authors report and the parity evidence).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .sources import EVAL_TRANSFORMS, PUBLISHED, SOURCES, Published, plan_for

FIELD = "CHECKPOINT"
ARCH_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size")
PARITY = (
    "hf_tokenprune's test suite converts checkpoints in this method's official layout, written by the official "
    "code at {repository} with fixed random weights, and checks that the converted model's logits equal the "
    "official model's on the same inputs (float32, within 1e-5) and that every key of the checkpoint is used "
    "(tests/convert/test_convert.py)."
)


PARITY_TIMM = (
    "The plain timm ViT/DeiT layout is the backbone of every method's official checkpoint: hf_tokenprune's test suite "
    "converts checkpoints written by each method's official code and checks the converted logits against the "
    "official ones (float32, within 1e-5; tests/convert/test_convert.py)."
)


def convert_official_checkpoint(
    checkpoint: str | Path,
    method: str | None = None,
    *,
    arch: str | dict | None = None,
    output: str | Path | None = None,
    token_reduction: dict | None = None,
    attention_reuse: dict | None = None,
    published: str | None = None,
    eval_transform: str | None = None,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    verbose: bool = False,
) -> Any:
    """Converts an official checkpoint into our model class, with the operating point it was trained for.

    Args:
        checkpoint: the file the official code saved (``.pth``/``.pt``/``.bin``/``.t7`` or ``.safetensors``): a state
            dict, or one under ``"model"``/``"state_dict"``, with or without a ``module.`` prefix.
        method: ``dynamicvit``, ``evit``, ``evo_vit``, ``supervit``, ``cropr``, ``skipat``, ``tome``, or ``none`` for
            a plain timm ViT/DeiT (distilled too); implied by ``published``.
        arch: a built-in architecture name (``vit-small-patch16-224`` for DeiT-S) whose shape the checkpoint must
            have, or a dict of config fields; default: read from the checkpoint (heads: width / 64).
        output: the folder to write (new or empty unless ``overwrite``); None to only return the model.
        token_reduction, attention_reuse: plans that replace the official operating point's options.
        published: the name of a released checkpoint (`sources.PUBLISHED`): its method, shape, operating point and
            the accuracy its authors report (for the card).
        eval_transform: ``deit`` or ``augreg`` (`sources.EVAL_TRANSFORMS`); default: the method's.
        overwrite: replace the content of a non-empty ``output``.
        push_to_hub: a Hub repository to push the converted model, its processor and card to.
        verbose: print what was read and written.

    Returns:
        The converted model (eval mode).
    """
    entry, method = _check_arguments(method, published, arch, output, overwrite, eval_transform)
    source = SOURCES[method]
    from .checkpoint import read_state

    state, where = read_state(checkpoint, FIELD)
    _check_layout(state, method, checkpoint)
    shape = _shape(
        state, arch if arch is not None else (entry.arch if entry and entry.arch in _arch_names() else None)
    )
    plans = _plans(state, method, shape, entry, token_reduction, attention_reuse)
    model, dropped = _build(state, shape, plans, checkpoint, method)
    processor = image_processor(eval_transform or source.eval_transform, shape["image_size"])
    card = _card_source(source, entry, checkpoint, where, dropped)
    if verbose:
        family = "DeiT (distilled)" if "dist_token" in state else "ViT"
        print(f"read {len(state)} tensors from {checkpoint} ({where}): a {family} of width {shape['hidden_size']}, "
              f"{shape['num_hidden_layers']} layers, {shape['image_size']} px, "
              f"{model.config.num_labels} labels")  # fmt: skip
        print(f"plan: {plans}")
        for line in dropped:
            print(f"not carried: {line}")
    if output is not None:
        write_folder(model, processor, card, Path(output), overwrite)
        if verbose:
            print(f"wrote {output} (AutoModelForImageClassification.from_pretrained(..., trust_remote_code=True))")
    if push_to_hub is not None:
        from ..sharing.hub import push_to_hub as push

        push(model, push_to_hub, image_processor=processor, source=card, model_name=card["published"])
        if verbose:
            print(f"pushed to {push_to_hub}")
    return model


def _arch_names() -> dict:
    from ..families import FAMILIES

    return FAMILIES["vit"].architectures


def _check_arguments(method, published, arch, output, overwrite, eval_transform) -> tuple[Published | None, str]:
    entry = None
    if published is not None:
        if published not in PUBLISHED:
            raise ValueError(f"--published {published!r} is not a known release; known: {sorted(PUBLISHED)}.")
        entry = PUBLISHED[published]
        if method is not None and method != entry.method:
            raise ValueError(
                f"--method {method!r} does not match --published {published!r}, a {entry.method} release."
            )
        method = entry.method
    if method is None:
        raise ValueError(f"--method is needed (or --published NAME); allowed: {sorted(SOURCES)}.")
    if method not in SOURCES:
        raise ValueError(f"--method {method!r} has no official checkpoint layout here; allowed: {sorted(SOURCES)}.")
    if isinstance(arch, str) and arch not in _arch_names():
        raise ValueError(f"--arch {arch!r} is not a built-in ViT shape; allowed: {sorted(_arch_names())}.")
    if arch is not None and not isinstance(arch, (str, dict)):
        raise ValueError(f"arch = {arch!r} must be an architecture name or a dict of config fields.")
    if eval_transform is not None and eval_transform not in EVAL_TRANSFORMS:
        raise ValueError(f"--eval-transform {eval_transform!r} is not known; allowed: {sorted(EVAL_TRANSFORMS)}.")
    if output is not None and not overwrite:
        from ..paths import check_new_folder

        check_new_folder(str(output), "--output")
        parent = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(parent):
            raise ValueError(f"--output '{output}': the folder '{parent}' does not exist; create it or pick another.")
    return entry, method


def _check_layout(state: dict, method: str, checkpoint: Any) -> None:
    """The checkpoint must be a timm-style ViT and hold the modules of ``method`` and of no other method."""
    if "cls_token" not in state or "patch_embed.proj.weight" not in state:
        first = sorted(state)[:4]
        raise ValueError(
            f"{FIELD} '{checkpoint}' is not a timm-style ViT/DeiT: no cls_token or patch_embed.proj.weight among its "
            f"keys (first: {first}); expected the layout of {SOURCES[method].repository}."
        )
    marker = SOURCES[method].marker
    if marker is not None and not any(key.startswith(marker + ".") for key in state):
        raise ValueError(
            f"{FIELD} '{checkpoint}' has no {marker}.* keys: it is not a {method} checkpoint of "
            f"{SOURCES[method].repository} (first keys: {sorted(state)[:4]})."
        )
    for other in SOURCES.values():
        if other.marker is None or other.method == method:
            continue
        found = [key for key in state if key.startswith(other.marker + ".")]
        if found:
            raise ValueError(
                f"{FIELD} '{checkpoint}' holds {other.method}'s modules ({found[0]}, ...), not {method}'s; "
                f"convert it with --method {other.method}."
            )
    if any(key.startswith("pre_logits.") for key in state):
        raise ValueError(f"{FIELD} '{checkpoint}' has a pre-logits layer (pre_logits.*), which ViT classifiers lack.")


def _shape(state: dict, arch: Any) -> dict:
    """The config fields the checkpoint's tensors imply, checked against ``arch``."""
    width = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.") and ".mlp.fc1." in key})
    tables = [value for key, value in state.items() if key == "pos_embed" or key.startswith("pos_embed_list.")]
    prefix = 2 if "dist_token" in state else 1
    side = int(round((max(table.shape[1] for table in tables) - prefix) ** 0.5))
    found = {
        "hidden_size": width, "num_hidden_layers": depth,
        "intermediate_size": state["blocks.0.mlp.fc1.weight"].shape[0],
        "patch_size": patch, "image_size": side * patch,
    }  # fmt: skip
    if arch is None:
        if width % 64:
            raise ValueError(
                f"{FIELD}: width {width} is not a multiple of 64, so the head count cannot be read from it; give "
                f"--arch (allowed: {sorted(_arch_names())})."
            )
        return {**found, "num_attention_heads": width // 64}
    expected = _arch_names()[arch] if isinstance(arch, str) else dict(arch)
    for key in ARCH_FIELDS:
        if key in expected and key in found and expected[key] != found[key]:
            raise ValueError(
                f"{FIELD} does not have the shape of --arch {arch if isinstance(arch, str) else 'given'}: {key} is "
                f"{found[key]} in the checkpoint, {expected[key]} in the architecture."
            )
    return {**found, "num_attention_heads": expected.get("num_attention_heads", width // 64)}


def _plans(state, method, shape, entry, token_reduction, attention_reuse) -> dict:
    """``token_reduction`` / ``attention_reuse`` for the config: the official operating point of the method's
    checkpoints (scaled to the depth), what the checkpoint holds, then the published entry's and the caller's."""
    from .layouts import Keys

    keys = Keys(state)
    source = SOURCES[method]
    overrides = {**(entry.plan if entry else {}), **((attention_reuse if source.reuse else token_reduction) or {})}
    plan = plan_for(method, overrides) if method != "none" else (token_reduction or {})
    depth = shape["num_hidden_layers"]
    if method == "dynamicvit":
        stages = keys.count("score_predictor")
        if "layers" not in overrides:
            plan["layers"] = [round(depth * (stage + 1) / (stages + 1)) for stage in range(stages)]
    elif method == "evo_vit":
        plan["two_heads"] = "head_cls.weight" in state  # its stages start at layers 4 and 8 of 12, scaled
    elif method == "cropr":
        modules = keys.count("cropr")
        if modules not in (depth - 1, depth - 2):
            raise ValueError(
                f"{FIELD} has {modules} cropr modules; a {depth}-layer Cropr model has {depth - 2} or {depth - 1}."
            )
        plan["last_layer_fusion"] = modules == depth - 2
        plan["training_heads"] = "cropr.0.head.head.weight" in state
        projected = [f"cropr.0.cross_attn.{name}.weight" in state for name in ("attn_norm", "q", "k", "v")]
        if all(projected):
            plan["scorer"] = "official_projected"
        elif any(projected):
            raise ValueError(
                f"{FIELD} has some of Cropr's scorer projections (attn_norm, q, k, v: {projected}); the settings that "
                "convert are none of them (the default) or all four (--cropr_pre_attn_norm/q_proj/k_proj/v_proj)."
            )
        if "cropr.0.cross_attn.proj.weight" in state and "num_heads" not in overrides:
            raise ValueError(
                f"{FIELD} has Cropr scorers with several heads (cross_attn.proj); give their count, "
                "--token-reduction '{\"num_heads\": H}' (the official --cropr_num_heads)."
            )
    elif method == "skipat":
        count = len({key.split(".")[0] for key in state if key.startswith("param_")})
        plan = {**plan, "layers": plan["layers"] if "layers" in overrides else list(range(3, 3 + count))}
        return {"token_reduction": token_reduction, "attention_reuse": plan}
    elif method in ("evit", "supervit", "tome") and depth != 12 and "layers" in plan and "layers" not in overrides:
        plan.pop("layers")  # the method's default placement for this depth
    return {"token_reduction": plan or None, "attention_reuse": attention_reuse}


def _build(state, shape, plans, checkpoint, method) -> tuple[Any, list[str]]:
    """The model with the checkpoint's weights; every parameter filled, every key used (or reported, where the
    official model does not use it either)."""
    import torch

    from .layouts import map_weights, not_carried

    distilled = "dist_token" in state
    family = "deit" if distilled else "vit"
    from ..families import FAMILIES

    row = FAMILIES[family]
    num_labels = state["head.weight"].shape[0]
    pooling = "mean" if "fc_norm.weight" in state else "cls"
    if pooling == "mean" and method != "cropr":
        raise ValueError(
            f"{FIELD} pools a mean under fc_norm (timm's global_pool='avg'); only Cropr's checkpoints convert with it."
        )
    extra = {"classifier_pooling": pooling} if pooling != "cls" else {}
    from .layouts import table_side

    sides = [table_side(v, shape["patch_size"]) for k, v in state.items() if k.startswith("pos_embed_list.")]
    if len(sides) > 1:  # SuperViT: a table per resolution, the largest is the model's own
        extra["position_tables"] = sorted(side for side in sides if side != shape["image_size"])
    config = row.config_class()(
        **shape, num_labels=num_labels, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True, **extra,
        **{key: value for key, value in plans.items() if value is not None},
    )  # fmt: skip
    try:
        weights, unused = map_weights(state, config)
    except KeyError as error:
        raise ValueError(
            f"{FIELD} lacks {error.args[0]!r}, which the {method} layout of {SOURCES[method].repository} has for a "
            f"{config.num_hidden_layers}-layer model with this plan."
        ) from None
    dropped = not_carried(unused, config)
    unused = [key for key in unused if key not in dropped]
    if unused:
        raise ValueError(
            f"{FIELD} has {len(unused)} keys that no part of a {method} model takes (first: {unused[:4]}); is it a "
            f"checkpoint of another method or architecture?"
        )
    model = row.model_class()(config).eval()
    expected = model.state_dict()
    for key, value in weights.items():
        if key in expected and expected[key].shape != value.shape:
            raise ValueError(
                f"{FIELD}: {key} has shape {list(value.shape)}, the model expects {list(expected[key].shape)}."
            )
    result = model.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{FIELD}: the {method} model was not filled: missing {result.missing_keys[:4]}, unexpected "
            f"{result.unexpected_keys[:4]}."
        )
    with torch.no_grad():
        model.float()
    notes = {}
    plan = config.token_reduction or {}
    if plan.get("method") == "cropr" and not plan["training_heads"] and "cropr.0.head.head.weight" in state:
        notes["cropr.*.head, cropr.*.cross_attn.mlp*"] = "Cropr's auxiliary heads, for training only"
    for key, why in dropped.items():  # one line per module
        notes.setdefault(key.rsplit(".", 2)[0] if key.startswith("param_") else key, why)
    return model, [f"{key}: {why}" for key, why in notes.items()]


def image_processor(transform: str, image_size: int) -> Any:
    """The official evaluation transform: the short side resized to ``image_size / crop_pct`` (bicubic), a centre
    crop of ``image_size``, then the mean and std."""
    try:
        from transformers import ConvNextImageProcessorPil as Processor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import ConvNextImageProcessor as Processor
    settings = EVAL_TRANSFORMS[transform]
    return Processor(size={"shortest_edge": image_size}, resample=3, **settings)


def _card_source(source, entry, checkpoint, where, dropped) -> dict:
    return {
        "repository": source.repository,
        "checkpoint": entry.link if entry else Path(checkpoint).name,
        "published": entry.name if entry else None,
        "reported_top1": entry.top1 if entry else None,
        "reported_note": entry.note if entry else "",
        "read_from": where,
        "parity": PARITY_TIMM if source.method == "none" else PARITY.format(repository=source.repository),
        "not_carried": list(dropped),
    }


def write_folder(model, processor, source: dict, folder: Path, overwrite: bool) -> None:
    """``save_pretrained`` of the model and processor, and the card (README.md) with its source."""
    from ..sharing.model_card import write_model_card

    if overwrite and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    write_model_card(folder, model, source=source, model_name=source["published"])
