"""Training recipes: plan schedules, Trainer steps per method, distillation, SuperViT, metrics and resume."""

import math

import conftest
import numpy as np
import pytest
import torch
from conftest import REDUCING_PLANS, VARIANT_PLANS, tiny_config
from transformers import EvalPrediction, Trainer, TrainerCallback, TrainingArguments

from hf_tokenprune import REDUCTION_METHODS, TokenPruneViTForImageClassification, register_reduction
from hf_tokenprune.models.reduction_evit import EViTReduction
from hf_tokenprune.training import (
    ConstantSchedule,
    CosineSchedule,
    DistillationTrainer,
    LinearSchedule,
    SuperViTTrainer,
    TokenPruneTrainer,
    build_compute_metrics,
    build_schedule,
    distillation_loss,
    init_sincos_position_embeddings,
    operating_points,
    resize_images,
    sincos_position_embeddings,
)

REUSE_PLANS = getattr(conftest, "REUSE_PLANS", {})


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


class RecordPlan(TrainerCallback):
    """Records the plan in force at every optimizer step (it runs after the schedule, which comes first)."""

    def __init__(self):
        self.plans = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.plans.append((state.global_step, dict(model.config.token_reduction)))


# ----------------------------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------------------------


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
    model = tiny_model(token_reduction=REDUCING_PLANS["evit"])  # target keep rate 0.6
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
    assert seen[0] == 1.0 and seen[-1] == pytest.approx(0.6) and seen[2] < 1.0
    assert model.config.token_reduction["keep_rate"] == pytest.approx(0.6)  # the target when training ends
    logged = [entry["plan_keep_rate"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 8 and logged[0] == 1.0 and logged[-1] == pytest.approx(0.6)


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


# ----------------------------------------------------------------------------------------------------------------
# One Trainer step per method
# ----------------------------------------------------------------------------------------------------------------

STEP_PLANS = {
    **{name: {"token_reduction": plan} for name, plan in REDUCING_PLANS.items()},
    "evo_vit-two-heads": {"token_reduction": VARIANT_PLANS["evo_vit-two-heads"]},
    **REUSE_PLANS,
}


def _reused_layers(model) -> list[int]:
    """Layers whose attention an attention-reuse plan skips: their attention weights get no gradient by design."""
    return list((model.config.attention_reuse or {}).get("layers", []))


@pytest.mark.parametrize("name", sorted(STEP_PLANS))
def test_one_distillation_trainer_step_trains_every_parameter(tmp_path, name):
    model = tiny_model(**STEP_PLANS[name])
    before = {key: value.detach().clone() for key, value in model.named_parameters()}
    trainer = DistillationTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=1, per_device_train_batch_size=8),
        train_dataset=TinyImages(8),
        eval_dataset=TinyImages(8, seed=1),
        compute_metrics=build_compute_metrics(model),
        distill_alpha=0.5,
        distill_temperature=2.0,
    )
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    skipped = [f"vit.layers.{i}.{part}." for i in _reused_layers(model) for part in ("attention", "layernorm_before")]
    frozen = [k for k, v in model.named_parameters() if torch.equal(v, before[k]) and not k.startswith(tuple(skipped))]
    assert not frozen, f"parameters without a gradient after one step: {frozen}"
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    counts = [int(c) for c in metrics["eval_tokens_per_layer"].split()]
    assert counts == [m for _, m in model.config.token_counts()]
    assert metrics["eval_mean_tokens"] == pytest.approx(np.mean(counts))


def test_two_heads_loss_trains_both_heads_and_predicts_with_the_mean_head(tmp_path):
    model = tiny_model(token_reduction=VARIANT_PLANS["evo_vit-two-heads"])
    pixels, labels = TinyImages(4).pixels, TinyImages(4).labels
    out = model(pixels, labels=labels)
    last = model.vit(pixels, output_hidden_states=True).hidden_states[-1]  # before the final LayerNorm
    mean_logits = model.classifier(model.vit.layernorm(last[:, 1:].mean(dim=1)))
    cls_logits = model.cls_classifier(model.cls_norm(last[:, 0]))
    torch.testing.assert_close(out.logits, mean_logits)
    expected = 0.5 * torch.nn.functional.cross_entropy(mean_logits, labels)
    expected = expected + 0.5 * torch.nn.functional.cross_entropy(cls_logits, labels)
    torch.testing.assert_close(out.loss, expected)


# ----------------------------------------------------------------------------------------------------------------
# Distillation and the loss scale
# ----------------------------------------------------------------------------------------------------------------


def test_distillation_loss_is_scaled_kl():
    student, teacher = torch.randn(6, 5), torch.randn(6, 5)
    assert distillation_loss(teacher, teacher, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    manual = (teacher.div(2).softmax(-1) * (teacher.div(2).log_softmax(-1) - student.div(2).log_softmax(-1))).sum(-1)
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(4 * manual.mean().item(), rel=1e-5)
    # Summed over the examples and divided by the Trainer's count: the batch mean when the count is the batch.
    assert distillation_loss(student, teacher, 2.0, torch.tensor(6)).item() == pytest.approx(4 * manual.mean().item())
    assert distillation_loss(student, teacher, 2.0, 12).item() == pytest.approx(2 * manual.mean().item())


def test_distillation_uses_the_unpruned_same_weights_as_teacher(tmp_path):
    model = tiny_model(token_reduction=REDUCING_PLANS["evit"])
    calls = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((kwargs.get("disable_plans", False), torch.is_grad_enabled())),
        with_kwargs=True,
    )
    trainer = DistillationTrainer(
        model=model, args=training_args(tmp_path), distill_alpha=0.3, distill_temperature=2.0
    )
    batch = {"pixel_values": TinyImages(4).pixels, "labels": TinyImages(4).labels}
    model.train()
    loss = trainer.compute_loss(model, dict(batch))
    assert calls == [(True, False), (False, True)]  # teacher: plans off, no gradient; then the student
    with torch.no_grad():
        student = model(**batch)
        teacher = model(batch["pixel_values"], disable_plans=True).logits
    expected = 0.7 * student.loss + 0.3 * distillation_loss(student.logits, teacher, 2.0)
    torch.testing.assert_close(loss, expected)


def test_distillation_from_a_given_teacher_checks_its_labels(tmp_path):
    with pytest.raises(ValueError, match="teacher_model has 3 labels but the model has 5"):
        DistillationTrainer(model=tiny_model(), args=training_args(tmp_path), teacher_model=tiny_model(num_labels=3))
    teacher = tiny_model(seed=3)
    trainer = DistillationTrainer(model=tiny_model(), args=training_args(tmp_path), teacher_model=teacher)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    with pytest.raises(ValueError, match="distill_alpha"):
        DistillationTrainer(model=tiny_model(), args=training_args(tmp_path), distill_alpha=2.0)
    assert trainer.teacher_model is teacher


def _weights_after_one_step(tmp_path, cls, batch_size, accumulation, **kwargs):
    model = tiny_model(token_reduction=REDUCING_PLANS["evit"])
    args = training_args(  # plain SGD: the update is the gradient itself, so the check is linear
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=1.0,
        max_grad_norm=0.0,
    )
    cls(model=model, args=args, train_dataset=TinyImages(8), **kwargs).train()
    return model.state_dict()


@pytest.mark.parametrize("cls", [DistillationTrainer, SuperViTTrainer])
def test_gradient_accumulation_matches_the_full_batch(tmp_path, cls):
    kwargs = {"distill_alpha": 0.5} if cls is DistillationTrainer else {"keep_rates": [0.5], "resolutions": [16]}
    full = _weights_after_one_step(tmp_path, cls, 8, 1, **kwargs)
    accumulated = _weights_after_one_step(tmp_path, cls, 4, 2, **kwargs)
    for key in full:
        torch.testing.assert_close(accumulated[key], full[key], atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# SuperViT
# ----------------------------------------------------------------------------------------------------------------


def _supervit_trainer(tmp_path, seed=0, max_steps=1):
    plan = {"method": "supervit", "layers": [1, 2], "keep_rate": 0.5, "keep_rates": [0.5, 0.7, 1.0]}
    model = tiny_model(token_reduction={**plan, "resolutions": [16, 24, 32]})
    args = training_args(tmp_path, max_steps=max_steps, seed=seed, per_device_train_batch_size=8)
    return SuperViTTrainer(model=model, args=args, train_dataset=TinyImages(16)), model


def test_supervit_step_runs_four_subnetworks_then_serves_every_operating_point(tmp_path):
    trainer, model = _supervit_trainer(tmp_path)
    calls = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(
            (kwargs["pixel_values"].shape[-1], kwargs.get("keep_rate"), bool(kwargs.get("interpolate_pos_encoding")))
        ),
        with_kwargs=True,
    )
    trainer.train()
    hook.remove()
    assert trainer.state.global_step == 1
    assert len(calls) == 4, calls
    (full, k_full, _), (full2, k_low, _), (small, k_one, interp), (small2, k_small, interp2) = calls
    assert full == full2 == 32 and k_full == 1.0 and k_low in (0.5, 0.7)
    assert small == small2 < 32 and small in (16, 24) and k_one == 1.0 and k_small in (0.5, 0.7)
    assert interp and interp2
    assert [s["name"] for s in trainer.last_subnetworks] == ["full", "pruned", "small", "pruned_small"]
    assert all(math.isfinite(s["loss"]) for s in trainer.last_subnetworks)

    model.eval()
    pixels = TinyImages(2).pixels
    points = operating_points(model.config)
    assert len(points) == 9  # 3 resolutions x 3 keep rates
    for side, keep_rate in points:
        with torch.no_grad():
            out = model(resize_images(pixels, side), keep_rate=keep_rate, interpolate_pos_encoding=True)
        assert out.logits.shape == (2, 5) and torch.isfinite(out.logits).all()
        assert list(out.token_counts) == model.config.token_counts(keep_rate=keep_rate, image_size=side)


def test_supervit_draws_are_seeded(tmp_path):
    def draws(seed):
        trainer, _ = _supervit_trainer(tmp_path, seed=seed)
        out = []
        for step in range(6):
            trainer.state.global_step = step
            out.append(trainer.draw_subnetworks())
        return out

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)


def test_supervit_trainer_needs_smaller_resolutions_and_lower_keep_rates(tmp_path):
    model = tiny_model(token_reduction={"method": "supervit", "layers": [1], "resolutions": [32]})
    with pytest.raises(ValueError, match="no side smaller than"):
        SuperViTTrainer(model=model, args=training_args(tmp_path))
    with pytest.raises(ValueError, match="no keep rate in \\(0, 1\\)"):
        SuperViTTrainer(model=model, args=training_args(tmp_path), keep_rates=[1.0], resolutions=[16])
    with pytest.raises(ValueError, match="needs a plan with a keep rate"):
        SuperViTTrainer(model=tiny_model(token_reduction=REDUCING_PLANS["tome"]), args=training_args(tmp_path))


# ----------------------------------------------------------------------------------------------------------------
# Metrics and resume
# ----------------------------------------------------------------------------------------------------------------


def test_compute_metrics_accuracy_and_token_counts_match_the_outputs():
    model = tiny_model(token_reduction=REDUCING_PLANS["tome"]).eval()
    with torch.no_grad():
        out = model(TinyImages(4).pixels)
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    metrics = build_compute_metrics(model)(EvalPrediction(predictions=logits, label_ids=np.array([1, 0, 0, 0])))
    assert metrics["accuracy"] == 0.75
    assert [int(c) for c in metrics["tokens_per_layer"].split()] == [m for _, m in out.token_counts]
    assert metrics["gflops"] < tiny_model().config.num_hidden_layers  # a positive, finite number
    assert build_compute_metrics()(EvalPrediction(predictions=(logits,), label_ids=np.array([1, 0, 1, 0]))) == {
        "accuracy": 1.0
    }


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _run(tmp_path, name, resume=None, stop_at=None, trainer_cls=DistillationTrainer):
    model = tiny_model(token_reduction=REDUCING_PLANS["evit"], hidden_dropout_prob=0.1)
    args = training_args(
        tmp_path / name, max_steps=6, num_train_epochs=2, save_strategy="steps", save_steps=3, logging_steps=1
    )
    callbacks = [CosineSchedule(warmup_fraction=0.5)] + ([StopAt(stop_at)] if stop_at else [])
    trainer = trainer_cls(model=model, args=args, train_dataset=TinyImages(12), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


@pytest.mark.parametrize("trainer_cls", [Trainer, DistillationTrainer], ids=["stock-trainer", "distillation"])
def test_resume_from_checkpoint_reaches_the_same_weights(tmp_path, trainer_cls):
    # The checkpoint file holds the 4.x key layout and the Trainer loads it raw with load_state_dict(strict=False):
    # the model's load_state_dict must rename, or every layer would silently restart from its initial weights.
    straight, straight_trainer = _run(tmp_path, "straight", trainer_cls=trainer_cls)
    _, stopped = _run(tmp_path, "resumed", stop_at=3, trainer_cls=trainer_cls)
    assert stopped.state.global_step == 3
    checkpoint = tmp_path / "resumed" / "run" / "checkpoint-3"
    assert checkpoint.is_dir()
    resumed, trainer = _run(tmp_path, "resumed", resume=str(checkpoint), trainer_cls=trainer_cls)
    assert trainer.state.global_step == 6
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=1e-6, rtol=1e-5)
    assert resumed.config.token_reduction == straight.config.token_reduction
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e and e["step"] > 3]
    expected = [e["loss"] for e in straight_trainer.state.log_history if "loss" in e and e["step"] > 3]
    assert losses == pytest.approx(expected, rel=1e-5)


def test_sincos_position_init_encodes_relative_offsets():
    table = sincos_position_embeddings((4, 5), 16)  # (20, 16)
    assert table.shape == (20, 16)
    # The dot product of two positions depends only on their offset: the property a random table lacks.
    same_offset = [table[r * 5 + c] @ table[(r + 1) * 5 + c + 2] for r, c in ((0, 0), (1, 2), (2, 1))]
    torch.testing.assert_close(torch.stack(same_offset), same_offset[0].expand(3))
    model = tiny_model()
    init_sincos_position_embeddings(model)
    torch.testing.assert_close(model.vit.embeddings.position_embeddings[0, 1:], sincos_position_embeddings((8, 8), 48))
    assert model.vit.embeddings.position_embeddings.requires_grad  # still a learned table
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_position_embeddings((2, 2), 6)
