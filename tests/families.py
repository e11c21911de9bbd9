"""Shared helpers of the family tests: the tiny stock models of each family, our models with their weights, and
which plans a family runs."""

from dataclasses import dataclass, field, replace

import torch
from conftest import TINY
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    DeiTConfig,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers import DeiTForImageClassificationWithTeacher as StockDeiTWithTeacher

from hf_tokenprune import (
    REDUCTION_METHODS,
    TokenPruneCLIPVisionConfig,
    TokenPruneCLIPVisionModel,
    TokenPruneDeiTConfig,
    TokenPruneDeiTForImageClassificationWithTeacher,
    TokenPruneDeiTModel,
    TokenPruneDinov2Config,
    TokenPruneDinov2ForImageClassification,
    TokenPruneDinov2Model,
    TokenPruneDinov2WithRegistersConfig,
    TokenPruneDinov2WithRegistersForImageClassification,
    TokenPruneDinov2WithRegistersModel,
    TokenPruneSiglipVisionConfig,
    TokenPruneSiglipVisionModel,
)


@dataclass
class Family:
    """A model family under test: the stock HF classes, ours, a tiny config and the output both must agree on."""

    stock_config: type
    stock_model: type
    config: type
    model: type
    base: type
    num_prefix: int
    output: str = "logits"
    auto: str = "AutoModelForImageClassification"
    overrides: dict = field(default_factory=dict)
    island: set = field(default_factory=set)

    def settings(self) -> dict:
        return {key: value for key, value in {**TINY, **self.overrides}.items() if value is not None}


DINOV2 = dict(intermediate_size=None, mlp_ratio=3, layerscale_value=0.5)  # DINOv2 sizes its MLP by mlp_ratio
CLIP_VISION = dict(num_labels=None, projection_dim=24)
CLIP_ISLAND = {"configuration_tokenprune_clip.py", "modeling_tokenprune_clip.py"}
DINOV2_ISLAND = {"configuration_tokenprune_dinov2.py", "modeling_tokenprune_dinov2.py"}


FAMILIES = {
    "deit": Family(
        stock_config=DeiTConfig,
        stock_model=StockDeiTWithTeacher,
        config=TokenPruneDeiTConfig,
        model=TokenPruneDeiTForImageClassificationWithTeacher,
        base=TokenPruneDeiTModel,
        num_prefix=2,
        island={"configuration_tokenprune_deit.py", "modeling_tokenprune_deit.py"},
    ),
    "siglip": Family(  # no CLS token; the pooling head is tested below (count_flops leaves it out)
        stock_config=SiglipVisionConfig,
        stock_model=SiglipVisionModel,
        config=TokenPruneSiglipVisionConfig,
        model=TokenPruneSiglipVisionModel,
        base=TokenPruneSiglipVisionModel,
        num_prefix=0,
        output="last_hidden_state",
        auto="AutoModel",
        overrides={"num_labels": None, "vision_use_head": False},
        island={"configuration_tokenprune_siglip.py", "modeling_tokenprune_siglip.py", *CLIP_ISLAND},
    ),
    "clip": Family(
        stock_config=CLIPVisionConfig,
        stock_model=CLIPVisionModel,
        config=TokenPruneCLIPVisionConfig,
        model=TokenPruneCLIPVisionModel,
        base=TokenPruneCLIPVisionModel,
        num_prefix=1,
        output="pooler_output",
        auto="AutoModel",
        overrides=CLIP_VISION,
        island=CLIP_ISLAND,
    ),
    "dinov2": Family(
        stock_config=Dinov2Config,
        stock_model=Dinov2ForImageClassification,
        config=TokenPruneDinov2Config,
        model=TokenPruneDinov2ForImageClassification,
        base=TokenPruneDinov2Model,
        num_prefix=1,
        overrides=DINOV2,
        island=DINOV2_ISLAND,
    ),
    "dinov2-registers": Family(
        stock_config=Dinov2WithRegistersConfig,
        stock_model=Dinov2WithRegistersForImageClassification,
        config=TokenPruneDinov2WithRegistersConfig,
        model=TokenPruneDinov2WithRegistersForImageClassification,
        base=TokenPruneDinov2WithRegistersModel,
        num_prefix=4,
        overrides={**DINOV2, "num_register_tokens": 3},
        island=DINOV2_ISLAND,
    ),
}
# The giant sizes' MLP; on disk its input projection is one fused matrix.
FAMILIES["dinov2-swiglu"] = replace(
    FAMILIES["dinov2"], overrides={**DINOV2, "use_swiglu_ffn": True, "drop_path_rate": 0.1}
)
SHARED_ISLAND = {
    "configuration_tokenprune_common.py",
    "modeling_tokenprune_common.py",
    "token_reduction.py",
    "methods.py",
    "attention_reuse.py",
    "attention_backends.py",
}
PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


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
