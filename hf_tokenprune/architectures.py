"""Built-in ViT/DeiT architectures (configs only, no weights) and config loading for the tools."""

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


def build_config(model: str | None, arch: str, **plans: Any) -> TokenPruneViTConfig:
    """The config of a checkpoint (folder or Hub id) or of a built-in architecture, with the given plans."""
    plans = {key: value for key, value in plans.items() if value is not None}
    if model is not None:
        return TokenPruneViTConfig.from_pretrained(model, **plans)
    if arch not in ARCHITECTURES:
        raise ValueError(f"--arch {arch!r} is not built in; allowed: {sorted(ARCHITECTURES)}.")
    return TokenPruneViTConfig(**ARCHITECTURES[arch], image_size=224, patch_size=16, num_labels=1000, **plans)
