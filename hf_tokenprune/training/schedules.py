"""Plan schedules: `TrainerCallback`s that move one runtime option of the model's token-reduction plan (``keep_rate``,
ToMe's ``r``, Cropr's ``tokens_per_layer``...) with training progress, by assigning a new plan to
``model.config.token_reduction`` (the model reads runtime options at every forward). The value is a function of
``state.global_step`` only, so a resumed run follows the same curve.
"""

import math
from typing import Any

import numpy as np
from transformers import TrainerCallback

from ..models.methods import REDUCTION_METHODS, get_reduction_class


def config_of(model: Any) -> Any:
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
        plan = config_of(model).token_reduction
        check_schedulable(plan, self.key)
        if self.target is None:
            self.target = plan[self.key]
        if self.start is None:
            self.start = 1.0 if self.key == "keep_rate" else 0
        _check_number_or_list(self.target, f"the target of {self.key!r}")
        _check_number_or_list(self.start, f"the start of {self.key!r}")
        self.apply(model, 0.0)  # the plan validates the value: a bad start fails here, not mid-training

    def apply(self, model: Any, progress: float) -> Any:
        config = config_of(model)
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
        check_fractions(warmup_fraction, delay_fraction)
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


def check_fractions(warmup_fraction: float, delay_fraction: float) -> None:
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
