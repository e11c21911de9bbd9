"""The family table: one row per model family, and everything per family is read from it.

A row names the family's config and the island files that hold its classes (``hf_tokenprune/models/``), the stock
transformers classes the tools pair it with, the class and output that export and benchmark, how its card names it,
its built-in architectures (``--arch``), and what it cannot do, with the reason (``gaps``). From the rows come the
package's public names and Auto registration (`hf_tokenprune`), export (`hf_tokenprune.sharing.export`), the
benchmark and the tuner (`hf_tokenprune.measure`), the card (`hf_tokenprune.sharing.model_card`), FLOPs
(`hf_tokenprune.flops`) and the tests' family matrix.

What a family's models are (their prefix tokens, the features the methods may need, the Auto classes a saved folder
serves) lives on its config and model classes in the island, which checkpoints carry without this package; a row
refers to them by name. ``model_type`` repeats the config's, so that the tools can match a ``config.json`` before
importing torch; a test holds the two equal.

This module imports nothing heavy: classes load on first use (`Family.load`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

ISLAND = "hf_tokenprune.models"
# What a family may lack, each refused by the tool in one line that gives the row's reason.
CAPABILITIES = {
    "export": "export (hf-tokenprune export, export_model)",
    "benchmark": "the benchmark (hf-tokenprune benchmark --model, run_benchmark)",
    "training": "the benchmark's training mode",
    "tune": "the plan tuner (hf-tokenprune tune)",
    "visualize": "pictures of the kept tokens (hf-tokenprune visualize)",
    "dense": "dense outputs (a backbone and semantic segmentation)",
}
NO_TRAINING_LOSS = "its stock class has no training loss to time a training step against"
VIT_ONLY = "{} runs ViT classifiers only for now"


@dataclass(frozen=True)
class Family:
    """One model family.

    Args:
        name: the short name (``--family``-style, tests' family matrix).
        title: how cards and messages name it.
        hub_tag: the Hub tag of the stock family.
        model_type: our config's ``model_type`` (a test holds it equal to the config class's).
        config: our config class, in ``config_module``.
        config_module: the module of the config class, in ``package``.
        modules: the modules of ``package`` holding the family's model classes.
        stock_config: the transformers config class of the stock family.
        stock: the stock transformers class the tools pair ``model`` with (same weights).
        model: our class the tools build, time and export.
        output: the output of ``model`` (and ``stock``) that exports and that tests compare.
        output_needs: a config flag without which ``model`` has no such output.
        head_inputs: tokens the head reads per label (FLOPs: classifier cost is ``head_inputs * width * labels``).
        architectures: built-in shapes for ``--arch`` (config fields, no weights).
        gaps: capability of `CAPABILITIES` -> why the family lacks it.
    """

    name: str
    title: str
    hub_tag: str
    model_type: str
    config: str
    config_module: str
    modules: tuple[str, ...]
    stock_config: str
    stock: str
    model: str
    output: str = "logits"
    output_needs: str | None = None
    head_inputs: int = 1
    architectures: dict[str, dict[str, Any]] = field(default_factory=dict)
    gaps: dict[str, str] = field(default_factory=dict)
    package: str = ISLAND  # where the modules are: the island, or a package of a family defined outside

    def _modules(self) -> list[Any]:
        return [importlib.import_module(f"{self.package}.{name}") for name in (self.config_module, *self.modules)]

    def load(self, name: str) -> Any:
        """One of the family's classes (or other public names) by name, from its island files."""
        for module in self._modules():
            if name in getattr(module, "__all__", ()):
                return getattr(module, name)
        raise AttributeError(f"{name!r} is not a public name of the {self.title} family's island files.")

    def config_class(self) -> type:
        return self.load(self.config)

    def model_class(self) -> type:
        return self.load(self.model)

    def stock_classes(self) -> tuple[type, type]:
        """(the stock config class, the stock model class ``model`` is paired with)."""
        import transformers

        return getattr(transformers, self.stock_config), getattr(transformers, self.stock)

    def public_names(self) -> dict[str, str]:
        """Every public name of the family's island files -> the module that defines it."""
        return {name: module.__name__ for module in self._modules() for name in module.__all__}

    def auto_mapping(self) -> dict[str, type]:
        """Auto class name -> our model class, for this family's config: what its model classes write into a saved
        folder's ``auto_map`` (their ``auto_classes``), so an installed package serves the same classes."""
        mapping: dict[str, type] = {}
        config_class = self.config_class()
        for module in self._modules()[1:]:
            for name in module.__all__:
                cls = getattr(module, name)
                if getattr(cls, "config_class", None) is not config_class:
                    continue
                for auto, target in getattr(cls, "auto_classes", {}).items():
                    target_class = getattr(module, target, None) or self.load(target)
                    if getattr(target_class, "config_class", None) is config_class:
                        mapping[auto] = target_class
        return mapping

    def can(self, capability: str) -> bool:
        return capability not in self.gaps

    def require(self, capability: str) -> None:
        """Refuses, in one line, a capability the family lacks (the row's reason)."""
        if capability not in CAPABILITIES:
            raise KeyError(f"unknown capability {capability!r}; known: {sorted(CAPABILITIES)}.")
        if capability in self.gaps:
            able = sorted(row.title for row in FAMILIES.values() if row.can(capability))
            raise ValueError(
                f"{self.title} models have no {CAPABILITIES[capability]}: {self.gaps[capability]}. Families with it: "
                f"{', '.join(able)}."
            )


def _vit(hidden: int, layers: int, heads: int) -> dict[str, Any]:
    shape = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads)
    return {**shape, "intermediate_size": 4 * hidden, "image_size": 224, "patch_size": 16}


FAMILY_ROWS = (
    Family(
        name="vit",
        title="ViT",
        hub_tag="vit",
        model_type="tokenprune_vit",
        config="TokenPruneViTConfig",
        config_module="configuration_tokenprune_vit",
        modules=(
            "modeling_tokenprune_vit",
            "modeling_tokenprune_vit_dense",
        ),
        stock_config="ViTConfig",
        stock="ViTForImageClassification",
        model="TokenPruneViTForImageClassification",
        architectures={
            "vit-tiny-patch16-224": _vit(192, 12, 3),
            "vit-small-patch16-224": _vit(384, 12, 6),
            "vit-base-patch16-224": _vit(768, 12, 12),
            "vit-large-patch16-224": _vit(1024, 24, 16),
        },
    ),
    Family(
        name="deit",
        title="DeiT",
        hub_tag="deit",
        model_type="tokenprune_deit",
        config="TokenPruneDeiTConfig",
        config_module="configuration_tokenprune_deit",
        modules=("modeling_tokenprune_deit",),
        stock_config="DeiTConfig",
        stock="DeiTForImageClassificationWithTeacher",
        model="TokenPruneDeiTForImageClassificationWithTeacher",
        head_inputs=2,  # the CLS head and the distillation head
        gaps={
            "training": NO_TRAINING_LOSS,
            "tune": VIT_ONLY.format("the tuner"),
            "visualize": VIT_ONLY.format("visualize"),
            "dense": "no DeiT backbone class yet",
        },
    ),
    Family(
        name="dinov2",
        title="DINOv2",
        hub_tag="dinov2",
        model_type="tokenprune_dinov2",
        config="TokenPruneDinov2Config",
        config_module="configuration_tokenprune_dinov2",
        modules=("modeling_tokenprune_dinov2",),
        stock_config="Dinov2Config",
        stock="Dinov2ForImageClassification",
        model="TokenPruneDinov2ForImageClassification",
        head_inputs=2,  # CLS next to the patch mean
        architectures={
            "dinov2-base-patch14-518": dict(
                hidden_size=768,
                num_hidden_layers=12,
                num_attention_heads=12,
                mlp_ratio=4,
                image_size=518,
                patch_size=14,
            ),
        },
        gaps={
            "tune": VIT_ONLY.format("the tuner"),
            "visualize": VIT_ONLY.format("visualize"),
            "dense": "no DINOv2 backbone class yet",
        },
    ),
    Family(
        name="dinov2_with_registers",
        title="DINOv2 with registers",
        hub_tag="dinov2",
        model_type="tokenprune_dinov2_with_registers",
        config="TokenPruneDinov2WithRegistersConfig",
        config_module="configuration_tokenprune_dinov2",
        modules=("modeling_tokenprune_dinov2",),
        stock_config="Dinov2WithRegistersConfig",
        stock="Dinov2WithRegistersForImageClassification",
        model="TokenPruneDinov2WithRegistersForImageClassification",
        head_inputs=2,
        gaps={
            "tune": VIT_ONLY.format("the tuner"),
            "visualize": VIT_ONLY.format("visualize"),
            "dense": "no DINOv2 backbone class yet",
        },
    ),
    Family(
        name="dinov3_vit",
        title="DINOv3 ViT",
        hub_tag="dinov3",
        model_type="tokenprune_dinov3_vit",
        config="TokenPruneDINOv3ViTConfig",
        config_module="configuration_tokenprune_dinov3",
        modules=("modeling_tokenprune_dinov3",),
        stock_config="DINOv3ViTConfig",
        stock="DINOv3ViTModel",
        model="TokenPruneDINOv3ViTModel",
        output="pooler_output",
        head_inputs=0,  # features: no classifier
        architectures={
            "dinov3-vitb16-512": dict(
                hidden_size=768,
                num_hidden_layers=12,
                num_attention_heads=12,
                intermediate_size=3072,
                image_size=512,
                patch_size=16,
                num_register_tokens=4,
                layerscale_value=1.0,
            ),
            "dinov3-vitb16-1024": dict(
                hidden_size=768,
                num_hidden_layers=12,
                num_attention_heads=12,
                intermediate_size=3072,
                image_size=1024,
                patch_size=16,
                num_register_tokens=4,
                layerscale_value=1.0,
            ),
        },  # fmt: skip
        gaps={
            "training": NO_TRAINING_LOSS,
            "tune": VIT_ONLY.format("the tuner"),
            "visualize": VIT_ONLY.format("visualize"),
        },
    ),
    Family(
        name="videomae",
        title="VideoMAE",
        hub_tag="videomae",
        model_type="tokenprune_videomae",
        config="TokenPruneVideoMAEConfig",
        config_module="configuration_tokenprune_videomae",
        modules=("modeling_tokenprune_videomae",),
        stock_config="VideoMAEConfig",
        stock="VideoMAEForVideoClassification",
        model="TokenPruneVideoMAEForVideoClassification",
        architectures={
            "videomae-base-16x224": dict(
                hidden_size=768,
                num_hidden_layers=12,
                num_attention_heads=12,
                intermediate_size=3072,
                image_size=224,
                patch_size=16,
                num_frames=16,
                tubelet_size=2,
            ),
        },
        gaps={
            "tune": VIT_ONLY.format("the tuner"),
            "visualize": "visualize draws images; render_video_tokens (hf_tokenprune.visualization) draws clips",
            "dense": "no video dense class",
        },
    ),
    Family(
        name="clip_vision",
        title="CLIP vision tower",
        hub_tag="clip",
        model_type="tokenprune_clip_vision_model",
        config="TokenPruneCLIPVisionConfig",
        config_module="configuration_tokenprune_clip",
        modules=("modeling_tokenprune_clip",),
        stock_config="CLIPVisionConfig",
        stock="CLIPVisionModelWithProjection",
        model="TokenPruneCLIPVisionModelWithProjection",
        output="image_embeds",
        head_inputs=0,  # FLOPs count the tower without its projection, as the stock CLIPVisionModel
        architectures={
            "clip-vit-base-patch16": dict(
                hidden_size=768,
                num_hidden_layers=12,
                num_attention_heads=12,
                intermediate_size=3072,
                image_size=224,
                patch_size=16,
                projection_dim=512,
            ),
        },
        gaps={
            "training": NO_TRAINING_LOSS,
            "tune": VIT_ONLY.format("the tuner"),
            "visualize": VIT_ONLY.format("visualize"),
            "dense": "no CLIP backbone class yet",
        },
    ),
    Family(
        name="clip",
        title="CLIP",
        hub_tag="clip",
        model_type="tokenprune_clip",
        config="TokenPruneCLIPConfig",
        config_module="configuration_tokenprune_clip",
        modules=("modeling_tokenprune_clip",),
        stock_config="CLIPConfig",
        stock="CLIPModel",
        model="TokenPruneCLIPModel",
        output="image_embeds",
        head_inputs=0,
        gaps={
            "export": "export its vision tower (TokenPruneCLIPVisionModelWithProjection)",
            "benchmark": "the benchmark times its vision tower (the CLIP vision tower family)",
            "training": NO_TRAINING_LOSS,
            "tune": VIT_ONLY.format("the tuner"),
            "visualize": VIT_ONLY.format("visualize"),
            "dense": "no CLIP backbone class yet",
        },
    ),
    Family(
        name="siglip_vision",
        title="SigLIP vision tower",
        hub_tag="siglip",
        model_type="tokenprune_siglip_vision_model",
        config="TokenPruneSiglipVisionConfig",
        config_module="configuration_tokenprune_siglip",
        modules=("modeling_tokenprune_siglip",),
        stock_config="SiglipVisionConfig",
        stock="SiglipVisionModel",
        model="TokenPruneSiglipVisionModel",
        output="pooler_output",
        output_needs="vision_use_head",
        head_inputs=0,  # the attention-pooling head is not counted
        gaps={
            "training": NO_TRAINING_LOSS,
            "tune": VIT_ONLY.format("the tuner"),
            "visualize": VIT_ONLY.format("visualize"),
            "dense": "no SigLIP backbone class yet",
        },
    ),
    Family(
        name="siglip2_vision",
        title="SigLIP 2 vision tower",
        hub_tag="siglip2",
        model_type="tokenprune_siglip2_vision_model",
        config="TokenPruneSiglip2VisionConfig",
        config_module="configuration_tokenprune_siglip2",
        modules=("modeling_tokenprune_siglip2",),
        stock_config="Siglip2VisionConfig",
        stock="Siglip2VisionModel",
        model="TokenPruneSiglip2VisionModel",
        output="pooler_output",
        output_needs="vision_use_head",
        head_inputs=0,
        gaps={
            "export": "its NaFlex inputs (patches, padding mask, spatial shapes) are not exported yet",
            "benchmark": "the benchmark feeds pixel_values, not NaFlex inputs (see examples/benchmark_siglip2.py)",
            "training": NO_TRAINING_LOSS,
            "tune": VIT_ONLY.format("the tuner"),
            "visualize": VIT_ONLY.format("visualize"),
            "dense": "each NaFlex image has its own grid; no dense class",
        },
    ),
)
FAMILIES: dict[str, Family] = {row.name: row for row in FAMILY_ROWS}


def register_family(row: Family) -> Family:
    """Adds a family row (a family defined outside the package, e.g. by a test); refuses a name or model type
    that is taken by another row."""
    for known in FAMILIES.values():
        if known != row and (known.name == row.name or known.model_type == row.model_type):
            raise ValueError(f"a family named {row.name!r} or of model type {row.model_type!r} is registered already.")
    FAMILIES[row.name] = row
    return row


def is_tokenprune(model_or_config: Any) -> bool:
    """Whether a model (or config) is one of the family table's."""
    config = getattr(model_or_config, "config", model_or_config)
    return any(getattr(config, "model_type", None) == row.model_type for row in FAMILIES.values())


def family_of(model_type: str | None, capability: str | None = None) -> Family:
    """The row of a config's ``model_type`` (ours, e.g. ``tokenprune_dinov2``); refuses another one, or a family
    that lacks ``capability``, in one line."""
    for row in FAMILIES.values():
        if row.model_type == model_type:
            if capability is not None:
                row.require(capability)
            return row
    known = ", ".join(row.model_type for row in FAMILIES.values())
    raise ValueError(f"{model_type!r} is not a TokenPrune model type; the families are {known}.")


def family_for_checkpoint(model_type: str | None, capability: str | None = None) -> Family:
    """The row that reads a checkpoint's ``model_type``: ours, the stock family's (``dinov2``), or a full model whose
    vision tower a row runs (``clip``: the CLIP vision tower); a config without a model type is read as ViT. With a
    ``capability``, rows that lack it are passed over (a full CLIP checkpoint benchmarks through its vision tower)."""
    if model_type is None:
        model_type = "vit"
    rows = [row for row in FAMILIES.values() if capability is None or row.can(capability)]
    for row in rows:
        config = row.config_class()
        stock = getattr(config, "stock_model_type", None)
        if model_type in (row.model_type, stock, *getattr(config, "composite_model_types", ())):
            return row
    for row in FAMILIES.values():  # a family that reads it but lacks the capability: say why
        if model_type in (row.model_type, getattr(row.config_class(), "stock_model_type", None)):
            row.require(capability)
    able = sorted({row.model_type.removeprefix("tokenprune_") for row in rows})
    raise ValueError(f"--model holds a {model_type!r} checkpoint; the families the tools run here are {able}.")


def architectures() -> dict[str, Family]:
    """Every built-in architecture name -> its family."""
    return {name: row for row in FAMILIES.values() for name in row.architectures}


def build_config(model: str | None, arch: str, capability: str | None = None, **plans: Any) -> Any:
    """The config of a checkpoint (folder or Hub id; any family, stock or ours) or of a built-in architecture
    (random weights, 1,000 labels), with the given plans."""
    plans = {key: value for key, value in plans.items() if value is not None}
    if model is not None:
        from transformers import PretrainedConfig

        model_type = PretrainedConfig.get_config_dict(model)[0].get("model_type")
        return family_for_checkpoint(model_type, capability).config_class().from_pretrained(model, **plans)
    known = architectures()
    if arch not in known:
        raise ValueError(f"--arch {arch!r} is not built in; allowed: {sorted(known)}.")
    row = known[arch]
    if capability is not None:
        row.require(capability)
    return row.config_class()(**row.architectures[arch], num_labels=1000, **plans)
