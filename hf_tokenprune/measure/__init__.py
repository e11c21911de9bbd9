"""Measuring plans and choosing one.

- `devices`: devices and dtypes as the command line names them, the machine's names and load;
- `timing`: paired, interleaved timing of candidates on the same input (`measure_paired`, `Speedups`);
- `benchmark`: throughput, batch-1 latency and training steps of plans against the stock class of the model's
  family, with the same weights (`run_benchmark`, `BenchmarkSettings`);
- `report`: the benchmark's table, its noise warnings and its files;
- `tune` and `heldout`: the plan tuner (accuracy on held-out images, measured speed-up, the Pareto front).
"""

from .._lazy import lazy_names

# Public name -> the module that defines it (loaded on first use).
_NAMES = {
    "BenchmarkSettings": "benchmark",
    "Speedups": "timing",
    "TimingStats": "timing",
    "build_models": "benchmark",
    "format_table": "report",
    "load_base": "benchmark",
    "machine_info": "devices",
    "machine_load": "devices",
    "measure_paired": "timing",
    "noise_warnings": "report",
    "parse_device": "devices",
    "parse_dtype": "devices",
    "run_benchmark": "benchmark",
    "stock_config": "benchmark",
    "synchronize": "devices",
    "write_results": "report",
}
__getattr__, __dir__ = lazy_names(__name__, _NAMES)
__all__ = sorted(_NAMES)
