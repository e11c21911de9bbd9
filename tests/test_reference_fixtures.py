"""Our methods against their official implementations, on identical weights and inputs.

Each ``tests/fixtures/*.safetensors`` was written by ``scripts/make_reference_fixtures.py`` from the official code
(the repository and commit are in the file's metadata): weights under our names, inputs, the official logits in
float64 and float32, and per layer what the official code kept (embedding positions of the kept patch tokens) or
merged (ToMe: which token holds each input token). Our model must keep or merge the same tokens and give the same
logits.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForImageClassification

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("*.safetensors"))
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5}


def load(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as file:
        return file.metadata(), {key: file.get_tensor(key) for key in file.keys()}


def canonical(owner: torch.Tensor) -> torch.Tensor:
    """Relabels each row's groups by order of first appearance: equal partitions give equal tensors."""
    rows = []
    for row in owner.tolist():
        labels: dict[int, int] = {}
        rows.append([labels.setdefault(value, len(labels)) for value in row])
    return torch.tensor(rows)


def reference_model(metadata: dict, tensors: dict) -> TokenPruneViTForImageClassification:
    config = TokenPruneViTConfig(**json.loads(metadata["config"]))
    model = TokenPruneViTForImageClassification(config).eval()
    weights = {key.removeprefix("weights."): value for key, value in tensors.items() if key.startswith("weights.")}
    model.load_state_dict(weights, strict=True)
    return model


def check_selections(out, metadata: dict, tensors: dict) -> int:
    """Asserts our kept/merged tokens equal the official ones at every recorded layer; returns how many."""
    kind, checked = metadata["selection"], 0
    for key, official in tensors.items():
        if not key.startswith(kind + "."):
            continue
        layer = int(key.split(".")[1])
        if kind == "owner":
            assert torch.equal(canonical(out.token_owner[layer]), canonical(official)), f"merges differ at {layer}"
        else:
            ours = out.token_positions[layer][:, 1 : 1 + official.shape[1]]  # CLS first, a fused token last
            assert torch.equal(ours.sort(dim=1).values, official.sort(dim=1).values), f"kept differ at {layer}"
        checked += 1
    return checked


@pytest.mark.parametrize("path", FIXTURES, ids=[path.stem for path in FIXTURES])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_same_selections_and_logits_as_the_official_code(path, dtype):
    metadata, tensors = load(path)
    model = reference_model(metadata, tensors).to(dtype)
    with torch.no_grad():
        out = model(tensors["pixel_values"].to(dtype))
    assert check_selections(out, metadata, tensors) >= (3 if metadata["selection"] != "none" else 0)
    official = tensors["logits_fp64" if dtype == torch.float64 else "logits_fp32"].to(dtype)
    torch.testing.assert_close(out.logits, official, atol=TOLERANCE[dtype], rtol=0)


def test_every_method_with_a_fixture_has_two_operating_points():
    methods = [load(path)[0]["method"] for path in FIXTURES]
    assert {"tome", "evit", "dynamicvit", "supervit", "evo_vit", "cropr", "skipat"} <= set(methods)
    assert all(methods.count(method) >= 2 for method in set(methods))
