"""Shared helpers of the family tests: the family matrix, derived from the family table (`hf_tokenprune.families`):
each case is a row of the table with a tiny config, the stock model of the row and ours with its weights, and which
plans a family runs.

Every row of the table is a case here (ViT among them), or is excluded below with the reason; a test fails when a
row is neither, so a new family is tested by adding its tiny settings.
"""

from dataclasses import dataclass, field

import torch
from conftest import TINY
from transformers import CLIPConfig, CLIPModel

from hf_tokenprune import REDUCTION_METHODS
from hf_tokenprune.families import FAMILIES as TABLE
from hf_tokenprune.families import ISLAND
from hf_tokenprune.families import Family as Row

SHARED_ISLAND = {
    "configuration_tokenprune_common.py",
    "modeling_tokenprune_common.py",
    "token_reduction.py",
    "methods.py",
    "attention_reuse.py",
    "attention_backends.py",
}


@dataclass
class Family:
    """A case of the family matrix: a row of the family table and the tiny settings its models are built with."""

    row: Row
    overrides: dict = field(default_factory=dict)
    # What the case compares, when not the row's (stock class, our class, output): a tower's features, say.
    compared: tuple[str, str, str] | None = None

    @property
    def stock_config(self) -> type:
        return self.row.stock_classes()[0]

    @property
    def stock_model(self) -> type:
        import transformers

        return getattr(transformers, self.compared[0]) if self.compared else self.row.stock_classes()[1]

    @property
    def config(self) -> type:
        return self.row.config_class()

    @property
    def model(self) -> type:
        return self.row.load(self.compared[1]) if self.compared else self.row.model_class()

    @property
    def base(self) -> type:
        """The base model: what ``AutoModel`` gives for a saved folder."""
        return self.row.auto_mapping()["AutoModel"]

    @property
    def auto(self) -> str | None:
        """The Auto class of ``model``, if it has one (CLIP's tower with projection has none in transformers)."""
        return next((auto for auto, cls in self.row.auto_mapping().items() if cls is self.model), None)

    @property
    def output(self) -> str:
        return self.compared[2] if self.compared else self.row.output

    @property
    def in_island(self) -> bool:
        return self.row.package == ISLAND

    @property
    def num_prefix(self) -> int:
        return self.config(**self.settings()).num_prefix_tokens

    @property
    def island(self) -> set[str]:
        """The files a checkpoint of ``model`` carries: the shared island files, and the family's own."""
        modules = (self.row.config_module, self.model.__module__.rpartition(".")[2])
        if self.row.name == "siglip_vision":  # SigLIP's layer is CLIP's
            modules += ("configuration_tokenprune_clip", "modeling_tokenprune_clip")
        return {f"{module}.py" for module in modules} | (SHARED_ISLAND if self.in_island else set())

    def settings(self) -> dict:
        return {key: value for key, value in {**TINY, **self.overrides}.items() if value is not None}

    @property
    def pixels(self) -> torch.Tensor:
        """Two inputs of the family's shape (images, or clips of frames), the same for every test."""
        shape = self.config(**self.settings()).input_shape()
        return torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))


DINOV2 = dict(intermediate_size=None, mlp_ratio=3, layerscale_value=0.5)  # DINOv2 sizes its MLP by mlp_ratio
CLIP_VISION = dict(num_labels=None, projection_dim=24)

# The matrix: a case per row of the table, with a tiny config (and variants of a row worth their own case).
FAMILIES = {
    "vit": Family(TABLE["vit"]),
    "deit": Family(TABLE["deit"]),
    # The towers' features (what FLOPs count: no projection, no pooling head); export tests their heads.
    "siglip": Family(
        TABLE["siglip_vision"],
        {"num_labels": None, "vision_use_head": False},
        ("SiglipVisionModel", "TokenPruneSiglipVisionModel", "last_hidden_state"),
    ),
    "clip": Family(
        TABLE["clip_vision"], CLIP_VISION, ("CLIPVisionModel", "TokenPruneCLIPVisionModel", "pooler_output")
    ),
    "dinov2": Family(TABLE["dinov2"], DINOV2),
    "dinov2-registers": Family(TABLE["dinov2_with_registers"], {**DINOV2, "num_register_tokens": 3}),
    # RoPE, four registers, no classifier: the model's CLS features (pooler_output) are compared.
    "dinov3": Family(TABLE["dinov3_vit"], {"num_labels": None, "num_register_tokens": 4, "layerscale_value": 0.5}),
    # Video: no CLS token, 8 frames of 16 px in tubelets of 2 x 4 x 4: a grid of 4 x 4 x 4, the images' 64 tokens.
    "videomae": Family(TABLE["videomae"], {"image_size": 16, "num_frames": 8, "tubelet_size": 2}),
    # The giant sizes' MLP; on disk its input projection is one fused matrix.
    "dinov2-swiglu": Family(TABLE["dinov2"], {**DINOV2, "use_swiglu_ffn": True, "drop_path_rate": 0.1}),
}
if "vit_msn" in TABLE:  # the throwaway family of tests/extensions, registered by conftest
    FAMILIES["vit-msn"] = Family(TABLE["vit_msn"])
# SigLIP 2's tiny tower (tests/models/test_siglip2.py and the Hub tests): a 4x4 position grid of 4-pixel patches.
SIGLIP2_TINY = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, num_patches=16, patch_size=4
)  # fmt: skip
# Rows the image matrix does not take, and where they are tested.
EXCLUDED = {
    "clip": "the full CLIP model takes text as well as images: tests/models/test_families.py tests it apart",
    "siglip2_vision": "NaFlex inputs (patches, padding, grids): tests/models/test_siglip2.py",
}
PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # the image families' inputs


def pixels_of(name: str) -> torch.Tensor:
    """The inputs of a case of the matrix (`PIXELS` for an image family)."""
    return FAMILIES[name].pixels


def stock_models(tmp_path_factory, families=FAMILIES):
    """A function: family name -> (stock model, folder it is saved in), each built once (a test module's
    ``stock`` fixture); ``families`` may replace `FAMILIES`."""
    cache = {}

    def get(name):
        if name not in cache:
            family = families[name]
            torch.manual_seed(0)
            model = family.stock_model(family.stock_config(**family.settings())).eval()
            folder = tmp_path_factory.mktemp(f"stock-{name}")
            model.save_pretrained(folder)
            cache[name] = (model, folder)
        return cache[name]

    return get


def ours(name, stock_model, families=FAMILIES, **config):
    """Our model of a family with the stock model's weights (new parameters seeded, so two calls agree)."""
    family = families[name]
    torch.manual_seed(0)
    model = family.model(family.config(**family.settings(), **config)).eval()
    missing, unexpected = model.load_state_dict(stock_model.state_dict(), strict=False)
    new = {n for n, _ in model.named_parameters()} - set(stock_model.state_dict())
    assert set(missing) == new and not unexpected
    return model


def fits(name: str, plan: dict | None) -> bool:
    """Whether the family runs the plan: what the method needs of a family (its ``plan_needs``) is what the family's
    config provides (SigLIP has no CLS token; only ViT's classifier has Evo-ViT's second head; tested below)."""
    if plan is None:
        return True
    return set(REDUCTION_METHODS[plan["method"]].plan_needs(plan)) <= FAMILIES[name].config.provides


def cases(plans: dict, with_none: bool = False) -> list[tuple[str, str]]:
    """(family, plan name) pairs the family runs, for parametrize."""
    names = (["none"] if with_none else []) + sorted(plans)
    return [(family, n) for family in sorted(FAMILIES) for n in names if fits(family, plans.get(n))]


def output_of(name, outputs):
    return getattr(outputs, FAMILIES[name].output)


def tiny_clip(**vision) -> CLIPConfig:
    text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=99)
    text.update(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = {**FAMILIES["clip"].settings(), **vision}
    return CLIPConfig(vision_config=vision, text_config=text, projection_dim=24)


def clip_checkpoint(tmp_path_factory):
    """A tiny stock `CLIPModel` and the folder it is saved in (a test module's ``clip_folder`` fixture)."""
    torch.manual_seed(0)
    stock_model = CLIPModel(tiny_clip()).eval()
    folder = tmp_path_factory.mktemp("stock-clip-full")
    stock_model.save_pretrained(folder)
    return stock_model, folder


TEXT = torch.tensor([[5, 9, 17, 3, 1], [8, 44, 2, 1, 1]])


def save_text_and_image_processors(folder) -> None:
    """A word-level tokenizer and a CLIP image processor for 32 px, so pipelines load the folder offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPImageProcessor, PreTrainedTokenizerFast

    words = ["<s>", "</s>", "<unk>", "a", "photo", "of", "cat", "dog", "car"]
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)]
    )
    special = dict(bos_token="<s>", eos_token="</s>", pad_token="</s>", unk_token="<unk>")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)


PIPELINE_CLASSIFIERS = ("deit", "dinov2", "dinov2-registers")  # families whose classifier runs the pipeline


def save_classifier(folder, model) -> None:
    """Saves a classifier with named labels and a 32 px image processor, so `pipeline("image-classification")`
    loads the folder offline."""
    from transformers import ViTImageProcessor

    model.config.id2label = {i: f"class-{i}" for i in range(model.config.num_labels)}
    model.config.label2id = {label: i for i, label in model.config.id2label.items()}
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
