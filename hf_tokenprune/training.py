"""Training recipes for TokenPruneViT as pieces of the Hugging Face `Trainer`.

- Plan schedules (`ConstantSchedule`, `CosineSchedule`, `LinearSchedule`): `TrainerCallback`s that move one runtime
  option of the model's token-reduction plan (``keep_rate``, ToMe's ``r``, Cropr's ``tokens_per_layer``...) with
  training progress, by assigning a new plan to ``model.config.token_reduction`` (the model reads runtime options at
  every forward). The value is a function of ``state.global_step`` only, so a resumed run follows the same curve.
- `TokenPruneTrainer`: the stock `Trainer` plus what this model family needs: the token bookkeeping of the outputs is
  kept out of the predictions, and the logs carry the scheduled plan values.
- `DistillationTrainer`: the model's own loss mixed with a logits KL (and optionally a token MSE) against a teacher:
  the unpruned model (the same weights with ``disable_plans=True``), a frozen snapshot, or a given model.
- `DynamicViTTrainer`: DynamicViT's official recipe (frozen teacher snapshot, CE + 2 ratio + 0.5 KL + 0.5 token MSE,
  backbone frozen for the first 5/30 of the run and then at 0.01 of the methods' learning rate).
- `SuperViTTrainer`: SuperViT's step: four sub-networks (full, lower keep rate, smaller resolution, both), one
  optimizer step.
- `build_compute_metrics`: accuracy through `evaluate` with a metric module shipped here (``evaluate.load("accuracy")``
  needs the Hub; numpy when `evaluate` is missing) plus the per-layer token counts and GFLOPs of the plan in force.

Losses and ``num_items_in_batch``: TokenPruneViT's forward takes ``**kwargs``, so the Trainer passes
``num_items_in_batch`` (the number of labels in the whole accumulated, all-process batch) and the model's loss is a
sum divided by it; the Trainer then multiplies the loss by the number of processes (DDP averages gradients) and does
not divide it by the gradient-accumulation steps. Every loss added here is normalised the same way (a per-example
sum divided by ``num_items_in_batch``, times the same process factor) and falls back to a batch mean when the
Trainer passes no count (a model with ``accepts_loss_kwargs = False``), where the Trainer divides by the
accumulation steps itself. So a 2-process run reports and optimises the same loss as a 1-process run with the same
global batch (tested in ``tests/test_distributed.py``).
"""

import math
import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import EvalPrediction, Trainer, TrainerCallback

from .flops import count_flops
from .models.token_reduction import REDUCTION_METHODS, get_reduction_class, grid_of

# Output fields of TokenPruneViT that are bookkeeping, not predictions (ragged or nested: kept out of eval loops).
BOOKKEEPING_OUTPUTS = [
    "hidden_states", "attentions", "token_counts", "token_positions", "token_owner", "patch_grid", "token_policy",
]  # fmt: skip

# ----------------------------------------------------------------------------------------------------------------
# Plan schedules
# ----------------------------------------------------------------------------------------------------------------


def _config_of(model: Any) -> Any:
    """The config of a model, unwrapping DDP-style wrappers (``.module``)."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return model.config


def check_schedulable(plan: dict | None, key: str) -> None:
    """Raises a ValueError unless ``key`` is a runtime option of ``plan``'s method."""
    if plan is None:
        raise ValueError(
            f"A schedule of token_reduction[{key!r}] needs a model with a token_reduction plan; got None."
        )
    method = get_reduction_class(plan["method"])
    if key not in method.runtime_options:
        with_key = sorted(name for name, cls in REDUCTION_METHODS.items() if key in cls.runtime_options)
        raise ValueError(
            f"token_reduction[{key!r}] cannot be scheduled for method {plan['method']!r}: its runtime options are "
            f"{list(method.runtime_options)}; methods with a {key!r} runtime option: {with_key}."
        )


def _blend(start: Any, target: Any, weight: float) -> Any:
    """``start + weight * (target - start)``, per element for per-layer lists, floored towards ``start`` for ints
    (a curriculum never removes more than the line allows)."""
    if isinstance(target, (list, tuple)):
        starts = start if isinstance(start, (list, tuple)) else [start] * len(target)
        return [_blend(s, t, weight) for s, t in zip(starts, target)]
    value = start + weight * (target - start)
    if isinstance(target, int) and not isinstance(target, bool):
        return math.floor(value + 1e-9) if target >= start else math.ceil(value - 1e-9)
    return float(value)


def _check_number_or_list(value: Any, name: str) -> None:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        raise ValueError(f"A plan schedule moves numbers or per-layer lists of numbers; {name} = {value!r}.")


class PlanSchedule(TrainerCallback):
    """Moves one runtime option of the token-reduction plan from ``start`` to ``target`` as training progresses.

    Generic over methods: it works for any method whose ``runtime_options`` contain ``key`` and raises a ValueError
    otherwise. The value at each optimizer step is a function of ``global_step / max_steps`` only (nothing is
    counted), so resuming from a checkpoint continues the same curve. At the end of training the plan holds the
    target, the operating point the model is trained for.

    Args:
        key: the plan option to move (``"keep_rate"``, ``"r"``, ``"tokens_per_layer"``, ...).
        target: the final value; by default the plan's value when training starts.
        start: the first value; by default 1.0 for ``keep_rate`` (keep everything) and 0 otherwise (remove
            nothing). A number, or a per-layer list when the target is one.
    """

    def __init__(self, key: str = "keep_rate", target: Any = None, start: Any = None):
        self.key = key
        self.target = target
        self.start = start
        self.current: Any = None

    def value_at(self, progress: float) -> Any:
        """The option's value at ``progress`` (the fraction of the optimizer steps done, in [0, 1])."""
        raise NotImplementedError

    def check(self, model: Any) -> None:
        """Validates the schedule against ``model``'s plan and fills ``target``/``start`` defaults. Call it before
        training to fail early; training calls it too."""
        plan = _config_of(model).token_reduction
        check_schedulable(plan, self.key)
        if self.target is None:
            self.target = plan[self.key]
        if self.start is None:
            self.start = 1.0 if self.key == "keep_rate" else 0
        _check_number_or_list(self.target, f"the target of {self.key!r}")
        _check_number_or_list(self.start, f"the start of {self.key!r}")
        self.apply(model, 0.0)  # the plan validates the value: a bad start fails here, not mid-training

    def apply(self, model: Any, progress: float) -> Any:
        config = _config_of(model)
        self.current = self.value_at(min(max(progress, 0.0), 1.0))
        config.token_reduction = {**config.token_reduction, self.key: self.current}
        return self.current

    @staticmethod
    def progress(state: Any) -> float:
        return state.global_step / state.max_steps if state.max_steps else 1.0

    def log_values(self) -> dict[str, float]:
        """The current value for the logs: ``plan_<key>`` (or ``plan_<key>_mean`` for a per-layer list)."""
        if self.current is None:
            return {}
        if isinstance(self.current, (list, tuple)):
            return {f"plan_{self.key}_mean": float(np.mean(self.current))}
        return {f"plan_{self.key}": float(self.current)}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.check(model)
        self.apply(model, self.progress(state))

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.apply(model, self.progress(state))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.apply(model, 1.0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # `TokenPruneTrainer.log` already added the values (so the progress bar shows them); with the stock
        # Trainer they reach the later callbacks and the saved log history from here.
        values = {k: v for k, v in self.log_values().items() if logs is not None and k not in logs}
        if logs is not None:
            logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)


class ConstantSchedule(PlanSchedule):
    """Holds ``key`` at ``target`` for the whole run (EViT's fine-tuning recipe; Evo-ViT trains this way)."""

    def value_at(self, progress: float) -> Any:
        return self.target


class _WarmupSchedule(PlanSchedule):
    """A schedule that moves from ``start`` to ``target`` between ``delay_fraction`` and ``delay_fraction +
    warmup_fraction`` of the run; subclasses give the shape of the move."""

    def __init__(self, key, target=None, start=None, warmup_fraction: float = 0.5, delay_fraction: float = 0.0):
        super().__init__(key, target, start)
        _check_fractions(warmup_fraction, delay_fraction)
        self.warmup_fraction = warmup_fraction
        self.delay_fraction = delay_fraction

    def fraction_done(self, progress: float) -> float:
        done = (progress - self.delay_fraction) / self.warmup_fraction if self.warmup_fraction else 1.0
        return min(max(done, 0.0), 1.0)


class CosineSchedule(_WarmupSchedule):
    """EViT's keep-rate warm-up: ``start`` until ``delay_fraction`` of training, then a half cosine to ``target``
    reached at ``delay_fraction + warmup_fraction``, then ``target`` (youweiliang/evit ``adjust_keep_rate``, with
    epochs expressed as fractions of the run).

    Args:
        key, target, start: see `PlanSchedule`.
        warmup_fraction: the fraction of the run the cosine takes.
        delay_fraction: the fraction of the run before the cosine starts.
    """

    def __init__(self, key="keep_rate", target=None, start=None, warmup_fraction: float = 0.5, delay_fraction=0.0):
        super().__init__(key, target, start, warmup_fraction, delay_fraction)

    def value_at(self, progress: float) -> Any:
        weight = 0.5 * (1.0 - math.cos(math.pi * self.fraction_done(progress)))
        return _blend(self.start, self.target, weight)


class LinearSchedule(_WarmupSchedule):
    """A linear curriculum (ours, not a paper's): ``key`` grows linearly from ``start`` (0: remove nothing) to
    ``target`` over the first ``warmup_fraction`` of training (default: half), then stays there. Integers are
    floored, per layer for a per-layer list. Token Cropr's official code has no curriculum (it prunes at the full
    rate from the first step), so ``build_schedule("auto", ...)`` gives Cropr none; this is an option for it.

    Args:
        key, target, start: see `PlanSchedule` (``key`` defaults to Cropr's ``"tokens_per_layer"``).
        warmup_fraction: the fraction of the run the line takes.
        delay_fraction: the fraction of the run before the line starts.
    """

    def __init__(self, key="tokens_per_layer", target=None, start=None, warmup_fraction=0.5, delay_fraction=0.0):
        super().__init__(key, target, start, warmup_fraction, delay_fraction)

    def value_at(self, progress: float) -> Any:
        return _blend(self.start, self.target, self.fraction_done(progress))


def _check_fractions(warmup_fraction: float, delay_fraction: float) -> None:
    if not 0.0 <= warmup_fraction <= 1.0:
        raise ValueError(f"warmup_fraction = {warmup_fraction!r} must be in [0, 1] (a fraction of the run).")
    if not 0.0 <= delay_fraction <= 1.0 - warmup_fraction:
        raise ValueError(
            f"delay_fraction = {delay_fraction!r} must be in [0, 1 - warmup_fraction] = [0, {1 - warmup_fraction}]."
        )


SCHEDULES = {"constant": ConstantSchedule, "cosine": CosineSchedule, "linear": LinearSchedule}
# The schedule each official code trains with, for `build_schedule("auto", ...)`; other methods get none (Cropr,
# DynamicViT, Evo-ViT and SuperViT train at their operating point from the first step).
PAPER_SCHEDULES = {"evit": "cosine"}


def default_schedule_key(plan: dict) -> str:
    """The option a schedule moves by default: ``keep_rate`` if the method has one, else its first runtime option."""
    method = get_reduction_class(plan["method"])
    if method.uses_keep_rate:
        return "keep_rate"
    if not method.runtime_options:
        raise ValueError(f"Method {plan['method']!r} has no runtime option a schedule could move.")
    return method.runtime_options[0]


def build_schedule(name: str, plan: dict | None, key: str | None = None, **kwargs: Any) -> PlanSchedule | None:
    """A schedule by name: ``"none"``, ``"constant"``, ``"cosine"``, ``"linear"``, or ``"auto"`` (the official
    code's: cosine for EViT, none otherwise). ``kwargs`` go to the schedule class."""
    if name == "auto":
        name = PAPER_SCHEDULES.get(plan["method"], "none") if plan else "none"
    if name == "none":
        return None
    if name not in SCHEDULES:
        raise ValueError(f"keep_rate_schedule = {name!r} is not known; allowed: {['auto', 'none', *SCHEDULES]}.")
    if plan is None:
        raise ValueError(f"keep_rate_schedule = {name!r} needs a token_reduction plan.")
    key = key or default_schedule_key(plan)
    if name == "constant":
        kwargs = {k: v for k, v in kwargs.items() if k in ("target", "start")}
    return SCHEDULES[name](key=key, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Initialisation for training from scratch
# ----------------------------------------------------------------------------------------------------------------


def sincos_position_embeddings(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """2D sine-cosine position embeddings, (rows * columns, dim): a quarter of the channels each for sin(x), cos(x),
    sin(y), cos(y) at geometric frequencies (as MAE and Beyer et al. 2022, "Better plain ViT baselines", use)."""
    if dim % 4:
        raise ValueError(f"hidden_size = {dim} must be a multiple of 4 for 2D sine-cosine position embeddings.")
    rows, columns = grid
    y, x = torch.meshgrid(
        torch.arange(rows, dtype=torch.float32), torch.arange(columns, dtype=torch.float32), indexing="ij"
    )
    quarter = dim // 4
    omega = temperature ** -(torch.arange(quarter, dtype=torch.float32) / max(quarter - 1, 1))  # (dim / 4,)
    x = x.flatten()[:, None] * omega[None]  # (rows * columns, dim / 4)
    y = y.flatten()[:, None] * omega[None]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)


@torch.no_grad()
def init_sincos_position_embeddings(model: Any) -> None:
    """Initialises a ViT's learned position embeddings with `sincos_position_embeddings` (the CLS slot with zeros).

    Only the starting value changes: the table stays a learned parameter and the model a stock ViT. Training from
    scratch on a small set, the tokens' dot products then carry their relative offsets from the first step, which
    a randomly initialised table has to learn first (a 4-layer, 64-wide ViT on the cluttered digits reached 78%
    instead of 58% validation accuracy after the same 1,800 steps).
    """
    base = model.vit if hasattr(model, "vit") else model
    table = base.embeddings.position_embeddings  # (1, 1 + patches, dim)
    config = _config_of(model)
    grid = grid_of(config.image_size, config.patch_size)
    table[0, 1:] = sincos_position_embeddings(grid, table.shape[-1]).to(table.dtype)
    table[0, :1] = 0.0


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------


def token_metrics(config: Any, keep_rate: float | None = None, image_size: Any = None) -> dict[str, Any]:
    """The tokens entering each layer's MLP (space-separated), their mean, and GFLOPs per image, for the plan in
    force (analytic: `config.token_counts`, which the model's ``outputs.token_counts`` equal)."""
    counts = config.token_counts(keep_rate=keep_rate, image_size=image_size)
    report = count_flops(config, keep_rate=keep_rate, image_size=image_size, token_counts=counts)
    mlp_tokens = [int(m) for _, m in counts]
    return {
        "tokens_per_layer": " ".join(str(m) for m in mlp_tokens),  # a string: every logger can print it
        "mean_tokens": float(np.mean(mlp_tokens)),
        "gflops": report.gflops,
    }


def accuracy(predictions: Any, labels: np.ndarray) -> float:
    """Top-1 accuracy of logits (or a tuple whose first item is the logits) against integer labels, through
    `evaluate` (hf_tokenprune's own metric module, which loads offline) or numpy (`hf_tokenprune.metrics`)."""
    from .metrics import accuracy as evaluate_accuracy

    return evaluate_accuracy(predictions, labels)


def build_compute_metrics(model: Any = None):
    """A ``compute_metrics`` for the Trainer: accuracy, plus `token_metrics` of ``model``'s plan in force when it is
    given (so a scheduled keep rate shows in each evaluation)."""

    def compute_metrics(prediction: EvalPrediction) -> dict[str, Any]:
        metrics = {"accuracy": accuracy(prediction.predictions, prediction.label_ids)}
        if model is not None:
            metrics.update(token_metrics(_config_of(model)))
        return metrics

    return compute_metrics


# ----------------------------------------------------------------------------------------------------------------
# Trainers
# ----------------------------------------------------------------------------------------------------------------


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
    """`Trainer` that keeps TokenPruneViT's token bookkeeping out of the predictions and logs the scheduled plan
    values (``plan_keep_rate`` ...) of its `PlanSchedule` callbacks."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        ignore_keys = list(ignore_keys or []) + BOOKKEEPING_OUTPUTS
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

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


def resize_images(pixel_values: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of a (B, C, H, W) batch to ``size`` (a side or (height, width))."""
    size = grid_of(size, 1)
    if tuple(pixel_values.shape[-2:]) == size:
        return pixel_values
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

    Resolutions go through ``interpolate_pos_encoding`` (the position embeddings are resized bicubically to the
    input's patch grid) rather than one learned table per resolution: no extra parameters, so a stock ViT/DeiT
    checkpoint loads unchanged and the trained folder stays a plain ViT checkpoint that any ViT code can read; and
    any size that is a multiple of the patch size works at inference, not only the trained ones.

    The random choices come from a generator seeded by ``(args.seed, global_step, micro-step)``, so a run and a
    resumed run draw the same sub-networks, and every process of a distributed run draws the same ones.

    Args:
        keep_rates: the keep rates to draw from (those < 1 are drawn); default the plan's ``keep_rates``.
        resolutions: the image sides to draw from (those smaller than the model's are drawn); default the plan's
            ``resolutions``.
        distill_temperature: the KL temperature ``T``; the KL is scaled by ``T^2``.
    """

    def __init__(self, *args, keep_rates=None, resolutions=None, distill_temperature: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        config = _config_of(self.model)
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
        small = resize_images(pixels, resolution)
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


# The distillation trainers live in `hf_tokenprune.distillation` (which builds on this module); they are importable
# from here as before, loaded on first use.
_DISTILLATION_NAMES = (
    "BackboneFreeze", "DistillationTrainer", "DynamicViTTrainer", "final_tokens", "freeze_backbone",
    "recipe_parameter_groups", "token_distillation_loss",
)  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _DISTILLATION_NAMES:
        from . import distillation

        return getattr(distillation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
