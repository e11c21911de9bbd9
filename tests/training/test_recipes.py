"""The official recipes: EViT's and DynamicViT's fine-tune as Trainer arguments (the learning-rate schedule the
Trainer builds from them), and DynamicViT's whole recipe as `DynamicViTTrainer` (parameter groups, the frozen
backbone, the loss terms, the teacher), down to one training step of the official code (a reference fixture)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors import safe_open
from trainer_support import DYNAMICVIT_PLAN, TinyImages, model_with_plan, training_args
from transformers import Trainer, TrainingArguments

from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForImageClassification
from hf_tokenprune.training import distillation_loss
from hf_tokenprune.training.distillation import (
    DistillationTrainer,
    DynamicViTTrainer,
    final_tokens,
    recipe_parameter_groups,
    token_distillation_loss,
)
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
        tiny_config(token_reduction={**DYNAMICVIT_PLAN, "train_mode": "gather"})


# Written by scripts/make_reference_fixtures.py from raoyongming/DynamicViT: one training step of its DeiT recipe.
TRAINING_STEP = Path(__file__).parents[1] / "fixtures" / "training" / "dynamicvit_training_step.safetensors"


def official_training_step(tmp_path, policy_gradient: str):
    """Our `DynamicViTTrainer` step on the fixture's weights and batch, with its Gumbel seed: (fixture tensors,
    our loss, our outputs, our predictors' gradients under the fixture's names)."""
    with safe_open(str(TRAINING_STEP), framework="pt") as file:
        metadata, tensors = file.metadata(), {key: file.get_tensor(key) for key in file.keys()}
    config = json.loads(metadata["config"])
    config["token_reduction"]["policy_gradient"] = policy_gradient
    model = TokenPruneViTForImageClassification(TokenPruneViTConfig(**config))
    weights = {key.removeprefix("weights."): value for key, value in tensors.items() if key.startswith("weights.")}
    model.load_state_dict(weights, strict=True)
    trainer = DynamicViTTrainer(model=model.train(), args=training_args(tmp_path))
    torch.manual_seed(int(metadata["seed"]))  # the official step's Gumbel draws
    batch = {"pixel_values": tensors["pixel_values"], "labels": tensors["labels"]}
    loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    loss.backward()
    gradients = {f"grad.{name}": p.grad for name, p in model.named_parameters() if ".token_reduction." in name}
    return tensors, loss, outputs, gradients


def test_dynamicvit_training_step_is_the_official_one(tmp_path):
    """The same decisions, the same loss (CE + 2 ratio / 3 + 0.5 KL + 0.5 token MSE) and, with the official
    ``policy_gradient``, the same gradients in every predictor."""
    official, loss, outputs, gradients = official_training_step(tmp_path, "official")
    assert torch.equal(outputs.token_policy[:, 1:], official["decisions"][:, -1])
    torch.testing.assert_close(loss.detach(), official["loss.total"], rtol=1e-5, atol=1e-6)
    assert gradients.keys() == {key for key in official if key.startswith("grad.")}
    for name, gradient in gradients.items():
        # float32 through ratios of exponentials: gradients in the hundreds agree to about 3e-4 of their size
        torch.testing.assert_close(gradient, official[name], rtol=1e-3, atol=1e-3 * official[name].abs().max())


def test_bounded_policy_gradient_changes_only_what_the_predictors_learn(tmp_path):
    """The default ``policy_gradient="bounded"``: the official forward, decisions and loss; in the backward a hidden
    key counts at most as strongly as the strongest key its query sees, so the first predictor, whose hidden keys
    dominate sharp attention rows, gets a far smaller gradient than the official hundreds."""
    official, loss, outputs, gradients = official_training_step(tmp_path, "bounded")
    assert torch.equal(outputs.token_policy[:, 1:], official["decisions"][:, -1])
    torch.testing.assert_close(loss.detach(), official["loss.total"], rtol=1e-5, atol=1e-6)
    for layer in (3, 6):
        ours = torch.cat([g.flatten() for name, g in gradients.items() if f"layers.{layer}." in name]).norm()
        theirs = torch.cat([official[name].flatten() for name in gradients if f"layers.{layer}." in name]).norm()
        assert ours < 0.2 * theirs, (layer, ours, theirs)


# Written by scripts/make_reference_fixtures.py from the official code: one training step of Token Cropr (main and
# auxiliary heads), Evo-ViT (both heads) and SuperViT (its four sub-networks), with every parameter's gradient.
OFFICIAL_STEPS = {
    path.stem.removesuffix("_training_step"): path
    for path in sorted(TRAINING_STEP.parent.glob("*_training_step.safetensors"))
    if not path.stem.startswith("dynamicvit")
}


@pytest.mark.parametrize("method", sorted(OFFICIAL_STEPS))
def test_training_step_is_the_official_one(tmp_path, method):
    """The same loss and the same gradient in every parameter as one step of the official training code."""
    from hf_tokenprune.training import SuperViTTrainer

    with safe_open(str(OFFICIAL_STEPS[method]), framework="pt") as file:
        metadata, official = file.metadata(), {key: file.get_tensor(key) for key in file.keys()}
    model = TokenPruneViTForImageClassification(TokenPruneViTConfig(**json.loads(metadata["config"])))
    weights = {key.removeprefix("weights."): value for key, value in official.items() if key.startswith("weights.")}
    model.load_state_dict(weights, strict=True)
    model.train()
    batch = {"pixel_values": official["pixel_values"], "labels": official["labels"]}
    if method == "supervit":  # the fixture's sub-networks instead of random ones
        draws = json.loads(metadata["subnetworks"])
        trainer = SuperViTTrainer(model=model, args=training_args(tmp_path), resolutions=[draws["side"]])
        trainer.draw_subnetworks = lambda: (draws["keep_full"], draws["side"], draws["keep_small"])
        loss = trainer.compute_loss(model, batch)
        parts = {entry["name"]: entry["loss"] for entry in trainer.last_subnetworks}
        for name, value in parts.items():
            torch.testing.assert_close(torch.tensor(value), official[f"loss.{name}"], rtol=1e-5, atol=1e-6)
    else:
        loss = model(**batch).loss
    loss.backward()
    torch.testing.assert_close(loss.detach(), official["loss.total"], rtol=1e-5, atol=1e-6)
    expected = {key.removeprefix("grad."): value for key, value in official.items() if key.startswith("grad.")}
    for name, parameter in model.named_parameters():
        gradient = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
        reference = expected[name]
        torch.testing.assert_close(gradient, reference, rtol=1e-3, atol=1e-4 * max(1.0, reference.abs().max()))
