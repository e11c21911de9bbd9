"""DINOv3's rotary position embeddings under a plan: a token keeps the angles of its own patch through every
reduction (checked against the stock layer given each kept token's angles), a merged token has its destination's
position, and the prefix (CLS, registers) is never rotated, dropped or merged."""

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from hf_tokenprune import TokenPruneDINOv3ViTConfig, TokenPruneDINOv3ViTModel
from hf_tokenprune.flops import count_flops

SMALL = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32,
             patch_size=4, num_register_tokens=4, layerscale_value=0.5)  # fmt: skip
PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def models(plan: dict):
    torch.manual_seed(0)
    stock = DINOv3ViTModel(DINOv3ViTConfig(**SMALL)).eval()
    with torch.no_grad():  # peaky attention (random weights attend almost uniformly): positions matter
        for layer in stock.model.layer:
            layer.attention.q_proj.weight.mul_(30)
            layer.attention.k_proj.weight.mul_(30)
    ours = TokenPruneDINOv3ViTModel(TokenPruneDINOv3ViTConfig(**SMALL, token_reduction=plan)).eval()
    ours.load_state_dict(stock.state_dict(), strict=False)
    return stock, ours


def test_a_kept_token_attends_with_its_own_patch_angles_after_two_reductions():
    # Two pruning layers (1 and 2, without fusion) shuffle and shrink the sequence; layer 3 runs as the stock layer
    # would on the kept tokens, each rotated by its own patch's angles.
    stock, ours = models({"method": "evit", "layers": [1, 2], "keep_rate": 0.5, "fuse": False})
    with torch.no_grad():
        out = ours(PIXELS, output_hidden_states=True)
        cos, sin = stock.rope_embeddings(PIXELS)  # (patches, head_dim), in patch order
        layer_input, positions = out.hidden_states[3], out.token_positions[3]  # the input of layer 3
        prefix = 1 + SMALL["num_register_tokens"]
        assert positions.shape[1] < 1 + 4 + 64 and torch.equal(
            positions[:, :prefix], torch.arange(prefix).expand(2, -1)
        )
        patches = positions[:, prefix:] - prefix  # (B, kept) the patch each token holds, not in patch order
        assert not torch.equal(patches, patches.sort(dim=1).values)
        angles = (cos[patches].unsqueeze(1), sin[patches].unsqueeze(1))  # (B, 1, kept, head_dim)
        expected = stock.model.layer[3](layer_input, position_embeddings=angles)
        torch.testing.assert_close(out.hidden_states[4], expected, atol=1e-6, rtol=0)
        shifted = (cos[: patches.shape[1]], sin[: patches.shape[1]])  # the first patches' angles instead
        wrong = stock.model.layer[3](layer_input, position_embeddings=shifted)
        assert (out.hidden_states[4] - wrong).abs().max() > 1e-3  # the test tells the two apart


def test_a_merged_token_has_its_destination_position_and_the_prefix_stays():
    stock, ours = models({"method": "tome", "r": 12})
    with torch.no_grad():
        out = ours(PIXELS)
    prefix = 1 + SMALL["num_register_tokens"]
    for layer, (positions, owner) in enumerate(zip(out.token_positions, out.token_owner)):
        assert torch.equal(positions[:, :prefix], torch.arange(prefix).expand(2, -1)), layer
        if owner is None:
            continue
        # the token at index j stands at position p_j, one of the patches it holds (its destination's)
        held = owner.gather(1, positions)  # (B, N): which token holds the patch at each token's position
        assert torch.equal(held, torch.arange(positions.shape[1]).expand(2, -1)), layer
    assert out.token_counts[-1][1] < 1 + 4 + 64


def test_keep_all_and_a_larger_image_give_the_stock_features():
    stock, ours = models({"method": "evit", "keep_rate": 1.0})
    larger = torch.randn(1, 3, 48, 40)  # RoPE: any multiple of the patch, no table to interpolate
    with torch.no_grad():
        for pixels in (PIXELS, larger):
            torch.testing.assert_close(ours(pixels).last_hidden_state, stock(pixels).last_hidden_state, atol=0, rtol=0)


def test_the_gated_mlp_without_registers_gives_the_stock_features_and_counts_its_three_matrices():
    # The family matrix runs DINOv3 with registers and the plain MLP; the large sizes' gated MLP, key bias and no
    # registers here.
    settings = {**SMALL, "num_register_tokens": 0, "use_gated_mlp": True, "key_bias": True}
    torch.manual_seed(0)
    stock = DINOv3ViTModel(DINOv3ViTConfig(**settings)).eval()
    ours = TokenPruneDINOv3ViTModel(TokenPruneDINOv3ViTConfig(**settings, token_reduction={"method": "tome", "r": 0}))
    assert not ours.load_state_dict(stock.state_dict(), strict=False).missing_keys
    ours.eval().set_attn_implementation("eager")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = ours(PIXELS)
    torch.testing.assert_close(out.last_hidden_state, stock(PIXELS).last_hidden_state, atol=1e-6, rtol=0)
    assert count_flops(ours.config).flops == counter.get_total_flops() / PIXELS.shape[0]
