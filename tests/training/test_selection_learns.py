"""The learned selectors learn to select: after a short training run on the cluttered digits, DynamicViT's predictor
(its official recipe, by hand and through the Trainers) and Cropr's scorer keep a larger share of digit patches than
random selection would, DynamicViT's training keeps the planned fraction of tokens at each stage, and Cropr's
segmentation scorer keeps digit patches on a one-digit segmentation set.

A digit patch holds a pixel brighter than any clutter can be (clutter is drawn at half brightness at most), so the
share of digit patches among all patches is what a random choice of the same count keeps on average."""

import copy

import numpy as np
import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from hf_tokenprune import (
    TokenPruneViTConfig,
    TokenPruneViTForImageClassification,
    TokenPruneViTForSemanticSegmentation,
)
from hf_tokenprune.data import cluttered_digits_arrays, digit_segmentation_arrays
from hf_tokenprune.training import (
    DynamicViTTrainer,
    TokenPruneTrainer,
    distillation_loss,
    init_sincos_position_embeddings,
    trainer_arguments,
)
from hf_tokenprune.training.distillation import final_tokens, recipe_parameter_groups, token_distillation_loss

MODEL = dict(
    image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
    num_labels=10,
)  # fmt: skip
BRIGHTER_THAN_CLUTTER = 0.6
BASE_EPOCHS, BASE_LEARNING_RATE = 20, 2e-3  # about 0.43 validation accuracy (ten classes)


@pytest.fixture(scope="module")
def digits():
    arrays = cluttered_digits_arrays(seed=0, canvas_size=32)
    out = {}
    for split, (images, labels) in arrays.items():
        pixels = torch.from_numpy((images - 0.5) / 0.5).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        patches = torch.from_numpy(images).reshape(-1, 4, 8, 4, 8).amax(dim=(2, 4)).flatten(1)  # (N, 16)
        out[split] = (pixels, torch.from_numpy(labels), patches > BRIGHTER_THAN_CLUTTER)
    return out


def train(model, data, epochs, parameters, loss_fn, learning_rate, batch_size=32):
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.05)
    pixels, labels, _ = data
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), batch_size):
            batch = order[start : start + batch_size]
            loss = loss_fn(model, pixels[batch], labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def base(digits):
    torch.manual_seed(0)
    model = TokenPruneViTForImageClassification(TokenPruneViTConfig(**MODEL))
    init_sincos_position_embeddings(model)
    plain = lambda m, x, y: m(pixel_values=x, labels=y).loss  # noqa: E731
    return train(model, digits["train"], BASE_EPOCHS, model.parameters(), plain, BASE_LEARNING_RATE)


def selector(base, plan):
    torch.manual_seed(0)
    model = TokenPruneViTForImageClassification(TokenPruneViTConfig(**MODEL, token_reduction=plan))
    model.load_state_dict(base.state_dict(), strict=False)
    return model


def digit_share(model, data) -> tuple[float, float]:
    """(share of digit patches among the patches the last stage keeps, share among all patches)."""
    pixels, _, digit = data
    with torch.no_grad():
        positions = model(pixel_values=pixels).token_positions[-1][:, 1:] - 1  # (N, K) patch indices
    return digit.gather(1, positions).float().mean().item(), digit.float().mean().item()


@pytest.mark.slow
def test_dynamicvit_official_recipe_learns_to_keep_the_digit(digits, base):
    model = selector(base, {"method": "dynamicvit", "layers": [1, 2], "keep_rate": 0.5})
    teacher = copy.deepcopy(base).requires_grad_(False)

    def recipe_loss(m, x, y):  # CE + 2 ratio (in the model's loss) + 0.5 KL + 0.5 token MSE, as the official
        with torch.no_grad():
            reference = teacher(pixel_values=x, output_hidden_states=True)
        out = m(pixel_values=x, labels=y, output_hidden_states=True)
        tokens = token_distillation_loss(final_tokens(m, out), out, final_tokens(teacher, reference))
        return out.loss + 0.5 * distillation_loss(out.logits, reference.logits) + 0.5 * tokens

    before, random_share = digit_share(model, digits["validation"])
    groups = recipe_parameter_groups(model, 1e-3, backbone_lr_scale=0.0)  # the recipe's frozen-backbone phase
    train(model, digits["train"], 2, groups, recipe_loss, 1e-3)
    after, _ = digit_share(model, digits["validation"])
    assert after > random_share + 0.15, (before, after, random_share)


class StageFractions(TrainerCallback):
    """The kept fraction of each DynamicViT stage in masked training, on a fixed batch, after the last step."""

    def __init__(self, model, pixels):
        self.pixels, self.kept = pixels, {}
        for layer, module in enumerate(model.vit.layers):
            if module.token_reduction is not None:
                self._watch(module.token_reduction, layer)

    def _watch(self, reduction, layer):
        masked = reduction._mask

        def record(x, state, target):
            x, state = masked(x, state, target)
            self.kept[layer] = state.key_policy[:, 1:].mean().item()
            return x, state

        reduction._mask = record

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.train()
        torch.manual_seed(1)
        with torch.no_grad():
            model(pixel_values=self.pixels)
        model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("trainer_class", [DynamicViTTrainer, TokenPruneTrainer], ids=lambda c: c.__name__)
def test_dynamicvit_trains_to_its_keep_ratio_through_the_trainer(digits, base, trainer_class, tmp_path, one_thread):
    """A few hundred Trainer steps: the official recipe (`DynamicViTTrainer`, 270 steps), or the plain
    `TokenPruneTrainer` at a quarter of the base rate (540 steps: the whole model moves, and the kept fraction
    overshoots while the rate is high). Each stage's kept fraction ends within 0.05 of its target, and the
    inference-time selection keeps more digit patches than a random choice."""
    plan = {"method": "dynamicvit", "layers": [1, 2], "keep_rate": 0.7}
    model = selector(base, plan)
    pixels, labels, _ = digits["train"]
    dataset = [{"pixel_values": p, "labels": int(label)} for p, label in zip(pixels, labels)]
    common = dict(output_dir=str(tmp_path), per_device_train_batch_size=32, report_to="none", save_strategy="no",
                  disable_tqdm=True, dataloader_pin_memory=False, use_cpu=True, seed=0)  # fmt: skip
    if trainer_class is DynamicViTTrainer:
        args = TrainingArguments(num_train_epochs=6, **trainer_arguments("dynamicvit", BASE_LEARNING_RATE), **common)
    else:
        args = TrainingArguments(num_train_epochs=12, learning_rate=BASE_LEARNING_RATE / 4, **common)
    stages = StageFractions(model, digits["validation"][0])
    trainer_class(model=model, args=args, train_dataset=dataset, callbacks=[stages]).train()
    targets = {1: 0.7, 2: 0.49}
    assert stages.kept.keys() == targets.keys()
    assert all(abs(stages.kept[layer] - target) <= 0.05 for layer, target in targets.items()), stages.kept
    share, random_share = digit_share(model, digits["validation"])
    assert share > random_share + 0.15, (share, random_share)


@pytest.mark.slow
def test_cropr_scorer_learns_to_keep_the_digit(digits, base):
    model = selector(base, {"method": "cropr", "tokens_per_layer": 3, "last_layer_fusion": False})
    before, random_share = digit_share(model, digits["validation"])
    groups = recipe_parameter_groups(model, 3e-3, backbone_lr_scale=0.0)  # the scorers and auxiliary heads only
    train(model, digits["train"], 3, groups, lambda m, x, y: m(pixel_values=x, labels=y).loss, 3e-3)
    after, _ = digit_share(model, digits["validation"])
    assert after > random_share + 0.15, (before, after, random_share)


SEGMENTATION_MODEL = dict(
    image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
    num_labels=11, restore_tokens=True,
)  # fmt: skip
SEGMENTATION_PLAN = {
    "method": "cropr",
    "tokens_per_layer": 4,
    "aux_head": "per_query",
}  # 16 -> 11 -> 7 patches, then LLF


@pytest.fixture(scope="module")
def segmentation_digits():
    out = {}
    for split, (images, masks) in digit_segmentation_arrays(canvas_size=32, digits_per_image=1).items():
        pixels = torch.from_numpy((images - 0.5) / 0.5)[:, None].expand(-1, 3, -1, -1).contiguous()
        stroke = torch.from_numpy(masks > 0).reshape(-1, 4, 8, 4, 8).any(dim=4).any(dim=2).flatten(1)  # (N, 16)
        out[split] = (pixels, torch.from_numpy(masks.astype(np.int64)), stroke)
    return out


def segmentation_loss(model, pixels, labels):
    return model(pixel_values=pixels, labels=labels).loss  # the main loss plus the per-query auxiliary losses


def cropr_segmentation_kept_share(data, seed: int) -> tuple[float, float]:
    """(share of digit patches among those kept after the last pruning module, share at random) after training the
    per-query scorer of a segmentation model from ``seed``."""
    torch.manual_seed(seed)
    base = TokenPruneViTForSemanticSegmentation(TokenPruneViTConfig(**SEGMENTATION_MODEL))
    init_sincos_position_embeddings(base)
    train(base, data["train"], 1, base.parameters(), segmentation_loss, 2e-3)
    torch.manual_seed(seed)
    model = TokenPruneViTForSemanticSegmentation(
        TokenPruneViTConfig(**SEGMENTATION_MODEL, token_reduction=SEGMENTATION_PLAN)
    )
    model.load_state_dict(base.state_dict(), strict=False)
    scorer = [p for name, p in model.named_parameters() if ".scorer." in name]
    train(
        model, data["train"], 2, scorer, segmentation_loss, 2e-3
    )  # the auxiliary loss (detached features) is what trains the scorer
    pixels, _, stroke = data["validation"]
    with torch.no_grad():
        outputs = model(pixel_values=pixels)
    assert [counts[1] for counts in outputs.token_counts] == [17, 12, 8, 17]
    kept = outputs.token_positions[2][:, 1:] - 1  # (N, 7) patches left after the last pruning module
    return stroke.gather(1, kept).float().mean().item(), stroke.float().mean().item()


@pytest.mark.slow
def test_cropr_segmentation_scorer_keeps_digit_patches(segmentation_digits, one_thread):
    # One run can rank the other way round (seed 0 with the official query initialisation kept 0.03 digit patches
    # against 0.24 at random; seeds 1-4 kept 0.45-0.50): the median of three seeds must keep digits.
    shares = [cropr_segmentation_kept_share(segmentation_digits, seed) for seed in (0, 1, 2)]
    kept_share, random_share = sorted(shares)[1]
    assert kept_share > 1.5 * random_share, shares
