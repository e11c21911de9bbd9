"""The learned selectors learn to select: after a short training run on the cluttered digits, DynamicViT's predictor
(its official recipe) and Cropr's scorer keep a larger share of digit patches than random selection would, and
Cropr's segmentation scorer keeps digit patches on a one-digit segmentation set.

A digit patch holds a pixel brighter than any clutter can be (clutter is drawn at half brightness at most), so the
share of digit patches among all patches is what a random choice of the same count keeps on average."""

import copy

import numpy as np
import pytest
import torch

from hf_tokenprune import (
    TokenPruneViTConfig,
    TokenPruneViTForImageClassification,
    TokenPruneViTForSemanticSegmentation,
)
from hf_tokenprune.data import cluttered_digits_arrays, digit_segmentation_arrays
from hf_tokenprune.training import distillation_loss, init_sincos_position_embeddings
from hf_tokenprune.training.distillation import final_tokens, recipe_parameter_groups, token_distillation_loss

MODEL = dict(
    image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
    num_labels=10,
)  # fmt: skip
BRIGHTER_THAN_CLUTTER = 0.6


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
    return train(model, digits["train"], 2, model.parameters(), plain, 2e-3)


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


@pytest.mark.slow
def test_cropr_segmentation_scorer_keeps_digit_patches(segmentation_digits, one_thread):
    torch.manual_seed(0)
    base = TokenPruneViTForSemanticSegmentation(TokenPruneViTConfig(**SEGMENTATION_MODEL))
    init_sincos_position_embeddings(base)
    train(base, segmentation_digits["train"], 1, base.parameters(), segmentation_loss, 2e-3)
    torch.manual_seed(0)
    model = TokenPruneViTForSemanticSegmentation(
        TokenPruneViTConfig(**SEGMENTATION_MODEL, token_reduction=SEGMENTATION_PLAN)
    )
    model.load_state_dict(base.state_dict(), strict=False)
    scorer = [p for name, p in model.named_parameters() if ".scorer." in name]
    train(
        model, segmentation_digits["train"], 2, scorer, segmentation_loss, 2e-3
    )  # the auxiliary loss (detached features) is what trains the scorer
    pixels, _, stroke = segmentation_digits["validation"]
    with torch.no_grad():
        outputs = model(pixel_values=pixels)
    assert [counts[1] for counts in outputs.token_counts] == [17, 12, 8, 17]
    kept = outputs.token_positions[2][:, 1:] - 1  # (N, 7) patches left after the last pruning module
    kept_share, random_share = stroke.gather(1, kept).float().mean().item(), stroke.float().mean().item()
    assert kept_share > 1.5 * random_share, (kept_share, random_share)
