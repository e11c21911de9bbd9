"""Paired, interleaved timing: every candidate on the same input, round by round, in an order that rotates each
round, so that drift (throttling, a neighbour's load) hits all of them alike; speed-ups are per-round ratios."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._lazy import LazyModule
from .devices import OthersLoad, synchronize

torch = LazyModule("torch")


@dataclass
class TimingStats:
    """Wall-clock times of one candidate over the measured rounds."""

    times: list[float] = field(default_factory=list)  # seconds, one per round
    others_load: float | None = None  # how busy other processes kept the machine during the rounds (`OthersLoad`)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> tuple[float, float]:
        """(min, max) of the times, in seconds."""
        return min(self.times), max(self.times)


def _timed(function: Callable[[torch.Tensor], Any], pixel_values: torch.Tensor) -> float:
    synchronize(pixel_values.device)
    start = time.perf_counter()
    function(pixel_values)
    synchronize(pixel_values.device)
    return time.perf_counter() - start


def measure_paired(
    candidates: dict[str, Callable[[torch.Tensor], Any]],
    pixel_values: torch.Tensor,
    *,
    rounds: int = 5,
    warmup: int = 1,
    progress: bool = True,
    desc: str = "timing",
) -> dict[str, TimingStats]:
    """Times every candidate on the same input, paired and interleaved.

    Each candidate first runs ``warmup`` times (not timed); then, in each of ``rounds`` rounds, every candidate runs
    once, in an order rotated by one place per round. Calls run under `torch.inference_mode`; a candidate that needs
    gradients (a training step) opens ``with torch.inference_mode(False):`` itself, as `training_step` does.

    Args:
        candidates: name -> a callable taking ``pixel_values``.
        pixel_values: the input batch; its device is synchronized around each timed call.
        rounds: measured rounds (each candidate runs once per round).
        warmup: untimed calls per candidate before the rounds.
        progress: show a tqdm progress bar.
        desc: the progress bar's label.

    Returns:
        name -> `TimingStats` with one time per round and the load other processes put on the machine meanwhile.
    """
    if not candidates:
        raise ValueError("candidates is empty: give at least one name -> callable.")
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds = {rounds} must be >= 1 and warmup = {warmup} >= 0.")
    from tqdm.auto import tqdm

    names = list(candidates)
    stats = {name: TimingStats() for name in names}
    bar = tqdm(total=len(names) * (warmup + rounds), desc=desc, disable=not progress, leave=False)
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()  # no garbage-collector pause inside a timed call
    load = OthersLoad()
    try:
        with torch.inference_mode():
            for name in names:
                for _ in range(warmup):
                    _timed(candidates[name], pixel_values)
                    bar.update()
            load.start()
            for round_index in range(rounds):
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    stats[name].times.append(_timed(candidates[name], pixel_values))
                    bar.update()
            load.stop()
    finally:
        if collecting:
            gc.enable()
        bar.close()
    for timing in stats.values():
        timing.others_load = load.value
    return stats


class Speedups(list):
    """Per-round speed-ups (the stock model's time over the plan's, in the same round), with ``best``: the stock
    model's fastest round over the plan's fastest, which interference from other processes can only lower, and
    ``others_load``: how busy other processes kept the machine meanwhile."""

    def __init__(self, stock: TimingStats, plan: TimingStats):
        super().__init__(s / p for s, p in zip(stock.times, plan.times))
        self.best = min(stock.times) / min(plan.times)
        self.others_load = plan.others_load


def _ratios(stock: TimingStats, plan: TimingStats) -> Speedups:
    return Speedups(stock, plan)
