"""Plan schedules: each follows its curve as a function of the step only, moves any method with the option, and is
refused for a method without it; the official code's schedule per method."""

import math

import pytest
import torch
from conftest import REDUCING_PLANS
from trainer_support import TinyImages, tiny_model, training_args
from transformers import TrainerCallback

from hf_tokenprune import REDUCTION_METHODS, register_reduction
from hf_tokenprune.models.reduction_evit import EViTReduction
from hf_tokenprune.training import (
    ConstantSchedule,
    CosineSchedule,
    LinearSchedule,
    TokenPruneTrainer,
    build_schedule,
)


def test_cosine_schedule_follows_evit_warm_up():
    schedule = CosineSchedule(target=0.5, start=1.0, warmup_fraction=0.5, delay_fraction=0.1)
    assert schedule.value_at(0.0) == schedule.value_at(0.1) == 1.0  # before the delay ends: keep everything
    assert schedule.value_at(0.35) == pytest.approx(0.75)  # half-way through the cosine
    assert schedule.value_at(0.2) == pytest.approx(0.5 + 0.25 * (1 + math.cos(math.pi * 0.2)))
    assert schedule.value_at(0.6) == schedule.value_at(1.0) == pytest.approx(0.5)
    values = [schedule.value_at(p / 100) for p in range(101)]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:])), "the keep rate never goes back up"


def test_linear_schedule_floors_ints_per_layer():
    schedule = LinearSchedule(key="tokens_per_layer", target=[8, 6, 3], start=0, warmup_fraction=0.5)
    assert schedule.value_at(0.0) == [0, 0, 0]
    assert schedule.value_at(0.25) == [4, 3, 1]  # 1.5 floors to 1: never more removed than the line allows
    assert schedule.value_at(0.5) == schedule.value_at(0.9) == [8, 6, 3]
    assert LinearSchedule(key="keep_rate", target=0.4, start=1.0).value_at(0.25) == pytest.approx(0.7)


def test_constant_schedule_holds_its_value(tmp_path):
    model = tiny_model(token_reduction=REDUCING_PLANS["evit"])
    schedule = ConstantSchedule(target=0.8)
    schedule.check(model)
    assert [schedule.value_at(p) for p in (0.0, 0.5, 1.0)] == [0.8, 0.8, 0.8]
    assert model.config.token_reduction["keep_rate"] == 0.8


def test_cosine_schedule_moves_the_keep_rate_during_training_and_logs_it(tmp_path):
    model = tiny_model(token_reduction=REDUCING_PLANS["evit"])  # its headline keep rate is the target
    record = RecordPlan()
    schedule = CosineSchedule(warmup_fraction=0.5)
    trainer = TokenPruneTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=8),
        train_dataset=TinyImages(32),
        callbacks=[schedule, record],
    )
    trainer.train()
    seen = [plan["keep_rate"] for _, plan in record.plans]
    expected = [schedule.value_at(step / 8) for step, _ in record.plans]
    assert seen == pytest.approx(expected)
    target = REDUCING_PLANS["evit"]["keep_rate"]
    assert seen[0] == 1.0 and seen[-1] == pytest.approx(target) and seen[2] < 1.0
    assert model.config.token_reduction["keep_rate"] == pytest.approx(target)  # the target when training ends
    logged = [entry["plan_keep_rate"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 8 and logged[0] == 1.0 and logged[-1] == pytest.approx(target)


@pytest.fixture
def fake_count_method():
    """A throwaway method with a ``tokens_per_layer`` runtime option (EViT underneath), removed afterwards."""

    @register_reduction("fake_counts")
    class FakeCounts(EViTReduction):
        options = {**EViTReduction.options, "tokens_per_layer": [4, 4]}
        runtime_options = ("keep_rate", "tokens_per_layer")

        @classmethod
        def check_plan(cls, plan, config):
            counts = plan.get("tokens_per_layer", [4, 4])
            if not all(isinstance(c, int) and c >= 0 for c in counts):
                raise ValueError(f"token_reduction['tokens_per_layer'] = {counts!r}: non-negative ints.")
            checked = EViTReduction.check_plan({k: v for k, v in plan.items() if k != "tokens_per_layer"}, config)
            return {**checked, "method": "fake_counts", "tokens_per_layer": list(counts)}

    yield "fake_counts"
    REDUCTION_METHODS.pop("fake_counts")


def test_linear_schedule_moves_any_method_with_the_option(tmp_path, fake_count_method):
    model = tiny_model(token_reduction={"method": fake_count_method, "layers": [1], "tokens_per_layer": [6, 2]})
    record = RecordPlan()
    trainer = TokenPruneTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=4),
        train_dataset=TinyImages(16),
        callbacks=[LinearSchedule(), record],
    )
    trainer.train()
    assert [plan["tokens_per_layer"] for _, plan in record.plans] == [[0, 0], [3, 1], [6, 2], [6, 2]]
    assert any("plan_tokens_per_layer_mean" in entry for entry in trainer.state.log_history)


@pytest.mark.skipif("cropr" not in REDUCTION_METHODS, reason="method cropr is not registered yet")
def test_linear_schedule_drives_cropr_tokens_per_layer():
    model = tiny_model(token_reduction=REDUCING_PLANS["cropr"])
    schedule = build_schedule("linear", model.config.token_reduction)
    assert isinstance(schedule, LinearSchedule) and schedule.key == "tokens_per_layer"
    schedule.check(model)
    target = schedule.target
    for progress in (0.0, 0.2, 0.5):
        schedule.apply(model, progress)
        with torch.no_grad():
            out = model(torch.randn(2, 3, 32, 32))
        assert list(out.token_counts) == model.config.token_counts()
    assert model.config.token_reduction["tokens_per_layer"] == target
    assert out.token_counts[1][0] < 65  # tokens are really pruned at the target


def test_schedules_refuse_methods_without_the_option():
    with pytest.raises(ValueError, match="cannot be scheduled for method 'tome'.*runtime options are \\['r'\\]"):
        CosineSchedule().check(tiny_model(token_reduction=REDUCING_PLANS["tome"]))
    with pytest.raises(ValueError, match="tokens_per_layer.*'evit'"):
        LinearSchedule().check(tiny_model(token_reduction=REDUCING_PLANS["evit"]))
    with pytest.raises(ValueError, match="needs a model with a token_reduction plan"):
        ConstantSchedule().check(tiny_model())
    with pytest.raises(ValueError, match="warmup_fraction"):
        CosineSchedule(warmup_fraction=1.5)
    with pytest.raises(ValueError, match="keep_rate_schedule = 'steps'"):
        build_schedule("steps", REDUCING_PLANS["evit"])


def test_auto_schedule_is_each_papers():
    assert isinstance(build_schedule("auto", REDUCING_PLANS["evit"]), CosineSchedule)
    assert (
        build_schedule("auto", REDUCING_PLANS["evo_vit"]) is None
    )  # Evo-ViT trains with its keep rate from the start
    assert build_schedule("auto", REDUCING_PLANS["cropr"]) is None  # the official Cropr prunes fully from step one
    tome = build_schedule("linear", REDUCING_PLANS["tome"])
    assert tome.key == "r"


class RecordPlan(TrainerCallback):
    """Records the plan in force at every optimizer step (it runs after the schedule, which comes first)."""

    def __init__(self):
        self.plans = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.plans.append((state.global_step, dict(model.config.token_reduction)))
