"""Built-in architectures (configs only, no weights): ViT/DeiT sizes and a few other families, and config loading
for the tools."""

from typing import Any

from .models.configuration_tokenprune_vit import TokenPruneViTConfig

# The shapes of the stock checkpoints, so tools can build a model of the same cost without a download.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "vit-tiny-patch16-224": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
    "vit-small-patch16-224": dict(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536
    ),
    "vit-base-patch16-224": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    ),
    "vit-large-patch16-224": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    ),
}


# Other families (model_type of our config, shape). DINOv2-B/14 at 518 px is 37 x 37 = 1369 patches.
FAMILY_ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "dinov2-base-patch14-518": (
        "tokenprune_dinov2",
        dict(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, image_size=518, patch_size=14
        ),
    ),
    "clip-vit-base-patch16": (
        "tokenprune_clip_vision_model",
        dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            image_size=224,
            patch_size=16,
            projection_dim=512,
        ),
    ),
}


# What the tools pair per family: (stock config, stock model) in transformers, and our model (in hf_tokenprune).
FAMILY_BENCHMARK_CLASSES = {
    "tokenprune_vit": ("ViTConfig", "ViTForImageClassification", "TokenPruneViTForImageClassification"),
    "tokenprune_deit": (
        "DeiTConfig",
        "DeiTForImageClassificationWithTeacher",
        "TokenPruneDeiTForImageClassificationWithTeacher",
    ),
    "tokenprune_dinov2": ("Dinov2Config", "Dinov2ForImageClassification", "TokenPruneDinov2ForImageClassification"),
    "tokenprune_dinov2_with_registers": (
        "Dinov2WithRegistersConfig",
        "Dinov2WithRegistersForImageClassification",
        "TokenPruneDinov2WithRegistersForImageClassification",
    ),
    "tokenprune_clip_vision_model": (
        "CLIPVisionConfig",
        "CLIPVisionModelWithProjection",
        "TokenPruneCLIPVisionModelWithProjection",
    ),
    "tokenprune_siglip_vision_model": ("SiglipVisionConfig", "SiglipVisionModel", "TokenPruneSiglipVisionModel"),
}


def family_classes(config: Any) -> tuple[type, type, type]:
    """(stock config class, stock model class, our model class) that the tools pair for a config's family: the
    classifier, or for CLIP's vision tower the model with projection (image embeddings)."""
    import transformers

    import hf_tokenprune

    model_type = getattr(config, "model_type", "")
    if model_type not in FAMILY_BENCHMARK_CLASSES:
        raise ValueError(
            f"{model_type!r} configs have no benchmark classes; known: {sorted(FAMILY_BENCHMARK_CLASSES)}."
        )
    stock_config, stock_model, ours = FAMILY_BENCHMARK_CLASSES[model_type]
    return getattr(transformers, stock_config), getattr(transformers, stock_model), getattr(hf_tokenprune, ours)


def family_config_class(model_type: str | None) -> type:
    """Our config class for a checkpoint's ``model_type``: our own type, the stock family's (``dinov2`` ->
    `TokenPruneDinov2Config`) or a full model whose vision tower we run (``clip`` -> `TokenPruneCLIPVisionConfig`);
    a config without a model type is read as ViT."""
    import hf_tokenprune

    if model_type is None:
        return TokenPruneViTConfig
    for *_, ours in FAMILY_BENCHMARK_CLASSES.values():
        config_class = getattr(hf_tokenprune, ours).config_class
        if model_type in (config_class.model_type, config_class.stock_model_type, *config_class.composite_model_types):
            return config_class
    known = sorted({m.removeprefix("tokenprune_") for m in FAMILY_BENCHMARK_CLASSES} | {"clip", "siglip"})
    raise ValueError(f"--model holds a {model_type!r} checkpoint; the families the tools run are {known}.")


def build_config(model: str | None, arch: str, **plans: Any) -> Any:
    """The config of a checkpoint (folder or Hub id; any family of `FAMILY_BENCHMARK_CLASSES`, stock or ours) or of
    a built-in architecture, with the given plans."""
    plans = {key: value for key, value in plans.items() if value is not None}
    if model is not None:
        from transformers import PretrainedConfig

        model_type = PretrainedConfig.get_config_dict(model)[0].get("model_type")
        return family_config_class(model_type).from_pretrained(model, **plans)
    if arch in FAMILY_ARCHITECTURES:
        from transformers import AutoConfig

        import hf_tokenprune  # noqa: F401  (registers our config classes)

        model_type, shape = FAMILY_ARCHITECTURES[arch]
        return AutoConfig.for_model(model_type, **shape, num_labels=1000, **plans)
    if arch not in ARCHITECTURES:
        allowed = sorted([*ARCHITECTURES, *FAMILY_ARCHITECTURES])
        raise ValueError(f"--arch {arch!r} is not built in; allowed: {allowed}.")
    return TokenPruneViTConfig(**ARCHITECTURES[arch], image_size=224, patch_size=16, num_labels=1000, **plans)
