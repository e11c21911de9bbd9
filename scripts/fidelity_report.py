"""Our methods against the official code's reference fixtures, as a saved result for the docs (for maintainers).

For every ``tests/fixtures/*.safetensors`` (written from the official code by ``make_reference_fixtures.py``) it
runs our model on the fixture's weights and inputs in float32 and float64 and records the largest logit difference
from the official logits and whether every recorded layer kept (or merged) the same tokens. The tests assert the
same on every run; this file keeps the measured differences for ``docs/methods.md``.

    python scripts/fidelity_report.py --output docs/results/fidelity/fidelity.json
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForImageClassification
from hf_tokenprune.measure.devices import provenance

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def same_selections(out, metadata: dict, tensors: dict) -> bool:
    """Every recorded layer kept (or, for ToMe, grouped) the same tokens as the official code."""
    kind = metadata["selection"]
    for key, official in tensors.items():
        if not key.startswith(kind + "."):
            continue
        layer = int(key.split(".")[1])
        if kind == "owner":
            ours = [groups(row) for row in out.token_owner[layer].tolist()]
            if ours != [groups(row) for row in official.tolist()]:
                return False
        else:
            ours = out.token_positions[layer][:, 1 : 1 + official.shape[1]]
            if not torch.equal(ours.sort(dim=1).values, official.sort(dim=1).values):
                return False
    return True


def groups(owner: list[int]) -> list[int]:
    labels: dict[int, int] = {}
    return [labels.setdefault(value, len(labels)) for value in owner]


def measure(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as file:
        metadata, tensors = file.metadata(), {key: file.get_tensor(key) for key in file.keys()}
    config = TokenPruneViTConfig(**json.loads(metadata["config"]))
    weights = {key.removeprefix("weights."): value for key, value in tensors.items() if key.startswith("weights.")}
    row = {"fixture": path.stem, "method": metadata["method"], "repository": metadata["repository"],
           "commit": metadata["commit"], "plan": config.attention_reuse or config.token_reduction,
           "selection": metadata["selection"]}  # fmt: skip
    equal = True
    for dtype, name in ((torch.float32, "fp32"), (torch.float64, "fp64")):
        model = TokenPruneViTForImageClassification(config).eval()
        model.load_state_dict(weights, strict=True)
        model = model.to(dtype)
        with torch.no_grad():
            out = model(tensors["pixel_values"].to(dtype), interpolate_pos_encoding=True)
        official = tensors[f"logits_{name}"].to(dtype)
        row[f"max_logit_difference_{name}"] = (out.logits - official).abs().max().item()
        equal = equal and same_selections(out, metadata, tensors)
    row["same_selections"] = equal if metadata["selection"] != "none" else None
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="docs/results/fidelity/fidelity.json")
    args = parser.parse_args(argv)
    output = Path(args.output)
    if not output.parent.is_dir():
        parser.error(f"--output {output}: the folder {output.parent} does not exist.")
    rows = [measure(path) for path in sorted(FIXTURES.glob("*.safetensors"))]
    output.write_text(json.dumps({**provenance(), "rows": rows}, indent=2) + "\n")
    for row in rows:
        print(f"{row['fixture']:16} fp32 {row['max_logit_difference_fp32']:.1e} fp64 "
              f"{row['max_logit_difference_fp64']:.1e} same selections: {row['same_selections']}")  # fmt: skip
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
