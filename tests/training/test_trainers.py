"""The Trainers: a step per method, distillation, Evo-ViT's two heads, gradient accumulation, SuperViT's step,
compute_metrics, resuming, and the sine-cosine start."""

import math

import conftest
import numpy as np
import pytest
import torch
from conftest import REDUCING_PLANS, VARIANT_PLANS
from trainer_support import TinyImages, tiny_model, training_args
from transformers import EvalPrediction, Trainer, TrainerCallback

from hf_tokenprune.training import (
    CosineSchedule,
    DistillationTrainer,
    SuperViTTrainer,
    build_compute_metrics,
    distillation_loss,
    init_sincos_position_embeddings,
    operating_points,
    resize_images,
    sincos_position_embeddings,
)

REUSE_PLANS = getattr(conftest, "REUSE_PLANS", {})


# ----------------------------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------------------------


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


@pytest.mark.slow
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
