"""Throughput and latency of token-reduction plans, measured against the stock HF class of the model's family
(`ViTForImageClassification` for ViT; `architectures.FAMILY_BENCHMARK_CLASSES` for the others).

Every candidate runs in the same process, on the same batch, with the same weights, interleaved round by round
(the order rotates each round so that drift such as thermal throttling or a neighbour's load hits all of them
alike). Results are ratios against the stock model, next to the ideal ratio from `hf_tokenprune.flops`.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._lazy import LazyModule
from .benchmark_report import (
    MODES,
    compact_counts,
    describe_setup,
    format_table,
    machine_load,
    noise_of,
    noise_warnings,
    write_results,
)
from .plans import PlanEntry, default_plans, parse_plans

__all__ = [
    "BenchmarkSettings",
    "TimingStats",
    "compact_counts",
    "add_cli",
    "default_plans",
    "format_table",
    "machine_info",
    "measure_paired",
    "parse_device",
    "parse_plans",
    "run_benchmark",
    "synchronize",
    "write_results",
]

torch = LazyModule("torch")  # imported when first used: the CLI's help and bad-input errors need no torch


@dataclass
class TimingStats:
    """Wall-clock times of one candidate over the measured rounds."""

    times: list[float] = field(default_factory=list)  # seconds, one per round

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> tuple[float, float]:
        """(min, max) of the times, in seconds."""
        return min(self.times), max(self.times)


def synchronize(device: torch.device) -> None:
    """Waits for queued work on ``device``; a no-op on the CPU (no device name appears here)."""
    if device.type == "cpu":
        return
    module = getattr(torch, device.type, None)
    if module is not None and hasattr(module, "synchronize"):
        module.synchronize(device)
    else:
        torch.accelerator.synchronize(device)


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
        name -> `TimingStats` with one time per round.
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
    try:
        with torch.inference_mode():
            for name in names:
                for _ in range(warmup):
                    _timed(candidates[name], pixel_values)
                    bar.update()
            for round_index in range(rounds):
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    stats[name].times.append(_timed(candidates[name], pixel_values))
                    bar.update()
    finally:
        if collecting:
            gc.enable()
        bar.close()
    return stats


# ----------------------------------------------------------------------------------------------------------------
# Devices, dtypes and the machine
# ----------------------------------------------------------------------------------------------------------------

DEVICES = ("auto", "cpu", "cuda", "npu")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # --dtype -> the torch dtype's name


def _import_torch_npu() -> bool:
    try:
        import torch_npu  # noqa: F401  (registers the Ascend backend with torch)
    except ImportError:
        return False
    return True


def parse_device(name: str) -> torch.device:
    """The torch device for the ``--device`` option; ``auto`` prefers an available accelerator."""
    if name not in DEVICES:
        raise ValueError(f"--device {name!r} is not supported; allowed: {list(DEVICES)}.")
    if name in ("auto", "npu"):
        has_npu = _import_torch_npu()
        if name == "npu" and not has_npu:
            raise ValueError("--device npu needs torch_npu (Ascend), which is not installed.")
    if name == "auto":
        accelerator = torch.accelerator.current_accelerator(check_available=True)
        return accelerator if accelerator is not None else torch.device("cpu")
    if name != "cpu":
        module = getattr(torch, name, None)
        if module is None or not module.is_available():
            raise ValueError(f"--device {name} was asked for, but no {name} device is available here.")
    return torch.device(name)


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r} is not supported; allowed: {list(DTYPES)}.")
    return getattr(torch, DTYPES[name])


def cpu_name() -> str:
    """The CPU model, e.g. "AMD EPYC" (from /proc/cpuinfo on Linux, else `platform`)."""
    import platform

    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    """A readable name: the CPU model and its core count, or the accelerator's name."""
    import os

    if device.type == "cpu":
        return f"{cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    module = getattr(torch, device.type, None)
    if module is not None and hasattr(module, "get_device_name"):
        return str(module.get_device_name(device))
    return str(device)


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """The machine a measurement ran on: CPU model, cores, device name and library versions."""
    import os
    import platform

    import transformers

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": device_name(device if device is not None else torch.device("cpu")),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


# Families whose stock model has no training loss to pair with (image embeddings, pooled features, and DeiT with
# teacher, which transformers ships for inference only): no training mode.
NO_TRAINING_FAMILIES = ("tokenprune_deit", "tokenprune_clip_vision_model", "tokenprune_siglip_vision_model")


def stock_config(config: Any) -> Any:
    """The stock config of a TokenPrune config's family (`ViTConfig` for TokenPruneViT): every field, no plans."""
    from .architectures import family_classes

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
    return family_classes(config)[0](**data)


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
    from .architectures import family_classes

    dtype = dtype or torch.float32
    _, stock_class, plan_class = family_classes(base)
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
    pairs with the family's stock class, `family_classes`), or a built-in architecture's config and None.

    A checkpoint's own plans are dropped: the benchmark applies its list of plans to the same weights.
    """
    from .architectures import build_config, family_classes

    base = build_config(model, arch)
    if model is None:
        return base, None
    model_class = family_classes(base)[2]
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

    def check(self) -> None:
        unknown = sorted(set(self.modes) - set(MODES))
        if unknown or not self.modes:
            raise ValueError(f"modes = {list(self.modes)} must be a non-empty subset of {list(MODES)}.")
        for name in ("batch_size", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be at least 1.")
        if self.warmup < 0:
            raise ValueError(f"warmup = {self.warmup} must be at least 0.")


class Speedups(list):
    """Per-round speed-ups (the stock model's time over the plan's, in the same round), with ``best``: the stock
    model's fastest round over the plan's fastest, which interference from other processes can only lower."""

    def __init__(self, stock: TimingStats, plan: TimingStats):
        super().__init__(s / p for s, p in zip(stock.times, plan.times))
        self.best = min(stock.times) / min(plan.times)


def _ratios(stock: TimingStats, plan: TimingStats) -> Speedups:
    return Speedups(stock, plan)


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
    pixels = torch.randn(batch_size, config.num_channels, size, size, generator=generator)
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
    return {label: _ratios(stats["stock"], stats[label]) for label in models}


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
        results[label] = _ratios(stats["stock"], stats[label])
        del pair, candidates
    return results


def _row(entry: PlanEntry, config: Any, mode: str, ratios: list[float], settings, info: dict) -> dict[str, Any]:
    from .flops import count_flops

    report = count_flops(config, image_size=settings.image_size)
    measured = statistics.median(ratios)
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
        "round_speedups": list(ratios),
        "best_of_rounds_speedup": getattr(ratios, "best", None),
        "device": info["device"],
        "dtype": str(settings.dtype).removeprefix("torch."),
        "batch_size": 1 if mode == "latency" else settings.batch_size,
        "rounds": len(ratios),
        "compile": settings.compile,
        "image_size": list(report.image_size),
    }


def check_token_counts(models: dict[str, torch.nn.Module], plans, settings: BenchmarkSettings) -> None:
    """Runs each plan model once and checks its token counts are the ones its FLOPs are counted from."""
    from .flops import count_flops

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
        base: the TokenPruneViT config without plans (e.g. from `load_base` or `architectures.build_config`).
        plans: a list of plan entries (see `parse_plan_entry`); None for `default_plans`.
        settings: how to measure; `BenchmarkSettings()` if None.
        state_dict: the weights (stock ViT or TokenPruneViT names); random weights if None.

    Returns:
        One row per plan and mode, with ratios against stock (never raw times) next to the ideal ratio.
    """
    settings = settings or BenchmarkSettings()
    settings.check()
    load_before = machine_load()  # before this process adds its own load
    if "training" in settings.modes and base.model_type in NO_TRAINING_FAMILIES:
        raise ValueError(
            f"modes include 'training', and the stock model of {base.model_type!r} has no training loss to compare "
            "with; use --modes inference,latency."
        )
    parsed = plans if _is_parsed(plans) else parse_plans(plans, base)
    stock, models = build_models(base, parsed, state_dict, settings.seed, settings.device, settings.dtype)
    check_token_counts(models, parsed, settings)
    if settings.compile:
        allow_recompiles(len(models) + 1)
    info = {**machine_info(settings.device), "load_before": load_before, "stock_class": type(stock).__name__}
    ratios: dict[str, dict[str, list[float]]] = {}
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
        _row(entry, config, mode, ratios[mode][entry.label], settings, info)
        for entry, config in parsed
        for mode in MODES
        if mode in ratios
    ]


def _is_parsed(plans: Any) -> bool:
    return isinstance(plans, list) and bool(plans) and all(isinstance(p, tuple) for p in plans)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def checkpoint_plans(model: str) -> list | None:
    """No reduction and the checkpoint's own plan, or None (the default plans) for a checkpoint without a plan."""
    from .architectures import build_config

    config = build_config(model, "")
    if not config.token_reduction and not config.attention_reuse:
        return None
    return [None, {"token_reduction": config.token_reduction, "attention_reuse": config.attention_reuse}]


def _plans_from_args(args: Any) -> list | None:
    from .cli import parse_json_option

    plans = parse_json_option(args.plans, "--plans")
    single = [
        parse_json_option(args.token_reduction, "--token-reduction"),
        parse_json_option(args.attention_reuse, "--attention-reuse"),
    ]
    if any(plan is not None for plan in single):
        wrapped = {"token_reduction": single[0], "attention_reuse": single[1]}
        plans = (plans if plans is not None else [None]) + [wrapped]
    if plans is None and args.model is not None:
        plans = checkpoint_plans(args.model)  # what the card of that checkpoint looks for
    return plans


def default_modes(model_type: str) -> str:
    """Every mode, less training for a family whose stock model has no training loss (`NO_TRAINING_FAMILIES`)."""
    return ",".join(mode for mode in MODES if mode != "training" or model_type not in NO_TRAINING_FAMILIES)


def settings_from_args(args: Any, model_type: str = "tokenprune_vit") -> BenchmarkSettings:
    """The settings of the command line; without ``--modes``, the family's `default_modes`."""
    given = args.modes if args.modes is not None else default_modes(model_type)
    modes = tuple(mode.strip() for mode in given.split(",") if mode.strip())
    settings = BenchmarkSettings(
        device=parse_device(args.device),
        dtype=parse_dtype(args.dtype),
        batch_size=args.batch_size,
        rounds=args.rounds,
        latency_rounds=args.latency_rounds,
        warmup=args.warmup,
        modes=modes,
        compile=args.compile,
        image_size=args.image_size,
        seed=args.seed,
        progress=not args.no_progress and sys.stderr.isatty(),  # no bars in a log file
    )
    settings.check()
    return settings


def _benchmark_command(args: Any) -> int:
    from .paths import check_model_source

    check_model_source(args.model)
    settings_from_args(args)  # bad settings are refused before any loading
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads} must be at least 1.")
        torch.set_num_threads(args.threads)
    base, state_dict = load_base(args.model, args.arch)
    settings = settings_from_args(args, base.model_type)
    plans = parse_plans(_plans_from_args(args), base, keep_rate=args.keep_rate)  # every error before timing
    print(f"benchmarking {len(plans)} plans on {device_name(settings.device)} ({args.model or args.arch})")
    rows = run_benchmark(base, plans, settings, state_dict)
    paths = write_results(rows, args.output_dir, {"model": args.model or args.arch, "command": args.command_line})
    print(format_table(rows))
    print(describe_setup(rows))
    for warning in noise_warnings(rows):
        print(f"warning: {warning}")
    print(f"wrote {paths['json']}, {paths['md']} and {paths['png']}")
    return 0


def add_cli(commands: Any) -> None:
    """Adds ``hf-tokenprune benchmark`` to the CLI's subcommands."""
    from .cli import add_model_arguments

    parser = commands.add_parser(
        "benchmark",
        help="throughput, batch-1 latency and training speed of plans against the stock model (same weights)",
        description="Measures plans against the stock HF class of the model's family (ViTForImageClassification, "
        "DeiTForImageClassificationWithTeacher, Dinov2(WithRegisters)ForImageClassification, "
        "CLIPVisionModelWithProjection, SiglipVisionModel) with the same weights, paired and interleaved in one "
        "process, and compares with the ideal (FLOPs) speed-up. Default: ViT-B/16 with random weights and one plan "
        "per registered method plus no reduction.",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--plans",
        default=None,
        help='JSON list of plans, each null, {"method": ...} or {"token_reduction": ..., "attention_reuse": ..., '
        '"label": ...} (default: no reduction and the plan saved in --model; without --model, or for a '
        "checkpoint with no plan, no reduction and every registered method)",
    )
    parser.add_argument("--device", default="auto", choices=DEVICES, help="default: an available accelerator")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--batch-size", type=int, default=16, help="batch of the inference and training modes")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (each model runs once per round)")
    parser.add_argument("--latency-rounds", type=int, default=None, help="rounds at batch 1 (default 3 x rounds)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per model first")
    parser.add_argument(
        "--modes",
        default=None,
        help=f"comma-separated subset of {','.join(MODES)} (default: all; no training for DeiT, CLIP and SigLIP, "
        "whose stock classes have no training loss)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="benchmark-results", help="where the JSON, table and PNG go")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_benchmark_command)
