"""Reporting `hf_tokenprune.measure.benchmark` results: how noisy they are, the table, the setup line and the files
(``benchmark.json``, ``benchmark.md``, ``benchmark.png``)."""

import statistics
from typing import Any

from .devices import machine_info, provenance

MODES = ("inference", "latency", "training")  # what the benchmark measures, in the order it reports them
NOISY_SPREAD = 0.3  # per-round ratios spread over more than this fraction of their median: a noisy row
MIN_ROUNDS = 3  # fewer rounds cannot show whether a row is noisy
BUSY_LOAD = 0.5  # a 1-minute load average per core above this before the run: the machine was busy
BUSY_OTHERS = 0.25  # other processes kept more than this fraction of the cores busy while the rounds ran
SLOWER_THAN_STOCK = 1.05  # an ideal speed-up above this, measured below 1x: something else ran, or the plan is off


def noise_of(ratios: list[float]) -> dict[str, Any]:
    """How far a row's per-round ratios disagree: ``relative_spread`` ((max - min) / median) and ``noisy`` when it
    exceeds `NOISY_SPREAD` or there are fewer than `MIN_ROUNDS` rounds."""
    relative = (max(ratios) - min(ratios)) / statistics.median(ratios)
    return {"relative_spread": relative, "noisy": relative > NOISY_SPREAD or len(ratios) < MIN_ROUNDS}


def unreliable_reasons(row: dict[str, Any]) -> list[str]:
    """Why a measured speed-up should not be read as the plan's speed, from what the row recorded (``noisy`` and
    ``spread``, ``others_load``, ``load_before``, ``measured_speedup`` against ``ideal_speedup``); empty when nothing
    is known against it. The benchmark, the tuner, the main job and the model card all judge by these rules."""

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    reasons = []
    spread = row.get("spread")
    if row.get("noisy") is True:
        known = isinstance(spread, (list, tuple)) and len(spread) == 2 and all(number(v) for v in spread)
        rounds = f" from {spread[0]:.2f}x to {spread[1]:.2f}x" if known else ""
        reasons.append(f"its timed rounds spread{rounds} (more than {NOISY_SPREAD:.0%} of the median, or too few)")
    others = row.get("others_load")
    if number(others) and others > BUSY_OTHERS:
        reasons.append(f"other processes kept {others:.0%} of the CPU busy while it was timed")
    load = row.get("load_before")
    if number(load) and load > BUSY_LOAD and not number(others):  # the load during the rounds says more
        reasons.append(f"the machine was busy before the run (load {load:.2f} per core)")
    measured, ideal = row.get("measured_speedup"), row.get("ideal_speedup")
    if number(measured) and number(ideal) and ideal > SLOWER_THAN_STOCK and measured < 1.0:
        reasons.append(f"it measured slower than stock ({measured:.2f}x) although its FLOPs are {ideal:.2f}x lower")
    return reasons


def noise_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """What makes these numbers shaky (noisy rows, other processes, a busy machine, plans slower than stock),
    each with what to do about it."""
    warnings = []
    noisy = [row for row in rows if row.get("noisy")]
    if noisy:
        worst = max(noisy, key=lambda row: row["relative_spread"])
        warnings.append(
            f"{len(noisy)} of {len(rows)} rows are noisy (per-round ratios spread over more than "
            f"{NOISY_SPREAD:.0%} of their median, or fewer than {MIN_ROUNDS} rounds; worst: {worst['label']} "
            f"{worst['mode']}, {worst['spread'][0]:.2f}-{worst['spread'][1]:.2f}x). Measure again with more --rounds "
            "(e.g. 15), on a quieter machine, or with --threads set below the number of free cores."
        )
    others = [row["others_load"] for row in rows if row.get("others_load") is not None]
    if others and max(others) > BUSY_OTHERS:
        warnings.append(
            f"other processes kept up to {max(others):.0%} of the CPU busy while the rounds ran: the speed-ups "
            "are unreliable; measure again when the machine is idle."
        )
    load = next((row.get("load_before") for row in rows if row.get("load_before") is not None), None)
    if load is not None and load > BUSY_LOAD:
        warnings.append(
            f"the machine was busy before the run (load {load:.2f} per core): other processes share it, so "
            "speed-ups may be off; compare rows of this run only, or measure again when it is idle."
        )
    slower = [row for row in rows if any("slower than stock" in reason for reason in unreliable_reasons(row))]
    if slower:
        labels = ", ".join(sorted({f"{row['label']} ({row['mode']})" for row in slower}))
        warnings.append(
            f"{labels} measured slower than stock although the FLOPs are lower: on a busy machine that is noise; on "
            "an idle one, the model may be too small for the plan's bookkeeping to pay (see the fraction of ideal)."
        )
    return warnings


def compact_counts(counts: list[list[int]]) -> str:
    """MLP tokens per layer, runs written once with a count: ``197x3 138x3 97x3 68x3``."""
    tokens = [mlp for _, mlp in counts]
    runs: list[list[int]] = []
    for value in tokens:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return " ".join(f"{value}x{count}" if count > 1 else str(value) for value, count in runs)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table, one line per plan: tokens, GFLOPs, ideal, and per mode the measured speed-up and the
    fraction of the ideal it reaches."""
    modes = [mode for mode in MODES if any(row["mode"] == mode for row in rows)]
    titles = {"inference": "inference", "latency": "latency (batch 1)", "training": "training step"}
    header = ["plan", "MLP tokens per layer", "GFLOPs", "ideal"] + [f"{titles[m]} (of ideal)" for m in modes]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for label in dict.fromkeys(row["label"] for row in rows):
        by_mode = {row["mode"]: row for row in rows if row["label"] == label}
        first = next(iter(by_mode.values()))
        cells = [label, compact_counts(first["tokens_per_layer"]), f"{first['gflops']:.4g}"]
        cells.append(f"{first['ideal_speedup']:.2f}x")
        for mode in modes:
            row = by_mode.get(mode)
            cells.append("" if row is None else _cell(row))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(row: dict[str, Any]) -> str:
    cell = f"{row['measured_speedup']:.2f}x ({row['fraction_of_ideal']:.2f})"
    if row.get("bound_speedup") is not None:  # onnxruntime runs: the token-count bound and the share of it reached
        cell += f", bound {row['bound_speedup']:.2f}x ({row['fraction_of_bound']:.2f} of it)"
    return cell + (f" noisy {row['spread'][0]:.2f}-{row['spread'][1]:.2f}" if row.get("noisy") else "")


def describe_setup(rows: list[dict[str, Any]]) -> str:
    """One line that says how the table was measured."""
    row = rows[0]
    batch = next((r["batch_size"] for r in rows if r["mode"] != "latency"), row["batch_size"])
    rounds = ", ".join(f"{mode} {count}" for mode, count in {r["mode"]: r["rounds"] for r in rows}.items())
    against = f"against stock {row['stock_class']}; " if row.get("stock_class") else ""  # older rows lack it
    if row.get("runtime") == "onnxruntime":
        against = f"exported to ONNX, against the exported stock {row['stock_class']}; "
    others = [r["others_load"] for r in rows if r.get("others_load") is not None]
    load = f"; other processes used at most {max(others):.0%} of the CPU while timing" if others else ""
    return (
        f"{against}device: {row['device']}; dtype {row['dtype']}; batch {batch}; rounds: {rounds}; "
        f"image {row['image_size'][0]}; compile {row['compile']}; stock GFLOPs {row['stock_gflops']:.4g}; "
        "speed-ups are medians of paired rounds (stock time / plan time, same process, interleaved); "
        f"(of ideal) = measured / ideal{load}"
    )


def write_results(rows: list[dict[str, Any]], output_dir: str, extra: dict | None = None) -> dict[str, str]:
    """Writes ``benchmark.json`` (rows, machine and ``extra``), ``benchmark.md`` (the table, how it was measured and
    ``extra["command"]`` when given) and ``benchmark.png``."""
    import json
    import os

    os.makedirs(output_dir, exist_ok=True)
    paths = {name: os.path.join(output_dir, f"benchmark.{name}") for name in ("json", "md", "png")}
    warnings = noise_warnings(rows)
    with open(paths["json"], "w") as file:
        origin = provenance((extra or {}).get("command"))
        summary = {**origin, "machine": machine_info_from_rows(rows), **(extra or {}), "warnings": warnings}
        json.dump({**summary, "rows": rows}, file, indent=2)
    with open(paths["md"], "w") as file:
        command = f"\n\ncommand: `{extra['command']}`" if extra and extra.get("command") else ""
        notes = "".join(f"\n\nWarning: {warning}" for warning in warnings)
        file.write(format_table(rows) + "\n\n" + describe_setup(rows) + command + notes + "\n")
    from ..visualization import plot_speedups

    row = rows[0]
    batch = next((r["batch_size"] for r in rows if r["mode"] != "latency"), 1)
    model = (extra or {}).get("model") or "model"
    title = (f"{model}, {row['image_size'][0]} px, batch {batch} (latency: 1), {row['dtype']}, {row['device']}, "
             f"{origin['date']}")  # fmt: skip
    marked = [{**row, "unreliable": bool(unreliable_reasons(row))} for row in rows]
    plot_speedups(marked, paths["png"], title=title)
    return paths


def machine_info_from_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    info = machine_info()
    info["device"] = rows[0]["device"] if rows else info["device"]
    info["load_before"] = rows[0].get("load_before") if rows else None  # 1-minute load average per core
    return info
