"""The Trainers of hf_tokenprune models.

- `TokenPruneTrainer`: the stock `Trainer` plus what these models need: the token bookkeeping of the outputs is kept
  out of the predictions, the logs carry the scheduled plan values, and ``push_to_hub`` / ``create_model_card`` write
  hf_tokenprune's model card (the method, the plan, FLOPs, accuracy and speed) and upload no pickles. The stock
  `Trainer` trains every method too; it writes the stock card.
- `SuperViTTrainer`: SuperViT's step: four sub-networks (full, lower keep rate, smaller resolution, both), one
  optimizer step.
- `distillation_loss`: the KL a distilling trainer adds (`hf_tokenprune.training.distillation` builds on this).

Losses and ``num_items_in_batch``: the models' forwards take ``**kwargs``, so the Trainer passes
``num_items_in_batch`` (the number of labels in the whole accumulated, all-process batch) and the model's loss is a
sum divided by it; the Trainer then multiplies the loss by the number of processes (DDP averages gradients) and does
not divide it by the gradient-accumulation steps. Every loss added here is normalised the same way (a per-example
sum divided by ``num_items_in_batch``, times the same process factor) and falls back to a batch mean when the
Trainer passes no count (a model with ``accepts_loss_kwargs = False``), where the Trainer divides by the
accumulation steps itself. So a 2-process run reports and optimises the same loss as a 1-process run with the same
global batch (tested in ``tests/training/test_distributed.py``).
"""

import functools
import inspect
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import HfApi
from transformers import Trainer

from ..families import is_tokenprune
from ..models.configuration_tokenprune_common import IGNORED_AT_INFERENCE
from ..models.methods import REDUCTION_METHODS, get_reduction_class
from ..models.token_reduction import grid_of
from ..sharing.hub import check_no_secret, check_shareable, ensure_branch, secret_of, upload_model_then_card
from ..sharing.model_card import TRAINER_IGNORE_PATTERNS, write_model_card
from .schedules import PlanSchedule, config_of

# The stock Trainer.create_model_card's arguments, in order (so positional ones keep their meaning).
_STOCK_CARD_ARGUMENTS = list(inspect.signature(Trainer.create_model_card).parameters)[1:]


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    num_items_in_batch: Any = None,
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` per example; the batch mean, or the sum divided by
    ``num_items_in_batch`` when given (the Trainer's normalisation under gradient accumulation and DDP)."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    per_example = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(dim=-1)
    per_example = per_example * temperature**2  # (B,)
    if num_items_in_batch is None:
        return per_example.mean()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(per_example.device)
    return per_example.sum() / num_items_in_batch


class TokenPruneTrainer(Trainer):
    """`Trainer` that keeps the models' token bookkeeping out of the predictions, logs the scheduled plan values
    (``plan_keep_rate`` ...) of its `PlanSchedule` callbacks, and shares a model with hf_tokenprune's card:
    `create_model_card` writes it into ``output_dir`` and `push_to_hub` uploads the model (no pickles), then the card
    pinned to the model's commit. A model of another library gets the stock card and push."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        ignore_keys = list(ignore_keys or []) + list(IGNORED_AT_INFERENCE)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def create_model_card(self, *args, **kwargs) -> None:
        """The stock arguments (``model_name``, ``finetuned_from``, ``dataset_tags``, ``tags``, ...) plus the card's
        (``accuracy``, ``speed``, ``images``, ``description``, ...); the accuracy defaults to the last logged
        ``eval_accuracy`` and the training table to this run's hyperparameters."""
        model = self.accelerator.unwrap_model(self.model)
        if not is_tokenprune(model):
            return super().create_model_card(*args, **kwargs)
        if not self.is_world_process_zero():
            return None
        stock = {**dict(zip(_STOCK_CARD_ARGUMENTS, args)), **kwargs}
        if stock.get("model_name") is None:  # as the stock Trainer names it
            stock["model_name"] = (self.args.hub_model_id or str(self.args.output_dir)).rstrip("/").split("/")[-1]
        dataset_tags = stock.pop("dataset_tags", None)
        accuracy = stock.pop("accuracy", None) or self._logged_accuracy(stock.pop("dataset", None) or dataset_tags)
        for ignored in ("language", "tasks", "dataset", "dataset_args"):  # fixed here: image classification
            stock.pop(ignored, None)
        tags = stock.pop("tags", None)
        write_model_card(
            self.args.output_dir,
            model,
            base_model=stock.pop("finetuned_from", None),
            datasets=dataset_tags,
            accuracy=accuracy,
            tags=[tags] if isinstance(tags, str) else tags,
            repo_id=stock.pop("repo_id", None) or getattr(self, "hub_model_id", None),
            training=stock.pop("training", None) or self._hyperparameters(),
            **stock,
        )
        return None

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ):
        """Uploads ``output_dir`` (the model, its remote code and image processor; never pickles such as
        ``training_args.bin``) in one commit, then the card of `create_model_card` (``kwargs``) pinned to it.
        Returns the card commit's `CommitInfo` (a future when not ``blocking``)."""
        model = self.accelerator.unwrap_model(self.model)
        if not is_tokenprune(model):
            return super().push_to_hub(commit_message, blocking, token, revision, private, **kwargs)
        check_shareable(model)
        token = token if token is not None else self.args.hub_token
        self.create_model_card(**kwargs)  # every card input is checked before the Hub is contacted
        if self.is_world_process_zero():
            check_no_secret(Path(self.args.output_dir), secret_of(token), TRAINER_IGNORE_PATTERNS)
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self._finish_current_push()
        revision = revision if revision is not None else self.args.hub_revision
        api = HfApi()
        ensure_branch(api, self.hub_model_id, revision, token)
        job = functools.partial(
            upload_model_then_card,
            api,
            Path(self.args.output_dir),
            self.hub_model_id,
            lambda commit: self.create_model_card(revision=commit, **kwargs),
            token=token,
            revision=revision,
            commit_message=commit_message or "End of training",
            ignore_patterns=TRAINER_IGNORE_PATTERNS,
        )
        return job() if blocking else api.run_as_future(job)

    def _logged_accuracy(self, dataset: Any) -> dict | None:
        """The last ``eval_accuracy`` the Trainer logged."""
        for entry in reversed(self.state.log_history):
            if "eval_accuracy" in entry:
                name = dataset[0] if isinstance(dataset, (list, tuple)) and dataset else dataset
                return {"with_reduction": entry["eval_accuracy"], "dataset": name or "evaluation set"}
        return None

    def _hyperparameters(self) -> dict:
        args, state = self.args, self.state
        return {
            "learning_rate": args.learning_rate,
            "train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "epochs": round(state.epoch or 0, 2),
            "steps": state.global_step,
            "optimizer": getattr(args.optim, "value", args.optim),
            "seed": args.seed,
        }

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, PlanSchedule):
                logs.update(callback.log_values())
        super().log(logs, start_time)

    def _loss_scale(self, num_items_in_batch: Any) -> float:
        """The factor the Trainer applies to a loss normalised by ``num_items_in_batch`` (see the module doc)."""
        if num_items_in_batch is None or not self.args.average_tokens_across_devices:
            return 1.0
        if not (self.model_accepts_loss_kwargs or self.compute_loss_func):
            return 1.0
        return float(self.accelerator.num_processes // max(getattr(self, "get_tp_size", lambda: 1)(), 1))

    def _items(self, num_items_in_batch: Any) -> Any:
        """The count a sum-reduced extra loss divides by: the Trainer's, or None for a batch mean."""
        return num_items_in_batch if self.model_accepts_loss_kwargs else None

    def _loss_kwargs(self, num_items_in_batch: Any) -> dict[str, Any]:
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            return {"num_items_in_batch": num_items_in_batch}
        return {}


RESIZES = ("official", "antialiased")


def resize_images(pixel_values: torch.Tensor, size: int | tuple[int, int], mode: str = "official") -> torch.Tensor:
    """Bilinear resize of a (B, C, H, W) batch to ``size`` (a side or (height, width)): ``"official"`` as
    lmbxmu/SuperViT resizes inside its model (``align_corners=True``, no antialiasing), or ``"antialiased"``
    (``align_corners=False`` with antialiasing, kinder to small sizes)."""
    if mode not in RESIZES:
        raise ValueError(f"resize mode {mode!r} is not known; allowed: {list(RESIZES)}.")
    size = grid_of(size, 1)
    if tuple(pixel_values.shape[-2:]) == size:
        return pixel_values
    if mode == "official":
        return F.interpolate(pixel_values, size=size, mode="bilinear", align_corners=True)
    return F.interpolate(pixel_values, size=size, mode="bilinear", antialias=True, align_corners=False)


class SuperViTTrainer(TokenPruneTrainer):
    """`TokenPruneTrainer` whose training step is SuperViT's (Lin et al., IJCV; lmbxmu/SuperViT): four
    sub-networks share the weights and one optimizer step,

    1. full resolution, keep rate 1, on the labels;
    2. full resolution, a random keep rate < 1, distilled (KL) from 1's detached logits;
    3. a random smaller resolution, keep rate 1, on the labels;
    4. that resolution, a random keep rate < 1, distilled from 3's detached logits;

    and the loss is their sum. The trained model then serves every (resolution, keep rate) pair at call time:
    ``model(resize_images(x, r), keep_rate=k, interpolate_pos_encoding=True)``.

    Resolutions go through ``interpolate_pos_encoding``: the position embeddings are resized bicubically to the
    input's patch grid, unless the config has a learned table for that side (``position_tables``, as the reference
    model has one per resolution; converted SuperViT checkpoints have them). Without tables there are no extra
    parameters, so a stock ViT/DeiT checkpoint loads unchanged, and any size that is a multiple of the patch size
    works at inference, not only the trained ones. Images are resized as the reference does (``resize="official"``:
    bilinear, ``align_corners=True``, no antialiasing) or with antialiasing (``resize="antialiased"``).

    The random choices come from a generator seeded by ``(args.seed, global_step, micro-step)``, so a run and a
    resumed run draw the same sub-networks, and every process of a distributed run draws the same ones.

    Args:
        keep_rates: the keep rates to draw from (those < 1 are drawn); default the plan's ``keep_rates``.
        resolutions: the image sides to draw from (those smaller than the model's are drawn); default the plan's
            ``resolutions``.
        distill_temperature: the KL temperature ``T``; the KL is scaled by ``T^2``.
        resize: how the smaller images are made (`resize_images`): ``"official"`` or ``"antialiased"``.
    """

    def __init__(
        self, *args, keep_rates=None, resolutions=None, distill_temperature: float = 1.0, resize="official", **kwargs
    ):
        if resize not in RESIZES:
            raise ValueError(f"SuperViTTrainer resize = {resize!r} is not known; allowed: {list(RESIZES)}.")
        self.resize = resize
        super().__init__(*args, **kwargs)
        config = config_of(self.model)
        plan = config.token_reduction
        if plan is None or not get_reduction_class(plan["method"]).uses_keep_rate:
            method = None if plan is None else plan["method"]
            with_rate = sorted(name for name, cls in REDUCTION_METHODS.items() if cls.uses_keep_rate)
            raise ValueError(
                f"SuperViTTrainer needs a plan with a keep rate; method {method!r} has none: {with_rate}."
            )
        self.keep_rates = _lower_keep_rates(keep_rates if keep_rates is not None else plan.get("keep_rates"))
        self.resolutions = _smaller_resolutions(
            resolutions if resolutions is not None else plan.get("resolutions"), config
        )
        if not distill_temperature > 0:
            raise ValueError(f"distill_temperature = {distill_temperature!r} must be > 0.")
        self.distill_temperature = distill_temperature
        self.last_subnetworks: list[dict[str, Any]] = []  # what the last training step ran (for logs and tests)
        self._draws = (-1, 0)  # (global step, draws made in it)

    def draw_subnetworks(self) -> tuple[float, int, float]:
        """(keep rate at full resolution, smaller resolution, keep rate at it) for this micro-step."""
        step, count = self._draws
        count = count + 1 if step == self.state.global_step else 0
        self._draws = (self.state.global_step, count)
        rng = random.Random(f"supervit:{self.args.seed}:{self.state.global_step}:{count}")
        return rng.choice(self.keep_rates), rng.choice(self.resolutions), rng.choice(self.keep_rates)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        pixels, labels = inputs["pixel_values"], inputs["labels"]
        keep_full, resolution, keep_small = self.draw_subnetworks()
        small = resize_images(pixels, resolution, self.resize)
        loss_kwargs, items = self._loss_kwargs(num_items_in_batch), self._items(num_items_in_batch)
        full = model(pixel_values=pixels, labels=labels, keep_rate=1.0, **loss_kwargs)
        pruned = model(pixel_values=pixels, keep_rate=keep_full)
        full_small = model(
            pixel_values=small, labels=labels, keep_rate=1.0, interpolate_pos_encoding=True, **loss_kwargs
        )
        pruned_small = model(pixel_values=small, keep_rate=keep_small, interpolate_pos_encoding=True)
        losses = {
            "full": full.loss,
            "pruned": distillation_loss(pruned.logits, full.logits, self.distill_temperature, items),
            "small": full_small.loss,
            "pruned_small": distillation_loss(pruned_small.logits, full_small.logits, self.distill_temperature, items),
        }
        # The model's losses are already in the Trainer's scale; the KL terms get the same process factor.
        scale = self._loss_scale(num_items_in_batch)
        loss = losses["full"] + losses["small"] + scale * (losses["pruned"] + losses["pruned_small"])
        sizes = (grid_of(pixels.shape[-2:], 1),) * 2 + ((resolution, resolution),) * 2
        self.last_subnetworks = [
            {"name": name, "image_size": size, "keep_rate": rate, "loss": float(losses[name].detach())}
            for name, size, rate in zip(losses, sizes, (1.0, keep_full, 1.0, keep_small))
        ]
        return (loss, full) if return_outputs else loss


def _lower_keep_rates(keep_rates: Any) -> list[float]:
    if not isinstance(keep_rates, (list, tuple)) or not keep_rates:
        raise ValueError(f"SuperViTTrainer keep_rates = {keep_rates!r} must be a non-empty list of keep rates.")
    lower = sorted({float(k) for k in keep_rates if 0.0 < float(k) < 1.0})
    if not lower:
        raise ValueError(f"SuperViTTrainer keep_rates = {list(keep_rates)!r} has no keep rate in (0, 1) to draw.")
    return lower


def _smaller_resolutions(resolutions: Any, config: Any) -> list[int]:
    image, patch = grid_of(config.image_size, 1), grid_of(config.patch_size, 1)
    if not isinstance(resolutions, (list, tuple)) or not resolutions:
        raise ValueError(f"SuperViTTrainer resolutions = {resolutions!r} must be a non-empty list of image sides.")
    smaller = sorted({int(r) for r in resolutions if patch[0] <= r < image[0] and r % patch[0] == 0})
    smaller = [r for r in smaller if r < image[1] and r % patch[1] == 0]
    if not smaller:
        raise ValueError(
            f"SuperViTTrainer resolutions = {list(resolutions)!r} has no side smaller than the model's image size "
            f"{image} that is a multiple of the patch size {patch}."
        )
    return smaller


def operating_points(config: Any) -> list[tuple[int, float]]:
    """Every (image side, keep rate) pair a SuperViT-style plan serves, from the plan's ``resolutions`` and
    ``keep_rates`` (the model's own side and keep rate 1 included)."""
    plan = config.token_reduction or {}
    side = grid_of(config.image_size, 1)[0]
    sides = sorted({side, *plan.get("resolutions", [])})
    rates = sorted({1.0, *plan.get("keep_rates", [plan.get("keep_rate", 1.0)])})
    return [(s, k) for s in sides for k in rates]
