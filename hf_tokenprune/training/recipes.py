"""The official fine-tune recipes of the methods whose code publishes one, in a form that carries over to another
model and training: every learning rate as a fraction of the rate the base model was trained at.

The official scripts (DeiT's ``main.py`` and its descendants) scale a learning rate by ``batch / 512``; comparing two
rates of the same lineage per 512 images makes the fraction independent of the batch size. On a base trained at
``lr``, a recipe's peak rate is ``learning_rate * lr``; its cosine schedule ends at ``min_lr_rate`` of the peak.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class FinetuneRecipe:
    """A method's fine-tune from a trained model, rates relative to the base model's training rate."""

    learning_rate: float  # peak, as a fraction of the base model's training rate (both per 512 images)
    min_lr_rate: float  # the cosine schedule's floor, as a fraction of the peak
    weight_decay: float
    warmup: float  # fraction of the steps with a linear warm-up
    backbone_lr_scale: float = 1.0  # the backbone's rate as a fraction of the method's own modules' rate
    backbone_frozen: float = 0.0  # fraction of the steps during which the backbone does not move
    distill: bool = False  # a frozen copy of the base model teaches (DynamicViT: logits KL and kept tokens MSE)
    source: str = ""


OFFICIAL_FINETUNES = {
    # DeiT-S was trained at --lr 5e-4 per 512 images; EViT fine-tunes it at 2e-5 per 512 (both scaled by the batch),
    # down to --min-lr 2e-6 (not scaled: 0.025 of the peak 8e-5 at its batch of 2048), no warm-up, no distillation.
    "evit": FinetuneRecipe(
        learning_rate=0.04, min_lr_rate=0.025, weight_decay=1e-6, warmup=0.0,
        source="youweiliang/evit finetune.sh: --lr 2e-5 --min-lr 2e-6 --weight-decay 1e-6 --warmup-epochs 0, "
        "30 epochs",
    ),
    # DynamicViT trains its predictors at --lr 1e-3 for a batch of 1024 (DeiT's 5e-4 per 512: the same rate), the
    # backbone at 0.01 of it after 5 frozen epochs, warm-up 5 of 30 epochs, min_lr 1e-6, weight decay 0.05.
    "dynamicvit": FinetuneRecipe(
        learning_rate=1.0, min_lr_rate=1e-3, weight_decay=0.05, warmup=5 / 30, backbone_lr_scale=0.01,
        backbone_frozen=5 / 30, distill=True,
        source="raoyongming/DynamicViT README (DeiT-S): --lr 1e-3 --batch_size 128 x 8 GPUs --epochs 30 "
        "--warmup_epochs 5; main.py: min_lr 1e-6, weight_decay 0.05, lr_scale 0.01",
    ),
}  # fmt: skip


def official_finetune(method: str) -> FinetuneRecipe:
    """The official fine-tune of ``method``; a one-line error names the methods that have one."""
    if method not in OFFICIAL_FINETUNES:
        raise ValueError(
            f"method {method!r} has no official fine-tune recipe here; methods with one: {sorted(OFFICIAL_FINETUNES)}."
        )
    return OFFICIAL_FINETUNES[method]


def trainer_arguments(method: str, base_learning_rate: float) -> dict:
    """`TrainingArguments` keywords for ``method``'s official fine-tune of a model trained at ``base_learning_rate``
    (per the same batch): the peak rate, the cosine schedule with its floor, the warm-up and the weight decay. The
    backbone's own rate and freeze (DynamicViT) come from `DynamicViTTrainer`."""
    recipe = official_finetune(method)
    if not base_learning_rate > 0:
        raise ValueError(f"base_learning_rate = {base_learning_rate!r} must be positive.")
    return {
        "learning_rate": recipe.learning_rate * base_learning_rate,
        "weight_decay": recipe.weight_decay,
        "warmup_steps": recipe.warmup,  # a float below 1: a fraction of the steps (transformers 5)
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr_rate": recipe.min_lr_rate},
    }


__all__ = ["OFFICIAL_FINETUNES", "FinetuneRecipe", "official_finetune", "trainer_arguments"]
