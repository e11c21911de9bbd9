"""The official fine-tune recipes as Trainer arguments: the learning-rate schedule the Trainer builds from them."""

import pytest
import torch
from conftest import tiny_config
from transformers import Trainer, TrainingArguments

from hf_tokenprune import TokenPruneViTForImageClassification
from hf_tokenprune.training.recipes import OFFICIAL_FINETUNES, trainer_arguments


def schedule(tmp_path, method: str, base_learning_rate: float, steps: int = 30) -> list[float]:
    """The learning rate of each of ``steps`` optimizer steps of a Trainer built with the recipe's arguments."""
    model = TokenPruneViTForImageClassification(tiny_config())
    arguments = TrainingArguments(
        output_dir=str(tmp_path), report_to=[], max_steps=steps, **trainer_arguments(method, base_learning_rate)
    )
    trainer = Trainer(model=model, args=arguments)
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    rates = []
    for _ in range(steps):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    return rates


def test_evit_fine_tunes_at_a_twenty_fifth_of_the_base_rate_down_to_its_floor(tmp_path):
    rates = schedule(tmp_path, "evit", 1e-3)
    assert rates[0] == pytest.approx(4e-5)  # no warm-up: the peak at once
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # cosine, falling
    assert rates[-1] == pytest.approx(4e-5 * 0.025, rel=0.15)  # ends near the floor, never under it
    assert min(rates) >= 4e-5 * 0.025 * (1 - 1e-9)


def test_dynamicvit_warms_up_over_five_of_thirty_parts(tmp_path):
    rates = schedule(tmp_path, "dynamicvit", 1e-3)
    peak = rates.index(max(rates))
    assert max(rates) == pytest.approx(1e-3) and peak == 5  # 5 of 30 steps of linear warm-up
    assert all(a < b for a, b in zip(rates[:peak], rates[1 : peak + 1]))
    assert OFFICIAL_FINETUNES["dynamicvit"].backbone_lr_scale == 0.01  # DynamicViTTrainer's own default, the same
    assert torch.isfinite(torch.tensor(rates)).all()


def test_unknown_method_and_bad_rate_are_refused():
    with pytest.raises(ValueError, match="has no official fine-tune recipe here; methods with one: \\['dynamicvit'"):
        trainer_arguments("tome", 1e-3)
    with pytest.raises(ValueError, match="base_learning_rate = 0 must be positive"):
        trainer_arguments("evit", 0)
