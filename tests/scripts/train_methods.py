"""Trains a tiny TokenPruneViT for two optimizer steps per plan with the stock Trainer and writes the logged losses.

Run with ``torchrun --nproc_per_node 2`` (gloo) or plain ``python``. Arguments: a JSON file of plans
(``{name: {"token_reduction": ..., "attention_reuse": ...}}``), the output JSON path, per-device batch size and
gradient-accumulation steps. DDP runs with ``ddp_find_unused_parameters=False``: a parameter that gets no gradient
makes the second step fail.
"""

import json
import os
import sys
import tempfile

import torch
from transformers import Trainer, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import TINY  # noqa: E402

from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForImageClassification  # noqa: E402


class RandomImages(torch.utils.data.Dataset):
    """16 fixed random images with labels: two optimizer steps at a global batch of 8."""

    def __init__(self):
        generator = torch.Generator().manual_seed(7)
        self.pixels = torch.randn(16, 3, 32, 32, generator=generator)
        self.labels = torch.randint(0, 5, (16,), generator=generator)

    def __len__(self):
        return 16

    def __getitem__(self, index):
        return {"pixel_values": self.pixels[index], "labels": self.labels[index]}


def train(plans: dict, per_device: int, accumulation: int, output_dir: str) -> list[float]:
    torch.manual_seed(0)
    model = TokenPruneViTForImageClassification(TokenPruneViTConfig(**TINY, **plans))
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        max_steps=2,
        logging_steps=1,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        ddp_find_unused_parameters=False,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=RandomImages())
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def main(argv: list[str]) -> None:
    plans_file, output, per_device, accumulation = argv[0], argv[1], int(argv[2]), int(argv[3])
    with open(plans_file) as handle:
        plans = json.load(handle)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, plan in plans.items():
            results[name] = train(plan, per_device, accumulation, scratch)
    if int(os.environ.get("RANK", "0")) == 0:
        results["_world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
        with open(output, "w") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1:])
