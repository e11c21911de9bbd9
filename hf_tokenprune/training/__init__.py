"""Training hf_tokenprune models with the Hugging Face `Trainer`: the pieces, one module each.

- `schedules`: plan schedules (callbacks that move a runtime option of the plan with training progress);
- `trainers`: `TokenPruneTrainer` (bookkeeping out of the predictions, scheduled values in the logs, our model card
  on ``push_to_hub``) and `SuperViTTrainer`;
- `distillation`: `DistillationTrainer` and DynamicViT's official recipe (`DynamicViTTrainer`);
- `recipes`: the official fine-tune recipes, with rates relative to the base model's;
- `metrics`: ``compute_metrics`` for the Trainer (accuracy, token counts, GFLOPs) and segmentation metrics;
- `initialization`: a 2-D sine-cosine start for a ViT trained from scratch.

The names below are importable from ``hf_tokenprune.training`` directly.
"""

from .._lazy import lazy_names

# Public name -> the module that defines it (loaded on first use).
_NAMES = {
    "BackboneFreeze": "distillation",
    "ConstantSchedule": "schedules",
    "CosineSchedule": "schedules",
    "DistillationTrainer": "distillation",
    "DynamicViTTrainer": "distillation",
    "FinetuneRecipe": "recipes",
    "LinearSchedule": "schedules",
    "OFFICIAL_FINETUNES": "recipes",
    "PAPER_SCHEDULES": "schedules",
    "PlanSchedule": "schedules",
    "SCHEDULES": "schedules",
    "SuperViTTrainer": "trainers",
    "TokenPruneTrainer": "trainers",
    "accuracy": "metrics",
    "build_compute_metrics": "metrics",
    "build_schedule": "schedules",
    "build_segmentation_compute_metrics": "metrics",
    "check_schedulable": "schedules",
    "default_schedule_key": "schedules",
    "distillation_loss": "trainers",
    "final_tokens": "distillation",
    "freeze_backbone": "distillation",
    "init_sincos_position_embeddings": "initialization",
    "load_metric": "metrics",
    "official_finetune": "recipes",
    "operating_points": "trainers",
    "recipe_parameter_groups": "distillation",
    "resize_images": "trainers",
    "segmentation_metrics": "metrics",
    "sincos_position_embeddings": "initialization",
    "token_distillation_loss": "distillation",
    "token_metrics": "metrics",
    "trainer_arguments": "recipes",
}
__getattr__, __dir__ = lazy_names(__name__, _NAMES)
__all__ = sorted(_NAMES)
