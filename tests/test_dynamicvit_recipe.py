"""DynamicViT's official recipe: parameter groups, the frozen-backbone phase, the teacher snapshot, the loss."""

import pytest
import torch
from conftest import tiny_config
from test_training import TinyImages, training_args

from hf_tokenprune import TokenPruneViTForImageClassification
from hf_tokenprune.training import distillation_loss
from hf_tokenprune.training.distillation import (
    DistillationTrainer,
    DynamicViTTrainer,
    final_tokens,
    recipe_parameter_groups,
    token_distillation_loss,
)

PLAN = {"method": "dynamicvit", "layers": [1, 2], "keep_rate": 0.7}


def model_with_plan(seed=0, **plan):
    torch.manual_seed(seed)
    return TokenPruneViTForImageClassification(tiny_config(token_reduction={**PLAN, **plan}))


def test_parameter_groups_split_the_methods_modules_from_the_backbone():
    model = model_with_plan()
    groups = recipe_parameter_groups(model, 1e-3, backbone_lr_scale=0.01, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        group_names = [names[id(p)] for p in group["params"]]
        assert all((".token_reduction." not in n) == group["backbone"] for n in group_names)
        assert group["lr"] == pytest.approx(1e-5 if group["backbone"] else 1e-3)
        assert all((group["weight_decay"] > 0) == (p.dim() > 1) for p in group["params"])
    grouped = {names[id(p)] for group in groups for p in group["params"]}
    assert grouped == set(names.values()) - {"vit.embeddings.cls_token", "vit.embeddings.position_embeddings"}


def test_trainer_freezes_the_backbone_and_distils_from_a_frozen_unpruned_snapshot(tmp_path):
    model = model_with_plan()
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = training_args(tmp_path, max_steps=3, learning_rate=1e-2)
    trainer = DynamicViTTrainer(model=model, args=args, train_dataset=TinyImages(12), freeze_fraction=1.0)
    assert trainer.teacher_model is not model and not trainer.teacher_model.training
    assert not any(p.requires_grad for p in trainer.teacher_model.parameters())
    trainer.train()
    for name, parameter in model.named_parameters():
        moved = not torch.equal(parameter.detach(), start[name])
        assert moved == (".token_reduction." in name), name  # only the predictors train while frozen
    for name, parameter in trainer.teacher_model.named_parameters():
        assert torch.equal(parameter, start[name])  # the teacher stays the pretrained model


def test_backbone_trains_at_a_fraction_of_the_rate_after_the_freeze(tmp_path):
    model = model_with_plan()
    args = training_args(tmp_path, max_steps=2, learning_rate=1e-2, lr_scheduler_type="constant")
    trainer = DynamicViTTrainer(model=model, args=args, train_dataset=TinyImages(8), freeze_fraction=0.0)
    trainer.train()
    rates = {group["backbone"]: group["lr"] for group in trainer.optimizer.param_groups}
    assert rates == {True: pytest.approx(1e-4), False: pytest.approx(1e-2)}


def test_loss_is_ce_ratio_and_half_kl_and_half_token_mse(tmp_path):
    model = model_with_plan().train()
    trainer = DynamicViTTrainer(model=model, args=training_args(tmp_path))
    batch = {"pixel_values": TinyImages(4).pixels, "labels": TinyImages(4).labels}
    torch.manual_seed(5)
    loss = trainer.compute_loss(model, dict(batch))
    teacher = trainer.teacher_model
    with torch.no_grad():
        reference = teacher(batch["pixel_values"], disable_plans=True, output_hidden_states=True)
        torch.manual_seed(5)  # the same Gumbel draws
        student = model(**batch, output_hidden_states=True)
    assert student.token_policy is not None and student.aux_loss > 0  # masked training, ratio loss inside loss
    tokens = token_distillation_loss(final_tokens(model, student), student, final_tokens(teacher, reference))
    expected = student.loss + 0.5 * distillation_loss(student.logits, reference.logits) + 0.5 * tokens
    torch.testing.assert_close(loss, expected)


def test_token_loss_compares_the_kept_tokens_with_the_teachers_at_their_positions():
    teacher_tokens = torch.randn(1, 5, 3)

    class Outputs:
        token_policy = None
        token_positions = (torch.tensor([[0, 3, -1]]),)  # CLS, patch 2, a made-up token

    student = torch.stack([teacher_tokens[0, 0], teacher_tokens[0, 3] + 1.0, torch.zeros(3)])[None]
    assert token_distillation_loss(student, Outputs(), teacher_tokens).item() == pytest.approx(1.0)
    Outputs.token_policy = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0]])  # masked training: patch 1 kept
    full = teacher_tokens.clone()
    full[0, 2] += 2.0
    full[0, 1] += 5.0  # dropped: not compared
    assert token_distillation_loss(full, Outputs(), teacher_tokens).item() == pytest.approx(4.0)


def test_distillation_arguments_are_checked(tmp_path):
    args = training_args(tmp_path)
    with pytest.raises(ValueError, match="loss_mixing = 'sum' is not allowed"):
        DistillationTrainer(model=model_with_plan(), args=args, loss_mixing="sum")
    with pytest.raises(ValueError, match="token_weight = 0.5 needs loss_mixing='additive'"):
        DistillationTrainer(model=model_with_plan(), args=args, token_weight=0.5)


def test_gather_training_was_removed():
    with pytest.raises(ValueError, match=r"train_mode'\] = 'gather' was removed.*allowed: \['mask'\]"):
        tiny_config(token_reduction={**PLAN, "train_mode": "gather"})


def _example():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "run_image_classification.py"
    spec = importlib.util.spec_from_file_location("run_image_classification", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_the_examples_dynamicvit_run_warms_up_over_the_official_frozen_share():
    example = _example()
    plan = ["--token_reduction", '{"method": "dynamicvit"}']
    assert example.parse_args(plan)[-1].warmup_steps == pytest.approx(5 / 30)
    assert example.parse_args([*plan, "--warmup-steps", "0.2"])[-1].warmup_steps == 0.2  # given: kept
    assert example.parse_args([])[-1].warmup_steps == float(example.MAIN_JOB_TRAINING_DEFAULTS["warmup_steps"])


def test_the_example_trains_a_dynamicvit_plan_with_the_official_recipe(tmp_path):
    example = _example()
    data = {"train": TinyImages(4), "validation": TinyImages(4)}
    trainer = example.build_trainer(
        model_with_plan(), training_args(tmp_path), data, None, example.RecipeArguments(), interpolate=False
    )
    assert isinstance(trainer, DynamicViTTrainer) and trainer.teacher_plans_off and trainer.token_weight == 0.5
