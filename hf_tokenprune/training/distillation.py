"""Distillation recipes for TokenPruneViT: `DistillationTrainer` and DynamicViT's official recipe.

- `DistillationTrainer`: the model's loss mixed with a logits KL (and optionally a token MSE) against a teacher.
- `DynamicViTTrainer`: raoyongming/DynamicViT's recipe (main.py, engine.py, losses.py, optim_factory.py): a frozen
  snapshot of the pretrained model as teacher; CE + 2 * ratio + 0.5 * KL(logits) + 0.5 * MSE(kept tokens); the
  method's modules at the learning rate, the backbone frozen for the first 5/30 of the run and then at 0.01 of it.
- Its pieces (`recipe_parameter_groups`, `freeze_backbone`, `final_tokens`, `token_distillation_loss`) also serve a
  hand-written training loop (``examples/benchmark_accuracy.py``).

Losses follow the normalisation described in `hf_tokenprune.training.trainers` (``num_items_in_batch``).
"""

import copy
from typing import Any

import torch
from transformers import TrainerCallback

from ..models.token_reduction import check_choice, gather_tokens
from .recipes import OFFICIAL_FINETUNES
from .schedules import PlanSchedule, check_fractions, config_of
from .trainers import TokenPruneTrainer, distillation_loss


def final_tokens(model: Any, outputs: Any) -> torch.Tensor:
    """The tokens of the last layer after the final LayerNorm, (B, N_cur, C), from outputs computed with
    ``output_hidden_states=True`` (a ViT-like model with ``vit.layernorm``: ours or stock)."""
    while not hasattr(model, "vit") and hasattr(model, "module"):
        model = model.module
    return model.vit.layernorm(outputs.hidden_states[-1])


def token_distillation_loss(student_tokens, student_outputs, teacher_tokens) -> torch.Tensor:
    """DynamicViT's token distillation: the mean squared error between the student's final tokens and the teacher's
    at the same patches, over the patch tokens the student kept (its final keep decision in masked training, its
    remaining tokens otherwise). ``*_tokens`` are (B, N, C) after the final LayerNorm; CLS is left out."""
    policy = getattr(student_outputs, "token_policy", None)
    if policy is not None:  # masked training: every token is there, the decision says which count
        keep = (policy[:, 1:] > 0.5).unsqueeze(-1).to(student_tokens.dtype)  # (B, N, 1)
        student, teacher = student_tokens[:, 1:], teacher_tokens[:, 1:]
    else:  # a shortened sequence: compare each remaining token with the teacher's token at its position
        positions = student_outputs.token_positions[-1][:, 1:]  # (B, K), -1 for made-up tokens
        keep = (positions > 0).unsqueeze(-1).to(student_tokens.dtype)
        teacher = gather_tokens(teacher_tokens, positions.clamp_min(0))
        student = student_tokens[:, 1:]
    squared = (student.float() - teacher.detach().float()) ** 2 * keep
    return squared.sum() / (keep.sum() * student.shape[-1]).clamp_min(1.0)


class DistillationTrainer(TokenPruneTrainer):
    """`TokenPruneTrainer` that distils a teacher's logits (KL) and, optionally, its final tokens (MSE).

    The training loss is ``(1 - alpha) * model loss + alpha * T^2 * KL(teacher || student)`` with
    ``loss_mixing="convex"`` (Hinton-style; the default, which also scales down the methods' auxiliary losses inside
    the model loss), or ``model loss + alpha * T^2 * KL + token_weight * MSE(kept tokens)`` with ``"additive"``
    (DynamicViT's form; `DynamicViTTrainer` is its whole official recipe).

    A Trainer subclass rather than ``compute_loss_func``: the teacher needs the inputs (``compute_loss_func`` sees
    only the outputs), and with ``compute_loss_func`` the Trainer takes the labels away from the model, which would
    drop the auxiliary losses methods add inside ``forward`` (Cropr's auxiliary head, DynamicViT's ratio loss,
    Evo-ViT's two heads). Evaluation loss is the model's own.

    Args:
        teacher_model: ``None`` (default): the trained model itself with ``disable_plans=True`` (same, moving
            weights, no reduction, no gradient, eval mode); ``"snapshot"``: a frozen copy of the model taken when the
            trainer is built, run with ``disable_plans=True`` (DynamicViT's teacher: the pretrained model,
            unpruned); or a model taking ``pixel_values`` and returning ``logits`` with the same labels, run as
            it is.
        distill_alpha: the weight of the KL term, in [0, 1].
        distill_temperature: the softmax temperature ``T`` (> 0); the KL is scaled by ``T^2``.
        loss_mixing: ``"convex"`` or ``"additive"`` (see above).
        token_weight: the weight of the token MSE (``"additive"`` only; 0 leaves it out).
    """

    def __init__(
        self,
        *args,
        teacher_model=None,
        distill_alpha=0.5,
        distill_temperature=1.0,
        loss_mixing="convex",
        token_weight=0.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        _check_distillation(distill_alpha, distill_temperature, loss_mixing, token_weight)
        self.distill_alpha, self.distill_temperature = distill_alpha, distill_temperature
        self.loss_mixing, self.token_weight = loss_mixing, float(token_weight)
        self.teacher_model, self.teacher_plans_off = None, False
        if isinstance(teacher_model, str) and teacher_model == "snapshot":  # the model as it is now, unpruned
            teacher_model = copy.deepcopy(self.accelerator.unwrap_model(self.model))
            self.teacher_plans_off = True
        if teacher_model is not None:
            labels, teacher_labels = config_of(self.model).num_labels, config_of(teacher_model).num_labels
            if labels != teacher_labels:
                raise ValueError(f"teacher_model has {teacher_labels} labels but the model has {labels}.")
            self.teacher_model = teacher_model.to(self.args.device).eval().requires_grad_(False)

    @torch.no_grad()
    def teacher_outputs(self, model, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's logits and, when the token term is on, its final tokens (B, T, C)."""
        extra = {k: v for k, v in inputs.items() if k == "interpolate_pos_encoding"}
        extra["output_hidden_states"] = self.token_weight > 0
        teacher = self.teacher_model
        if teacher is None:
            teacher = self.accelerator.unwrap_model(model)
        if teacher is not self.teacher_model or self.teacher_plans_off:
            extra["disable_plans"] = True
        was_training = teacher.training
        teacher.eval()
        try:
            outputs = teacher(pixel_values=inputs["pixel_values"], **extra)
        finally:
            teacher.train(was_training)
        tokens = final_tokens(teacher, outputs) if self.token_weight > 0 else None
        return outputs.logits, tokens

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        distil = model.training and (self.distill_alpha > 0 or self.token_weight > 0)
        teacher_logits, teacher_tokens = self.teacher_outputs(model, inputs) if distil else (None, None)
        if teacher_tokens is not None:
            inputs = {**inputs, "output_hidden_states": True}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        scale, items = self._loss_scale(num_items_in_batch), self._items(num_items_in_batch)
        if teacher_logits is not None:
            kl = distillation_loss(outputs["logits"], teacher_logits, self.distill_temperature, items) * scale
            if self.loss_mixing == "convex":
                loss = (1.0 - self.distill_alpha) * loss + self.distill_alpha * kl
            else:
                loss = loss + self.distill_alpha * kl
        if teacher_tokens is not None:
            mse = token_distillation_loss(final_tokens(model, outputs), outputs, teacher_tokens)
            per_item = 1.0 if items is None else inputs["pixel_values"].shape[0] / items
            loss = loss + self.token_weight * mse * per_item * scale
        return (loss, outputs) if return_outputs else loss


def _check_distillation(alpha, temperature, loss_mixing, token_weight) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distill_alpha = {alpha!r} must be in [0, 1] (the weight of the KL term).")
    if not temperature > 0:
        raise ValueError(f"distill_temperature = {temperature!r} must be > 0.")
    check_choice(loss_mixing, "loss_mixing", ("convex", "additive"))
    if isinstance(token_weight, bool) or not isinstance(token_weight, (int, float)) or token_weight < 0:
        raise ValueError(f"token_weight = {token_weight!r} must be a non-negative number.")
    if token_weight and loss_mixing != "additive":
        raise ValueError(f"token_weight = {token_weight!r} needs loss_mixing='additive' (got {loss_mixing!r}).")


# ----------------------------------------------------------------------------------------------------------------
# DynamicViT's official recipe (raoyongming/DynamicViT: main.py, engine.py, losses.py, optim_factory.py)
# ----------------------------------------------------------------------------------------------------------------

# Parameters the official recipe never trains (``get_parameter_groups`` skips them).
FROZEN_IN_RECIPE = ("embeddings.cls_token", "embeddings.position_embeddings")


DYNAMICVIT = OFFICIAL_FINETUNES["dynamicvit"]  # the official numbers, one place for the trainer and the benchmark


def recipe_parameter_groups(
    model: Any,
    learning_rate: float,
    backbone_lr_scale: float = DYNAMICVIT.backbone_lr_scale,
    weight_decay=DYNAMICVIT.weight_decay,
):
    """Optimizer groups of DynamicViT's recipe: the method's own modules (``token_reduction``: predictors, scorers)
    at ``learning_rate``; the backbone (everything else) at ``backbone_lr_scale * learning_rate``, marked
    ``"backbone": True`` for `BackboneFreeze`; no weight decay on biases and norms; CLS token and position
    embeddings left out (frozen), as the official code does."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad or name.endswith(FROZEN_IN_RECIPE):
            continue
        backbone, decay = ".token_reduction." not in name, parameter.dim() > 1
        groups.setdefault((backbone, decay), []).append(parameter)
    return [
        {"params": params, "backbone": backbone, "weight_decay": weight_decay if decay else 0.0,
         "lr": learning_rate * (backbone_lr_scale if backbone else 1.0)}
        for (backbone, decay), params in sorted(groups.items())
    ]  # fmt: skip


class BackboneFreeze(TrainerCallback):
    """Learning rate 0 for the optimizer groups marked ``"backbone"`` during the first ``freeze_fraction`` of the
    optimizer steps (DynamicViT: the first 5 of 30 epochs); afterwards the scheduler's value applies again."""

    def __init__(self, freeze_fraction: float = DYNAMICVIT.backbone_frozen):
        check_fractions(0.0, freeze_fraction)
        self.freeze_fraction = freeze_fraction

    def frozen(self, progress: float) -> bool:
        return progress < self.freeze_fraction

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None and self.frozen(PlanSchedule.progress(state)):
            freeze_backbone(optimizer)


def freeze_backbone(optimizer: torch.optim.Optimizer) -> None:
    """Sets the learning rate of the groups marked ``"backbone"`` to 0 for the coming step."""
    for group in optimizer.param_groups:
        if group.get("backbone"):
            group["lr"] = 0.0


class DynamicViTTrainer(DistillationTrainer):
    """DynamicViT's official training recipe as a `DistillationTrainer`:

    - loss = CE + ratio loss (the model's, weight ``ratio_loss_weight`` = 2 in the plan) + 0.5 * KL(teacher logits)
      + 0.5 * MSE(final tokens the student kept, against the teacher's) (``loss_mixing="additive"``);
    - the teacher is a frozen snapshot of the model when the trainer is built (the pretrained model, no pruning);
    - the method's modules train at ``args.learning_rate``, the backbone at ``backbone_lr_scale`` (0.01) times it,
      and not at all during the first ``freeze_fraction`` (5/30) of the steps; CLS token and position embeddings
      stay frozen;
    - the learning-rate schedule is ``args``'s: the official run warms up over the same 5 of 30 epochs and then
      follows a cosine, i.e. ``TrainingArguments(lr_scheduler_type="cosine", warmup_steps=5 / 30)``.

    Any other `DistillationTrainer` argument may override these defaults.
    """

    def __init__(
        self,
        *args,
        backbone_lr_scale: float = DYNAMICVIT.backbone_lr_scale,
        freeze_fraction: float = DYNAMICVIT.backbone_frozen,
        **kwargs,
    ):
        for key, value in DYNAMICVIT_DEFAULTS.items():
            kwargs.setdefault(key, value)
        super().__init__(*args, **kwargs)
        self.backbone_lr_scale = backbone_lr_scale
        self.add_callback(BackboneFreeze(freeze_fraction))

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            groups = recipe_parameter_groups(
                model, self.args.learning_rate, self.backbone_lr_scale, self.args.weight_decay
            )
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer


DYNAMICVIT_DEFAULTS = {
    "teacher_model": "snapshot",
    "distill_alpha": 0.5,
    "loss_mixing": "additive",
    "token_weight": 0.5,
}
