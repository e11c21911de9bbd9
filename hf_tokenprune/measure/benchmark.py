"""Throughput and latency of token-reduction plans, measured against the stock HF class of the model's family
(the ``stock`` class of its row of the family table: `ViTForImageClassification` for ViT).

Every candidate runs in the same process, on the same batch, with the same weights, interleaved round by round
(the order rotates each round so that drift such as thermal throttling or a neighbour's load hits all of them
alike). Results are ratios against the stock model, next to the ideal ratio from `hf_tokenprune.flops`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._lazy import LazyModule
from ..families import build_config, family_of
from ..flops import count_flops
from ..plans import PlanEntry, parse_plans
from .devices import machine_info, machine_load
from .report import MODES, noise_of
from .timing import Speedups, measure_paired

RUNTIMES = ("pytorch", "onnxruntime")

torch = LazyModule("torch")  # imported when first used: the CLI's help and bad-input errors need no torch


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


def stock_config(config: Any) -> Any:
    """The stock config of a TokenPrune config's family (`ViTConfig` for TokenPruneViT): every field, no plans."""
    data = config.to_dict()
    for key in (
        "token_reduction",
        "attention_reuse",
        "restore_tokens",
        "model_type",
        "auto_map",
        "architectures",
        "out_features",
        "out_indices",
    ):
        data.pop(key, None)
    data.pop("transformers_version", None)
    return family_of(config.model_type).stock_classes()[0](**data)


def build_models(
    base: Any,
    plans: list[tuple[PlanEntry, Any]],
    state_dict: dict | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
    """The stock `ViTForImageClassification` and one TokenPruneViT per plan, all holding the same weights.

    The plan models share the stock model's weight tensors (no copies); parameters a plan adds (scorers, reuse
    modules) are initialised from ``seed``.

    Args:
        base: the TokenPruneViT config without plans.
        plans: (entry, config) pairs from `parse_plans`.
        state_dict: weights to load (a stock ViT or TokenPruneViT state dict); random weights from ``seed`` if None.
        device: where the models live (the CPU if None).
        dtype: the models' floating-point type (float32 if None).
    """
    dtype = dtype or torch.float32
    row = family_of(base.model_type, "benchmark")
    stock_class, plan_class = row.stock_classes()[1], row.model_class()
    torch.manual_seed(seed)
    stock = stock_class(stock_config(base)).eval()
    if state_dict is not None:
        missing, _ = stock.load_state_dict(state_dict, strict=False)
        if missing:
            raise ValueError(
                f"the weights lack {len(missing)} stock {stock_class.__name__} parameters, e.g. {missing[:3]}."
            )
    stock = stock.to(device=device or torch.device("cpu"), dtype=dtype)
    weights = stock.state_dict()
    models = {}
    for entry, config in plans:
        torch.manual_seed(seed)
        model = plan_class(config).eval()
        _, unexpected = model.load_state_dict(weights, strict=False, assign=True)
        if unexpected:
            raise ValueError(f"{entry.label}: stock weights {unexpected[:3]} have no place in the plan's model.")
        models[entry.label] = model.to(device=device or torch.device("cpu"), dtype=dtype)  # shared weights stay
    return stock, models


def load_base(model: str | None, arch: str) -> tuple[Any, dict | None]:
    """The plan-free config and weights of a checkpoint of any family (loaded into the model class the benchmark
    pairs with the family's stock class: its row's ``model``), or a built-in architecture's config and None.

    A checkpoint's own plans are dropped: the benchmark applies its list of plans to the same weights.
    """
    base = build_config(model, arch, "benchmark")
    if model is None:
        return base, None
    model_class = family_of(base.model_type).model_class()
    loaded = model_class.from_pretrained(model, token_reduction=None, attention_reuse=None)
    return loaded.config, loaded.state_dict()


def _size_options(interpolate: bool) -> dict:
    """``interpolate_pos_encoding`` only when needed: DINOv2 always interpolates and takes no such argument."""
    return {"interpolate_pos_encoding": True} if interpolate else {}


def inference_call(model: torch.nn.Module, interpolate: bool) -> Callable[[torch.Tensor], Any]:
    def forward(pixel_values: torch.Tensor) -> Any:
        return model(pixel_values=pixel_values, **_size_options(interpolate))

    return forward


def training_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, labels: torch.Tensor, interpolate: bool
) -> Callable[[torch.Tensor], Any]:
    """One optimisation step (forward with labels, backward, optimizer step) as a callable for `measure_paired`."""

    def step(pixel_values: torch.Tensor) -> Any:
        with torch.inference_mode(False):
            optimizer.zero_grad(set_to_none=True)
            loss = model(pixel_values=pixel_values, labels=labels, **_size_options(interpolate)).loss
            loss.backward()
            optimizer.step()
        return loss

    return step


# ----------------------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class BenchmarkSettings:
    """How to measure: device, dtype, batch size, rounds, modes, compile."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = field(default_factory=lambda: torch.float32)
    batch_size: int = 16
    rounds: int = 5
    latency_rounds: int | None = None  # default: 3 x rounds (batch-1 calls are short and noisier)
    warmup: int = 1
    modes: tuple[str, ...] = MODES
    compile: bool = False
    image_size: int | None = None
    learning_rate: float = 1e-5
    seed: int = 0
    progress: bool = True
    runtime: str = "pytorch"  # or "onnxruntime": every model exported to ONNX and timed there (`onnx_runtime`)

    def check(self) -> None:
        unknown = sorted(set(self.modes) - set(MODES))
        if unknown or not self.modes:
            raise ValueError(f"modes = {list(self.modes)} must be a non-empty subset of {list(MODES)}.")
        for name in ("batch_size", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be at least 1.")
        if self.warmup < 0:
            raise ValueError(f"warmup = {self.warmup} must be at least 0.")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"--runtime {self.runtime!r} is not known; allowed: {list(RUNTIMES)}.")
        if self.runtime == "onnxruntime" and self.dtype != torch.float32:
            raise ValueError(f"--runtime onnxruntime exports float32 graphs: use --dtype fp32 (got {self.dtype}).")
        if self.runtime == "onnxruntime" and self.device.type != "cpu":
            raise ValueError(f"--runtime onnxruntime times the CPU provider: use --device cpu (got {self.device}).")
        if self.runtime == "onnxruntime" and ("training" in self.modes or self.compile):
            raise ValueError(
                "--runtime onnxruntime times exported inference graphs: use --modes inference,latency, without "
                "--compile."
            )


def allow_recompiles(num_models: int) -> None:
    """Every compiled model shares the forward's code object, so dynamo counts the models' graphs as recompiles;
    raise its limits so that no model silently falls back to eager."""
    import torch._dynamo

    config = torch._dynamo.config
    for name, needed in (("recompile_limit", 8 * num_models), ("accumulated_recompile_limit", 64 * num_models)):
        for alias in (name, name.replace("recompile_limit", "cache_size_limit")):
            if hasattr(config, alias):
                setattr(config, alias, max(getattr(config, alias), needed))


def _prepare(model: torch.nn.Module, settings: BenchmarkSettings) -> torch.nn.Module:
    return torch.compile(model) if settings.compile else model


def _input(settings: BenchmarkSettings, config: Any, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    size = settings.image_size or config.image_size
    generator = torch.Generator().manual_seed(settings.seed)
    shape = config.input_shape(size) if hasattr(config, "input_shape") else (config.num_channels, size, size)  # stock
    pixels = torch.randn(batch_size, *shape, generator=generator)
    labels = torch.randint(0, max(config.num_labels, 1), (batch_size,), generator=generator)
    return pixels.to(settings.device, settings.dtype), labels.to(settings.device)


def measure_forward(stock, models, config, settings: BenchmarkSettings, batch_size: int, rounds: int, desc: str):
    """Speed-ups of every plan against stock for forward passes at ``batch_size``, all models interleaved."""
    interpolate = settings.image_size is not None
    candidates = {"stock": inference_call(_prepare(stock, settings), interpolate)}
    candidates |= {label: inference_call(_prepare(m, settings), interpolate) for label, m in models.items()}
    pixels, _ = _input(settings, config, batch_size)
    stats = measure_paired(
        candidates, pixels, rounds=rounds, warmup=settings.warmup, progress=settings.progress, desc=desc
    )
    return {label: Speedups(stats["stock"], stats[label]) for label in models}


def measure_training(stock, models, config, settings: BenchmarkSettings):
    """Speed-ups of training steps, one plan at a time against its own copy of the stock model (each model has its
    own weights and its own AdamW optimizer, so the pair fits in memory whatever the number of plans)."""
    import copy

    interpolate = settings.image_size is not None
    pixels, labels = _input(settings, config, settings.batch_size)
    results = {}
    for label, model in models.items():
        pair = {"stock": copy.deepcopy(stock).train(), label: copy.deepcopy(model).train()}
        candidates = {}
        for name, member in pair.items():
            member = member.to(device=settings.device, dtype=settings.dtype)
            optimizer = torch.optim.AdamW(member.parameters(), lr=settings.learning_rate)
            compiled = torch.compile(member) if settings.compile else member
            candidates[name] = training_step(compiled, optimizer, labels, interpolate)
        stats = measure_paired(
            candidates,
            pixels,
            rounds=settings.rounds,
            warmup=settings.warmup,
            progress=settings.progress,
            desc=f"training: {label}",
        )
        results[label] = Speedups(stats["stock"], stats[label])
        del pair, candidates
    return results


def _row(entry: PlanEntry, config: Any, mode: str, ratios: list[float], settings, info: dict, bound=None) -> dict:
    report = count_flops(config, image_size=settings.image_size)
    measured = statistics.median(ratios)
    extra = {}
    if bound is not None:  # the stock layers at the plan's token counts (onnxruntime runs of ViT)
        extra = {"bound_speedup": statistics.median(bound), "fraction_of_bound": measured / statistics.median(bound)}
    return {
        "label": entry.label,
        "stock_class": info.get("stock_class"),
        "plan": config.token_reduction,
        "attention_reuse": config.attention_reuse,
        "mode": mode,
        "tokens_per_layer": [list(counts) for counts in report.token_counts],
        "gflops": report.gflops,
        "stock_gflops": report.stock_gflops,
        "ideal_speedup": report.ideal_speedup,
        "measured_speedup": measured,
        "fraction_of_ideal": measured / report.ideal_speedup,
        "spread": [min(ratios), max(ratios)],
        **noise_of(ratios),
        "load_before": info.get("load_before"),
        "others_load": getattr(ratios, "others_load", None),
        "round_speedups": list(ratios),
        "best_of_rounds_speedup": getattr(ratios, "best", None),
        "device": info["device"],
        "dtype": str(settings.dtype).removeprefix("torch."),
        "batch_size": 1 if mode == "latency" else settings.batch_size,
        "rounds": len(ratios),
        "compile": settings.compile,
        "image_size": list(report.image_size),
        "runtime": settings.runtime,
        **extra,
    }


def check_token_counts(models: dict[str, torch.nn.Module], plans, settings: BenchmarkSettings) -> None:
    """Runs each plan model once and checks its token counts are the ones its FLOPs are counted from."""
    for entry, config in plans:
        pixels, _ = _input(settings, config, 1)
        with torch.inference_mode():
            counts = models[entry.label](pixel_values=pixels, **_size_options(settings.image_size is not None))
            counts = counts.token_counts
        expected = count_flops(config, image_size=settings.image_size).token_counts
        if [tuple(c) for c in counts] != [tuple(c) for c in expected]:
            raise RuntimeError(
                f"{entry.label}: the model ran {list(counts)} tokens per layer, its plan says {expected}."
            )


def run_benchmark(
    base: Any, plans: Any = None, settings: BenchmarkSettings | None = None, state_dict: dict | None = None
) -> list[dict[str, Any]]:
    """Measures every plan against the stock class of its family (`ViTForImageClassification` for TokenPruneViT)
    with the same weights.

    Args:
        base: the TokenPruneViT config without plans (e.g. from `load_base` or `families.build_config`).
        plans: a list of plan entries (see `parse_plan_entry`); None for `default_plans`.
        settings: how to measure; `BenchmarkSettings()` if None.
        state_dict: the weights (stock ViT or TokenPruneViT names); random weights if None.

    Returns:
        One row per plan and mode, with ratios against stock (never raw times) next to the ideal ratio.
    """
    settings = settings or BenchmarkSettings()
    settings.check()
    load_before = machine_load()  # before this process adds its own load
    row = family_of(base.model_type, "benchmark")
    if "training" in settings.modes and not row.can("training"):
        raise ValueError(
            f"modes include 'training', and {row.title} models have no training benchmark: {row.gaps['training']}; "
            "use --modes inference,latency."
        )
    parsed = plans if _is_parsed(plans) else parse_plans(plans, base)
    stock, models = build_models(base, parsed, state_dict, settings.seed, settings.device, settings.dtype)
    check_token_counts(models, parsed, settings)
    if settings.compile:
        allow_recompiles(len(models) + 1)
    info = {**machine_info(settings.device), "load_before": load_before, "stock_class": type(stock).__name__}
    ratios: dict[str, dict[str, list[float]]] = {}
    if settings.runtime == "onnxruntime":
        ratios = _measure_exported(stock, models, parsed, base, settings, row)
        info["device"] = f"{info['device']}, onnxruntime {_onnxruntime_version()}"
    else:
        if "inference" in settings.modes:
            ratios["inference"] = measure_forward(
                stock, models, base, settings, settings.batch_size, settings.rounds, "inference"
            )
        if "latency" in settings.modes:
            rounds = settings.latency_rounds or 3 * settings.rounds
            ratios["latency"] = measure_forward(stock, models, base, settings, 1, rounds, "latency (batch 1)")
        if "training" in settings.modes:
            ratios["training"] = measure_training(stock, models, base, settings)
    return [
        _row(
            entry, config, mode, ratios[mode][entry.label], settings, info, ratios[mode].get(entry.label + " (bound)")
        )
        for entry, config in parsed
        for mode in MODES
        if mode in ratios
    ]


def _measure_exported(stock, models, parsed, base, settings, row) -> dict:
    """The onnxruntime measurement (`onnx_runtime.measure_onnxruntime`) of the modes asked for."""
    from .onnx_runtime import measure_onnxruntime

    row.require("export")
    counts = {
        entry.label: count_flops(config, image_size=settings.image_size).token_counts for entry, config in parsed
    }
    batches = {"inference": settings.batch_size, "latency": 1}
    wanted = {mode: batch for mode, batch in batches.items() if mode in settings.modes}
    return measure_onnxruntime(stock.to(torch.float32), models, counts, base, settings, wanted)


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _is_parsed(plans: Any) -> bool:
    return isinstance(plans, list) and bool(plans) and all(isinstance(p, tuple) for p in plans)
