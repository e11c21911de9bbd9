"""Cropr's segmentation scorer learns to select: on a backbone trained for segmentation, a short training of its
per-query auxiliary heads (the official recipe: one query per patch, the patch labels downsampled by nearest
neighbour, the raw logits summed over queries as the token score) makes the pruning keep a larger share of digit
patches than random selection of the same count would.

The official segmentation code fine-tunes a pretrained backbone; a scorer trained from the first step together with
a backbone that does not yet tell digits from background ranks tokens no better than chance (the picture of the
example's former from-scratch run). A digit patch is one with at least one stroke pixel.
"""

import numpy as np
import pytest
import torch
from test_selection_learns import train

from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForSemanticSegmentation
from hf_tokenprune.data import digit_segmentation_arrays
from hf_tokenprune.training import init_sincos_position_embeddings

MODEL = dict(
    image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
    num_labels=11, restore_tokens=True,
)  # fmt: skip
PLAN = {"method": "cropr", "tokens_per_layer": 4, "aux_head": "per_query"}  # 16 -> 11 -> 7 patches, then LLF


@pytest.fixture(scope="module")
def digits():
    out = {}
    for split, (images, masks) in digit_segmentation_arrays(canvas_size=32, digits_per_image=1).items():
        pixels = torch.from_numpy((images - 0.5) / 0.5)[:, None].expand(-1, 3, -1, -1).contiguous()
        stroke = torch.from_numpy(masks > 0).reshape(-1, 4, 8, 4, 8).any(dim=4).any(dim=2).flatten(1)  # (N, 16)
        out[split] = (pixels, torch.from_numpy(masks.astype(np.int64)), stroke)
    return out


def segmentation_loss(model, pixels, labels):
    return model(pixel_values=pixels, labels=labels).loss  # the main loss plus the per-query auxiliary losses


@pytest.mark.slow
def test_cropr_segmentation_scorer_keeps_digit_patches(digits, one_thread):
    torch.manual_seed(0)
    base = TokenPruneViTForSemanticSegmentation(TokenPruneViTConfig(**MODEL))
    init_sincos_position_embeddings(base)
    train(base, digits["train"], 1, base.parameters(), segmentation_loss, 2e-3)
    torch.manual_seed(0)
    model = TokenPruneViTForSemanticSegmentation(TokenPruneViTConfig(**MODEL, token_reduction=PLAN))
    model.load_state_dict(base.state_dict(), strict=False)
    scorer = [p for name, p in model.named_parameters() if ".scorer." in name]
    train(
        model, digits["train"], 2, scorer, segmentation_loss, 2e-3
    )  # the auxiliary loss (detached features) is what trains the scorer
    pixels, _, stroke = digits["validation"]
    with torch.no_grad():
        outputs = model(pixel_values=pixels)
    assert [counts[1] for counts in outputs.token_counts] == [17, 12, 8, 17]
    kept = outputs.token_positions[2][:, 1:] - 1  # (N, 7) patches left after the last pruning module
    kept_share, random_share = stroke.gather(1, kept).float().mean().item(), stroke.float().mean().item()
    assert kept_share > 1.5 * random_share, (kept_share, random_share)
