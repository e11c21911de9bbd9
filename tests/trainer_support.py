"""Helpers of the training tests: tiny images with labels, Trainer arguments for a few steps on the CPU, and tiny
models with a plan."""

import torch
from conftest import tiny_config
from transformers import TrainingArguments

from hf_tokenprune import TokenPruneViTForImageClassification


class TinyImages(torch.utils.data.Dataset):
    """Random 32x32 images with labels, deterministic."""

    def __init__(self, size: int = 16, seed: int = 0, num_labels: int = 5):
        generator = torch.Generator().manual_seed(seed)
        self.pixels = torch.randn(size, 3, 32, 32, generator=generator)
        self.labels = torch.randint(0, num_labels, (size,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixels[index], "labels": self.labels[index]}


def training_args(tmp_path, **overrides) -> TrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_pin_memory=False,
        seed=0,
    )
    return TrainingArguments(**{**defaults, **overrides})


def tiny_model(seed: int = 0, **config) -> TokenPruneViTForImageClassification:
    torch.manual_seed(seed)
    return TokenPruneViTForImageClassification(tiny_config(**config))


DYNAMICVIT_PLAN = {"method": "dynamicvit", "layers": [1, 2], "keep_rate": 0.7}


def model_with_plan(seed=0, **plan):
    torch.manual_seed(seed)
    return TokenPruneViTForImageClassification(tiny_config(token_reduction={**DYNAMICVIT_PLAN, **plan}))
