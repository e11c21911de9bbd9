"""Renders every table of measured numbers in README.md and docs/ from the saved result files, so no figure in the
docs is typed by hand.

A page marks each rendered table with a pair of comments; the first names the renderer and the files it reads
(paths from the repository root):

    <!-- rendered: benchmark docs/results/speed-vit-b16/benchmark.json -->
    ...the table, written by this script...
    <!-- /rendered -->

Under each table the script writes where the numbers come from: the command, the commit and the date of the saved
result, the machine, and how busy other processes kept it while timing. Tables generated from the code itself (the
support matrix) name the code instead.

    python scripts/render_docs.py           # rewrites the pages
    python scripts/render_docs.py --check   # exit status 1 and the pages that differ (tests/test_docs.py runs it)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "CONTRIBUTING.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(
    r"(<!-- rendered: (?P<name>[\w-]+)(?P<args>(?: [^ >]+)*) -->\n)(?P<body>.*?)(<!-- /rendered -->)", re.S
)
RENDERERS: dict[str, Callable[..., str]] = {}


def renderer(function: Callable[..., str]) -> Callable[..., str]:
    RENDERERS[function.__name__.replace("_", "-")] = function
    return function


def load(path: str) -> dict:
    file = ROOT / path
    if not file.is_file():
        raise SystemExit(f"{path}: no such result file (a rendered table names it)")
    return json.loads(file.read_text())


def source(result: dict, path: str) -> str:
    """The line under a table: command, commit, date, machine and the load of other processes while timing."""
    missing = [key for key in ("command", "commit", "date") if not result.get(key)]
    if missing:
        raise SystemExit(f"{path} has no {', '.join(missing)}: measure it again with the current tools")
    machine = result.get("machine") or {}
    where = f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores" if machine else "?"
    loads = [row.get("others_load") for row in rows_of(result) if isinstance(row.get("others_load"), (int, float))]
    load = f"; other processes used at most {max(loads):.0%} of the CPU while timing" if loads else ""
    return (
        f"<sub>`{result['command']}` at `{result['commit']}`, {result['date']}; {where}; torch "
        f"{machine.get('torch', '?')}{load}. Saved: [{Path(path).name}]({relative(path)}).</sub>"
    )


def with_source(lines: list[str], note: str, result: dict, path: str) -> str:
    """A rendered table: its lines, the note under it, and where its numbers come from."""
    return "\n".join(lines) + "\n" + note + "\n" + source(result, path) + "\n"


def rows_of(result: dict) -> list[dict]:
    if isinstance(result.get("rows"), dict):  # rows by name (examples/run_video_classification.py)
        return list(result["rows"].values())
    if isinstance(result.get("rows"), list):
        return result["rows"]
    return [row for part in result.get("results", []) for row in part.get("rows", [])]


CURRENT_PAGE = [""]  # the page being rendered: links in a table are relative to it


def relative(path: str) -> str:
    page_folder = (ROOT / CURRENT_PAGE[0]).parent
    return str(Path(*([".."] * len(page_folder.relative_to(ROOT).parts)), path)) if CURRENT_PAGE[0] else path


def x(value: float) -> str:
    return f"{value:.2f}x"


def measured(row: dict) -> str:
    """The measured speed-up, the fraction of the ideal in brackets, and a mark when it is unreliable."""
    from hf_tokenprune.measure.report import unreliable_reasons

    text = f"{x(row['measured_speedup'])} ({row['measured_speedup'] / row['ideal_speedup']:.2f})"
    return text + (" †" if unreliable_reasons(row) else "")


def unreliable_note(rows: list[dict]) -> str:
    from hf_tokenprune.measure.report import BUSY_OTHERS, unreliable_reasons

    marked = [(row.get("label") or row.get("plan"), row.get("mode"), unreliable_reasons(row)) for row in rows]
    marked = [(label, mode, reasons) for label, mode, reasons in marked if reasons]
    if not marked:
        return ""
    if len(marked) <= 3:
        lines = [
            f"- † {label}{f' ({mode})' if mode else ''}: {'; '.join(reasons)}." for label, mode, reasons in marked
        ]
        return "\n" + "\n".join(lines) + "\n"
    # Many marks: one line per kind of reason, its figures counted (each figure's numbers are in the saved result).
    kinds: dict[str, int] = {}
    for _, _, reasons in marked:
        for reason in reasons:
            kind = re.sub(r" from [\d.]+x to [\d.]+x| \([\d.]+x\)", "", reason).removeprefix("its ")
            kind = re.sub(r"kept \d+% of", f"kept more than {BUSY_OTHERS:.0%} of", kind)
            kind = re.sub(r"(load|are) [\d.]+x? ", r"\1 ", kind)
            kinds[kind] = kinds.get(kind, 0) + 1
    lines = [f"- † {count} of {len(rows)} figures: {kind} (each figure's rounds are in the saved result)."
             for kind, count in kinds.items()]  # fmt: skip
    return "\n" + "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Tables of measured numbers
# ----------------------------------------------------------------------------------------------------------------


@renderer
def benchmark(*paths: str) -> str:
    """`hf-tokenprune benchmark` results: one row per plan (per model when several files), one column per mode."""
    from hf_tokenprune.measure.report import compact_counts

    results = [(path, load(path)) for path in paths]
    several = len(results) > 1
    modes = [
        m
        for m in ("inference", "latency", "training")
        if any(r["mode"] == m for _, res in results for r in res["rows"])
    ]
    titles = {"inference": "inference", "latency": "latency, batch 1", "training": "training step"}
    header = (["model"] if several else []) + ["plan", "tokens into the MLP, per layer", "GFLOPs", "ideal"]
    lines = ["| " + " | ".join(header + [titles[m] for m in modes]) + " |"]
    lines.append("|" + "---|" * (len(header) - 2) + "---:|---:|" + "---:|" * len(modes))
    for _, result in results:
        rows = result["rows"]
        batch = next((r["batch_size"] for r in rows if r["mode"] != "latency"), 1)
        model = f"{result.get('model', '?')}, batch {batch}"
        for label in dict.fromkeys(r["label"] for r in rows):
            mine = {r["mode"]: r for r in rows if r["label"] == label}
            first = next(iter(mine.values()))
            cells = ([model] if several else []) + [
                label,
                compact_counts(first["tokens_per_layer"]),
                f"{first['gflops']:.4g}",
                x(first["ideal_speedup"]),
            ]
            cells += [measured(mine[m]) if m in mine else "–" for m in modes]
            lines.append("| " + " | ".join(cells) + " |")
    setup = []
    for _, result in results:
        row = result["rows"][0]
        rounds = ", ".join(f"{m} {n}" for m, n in {r["mode"]: r["rounds"] for r in result["rows"]}.items())
        batch = next((r["batch_size"] for r in result["rows"] if r["mode"] != "latency"), 1)
        setup.append(
            f"{result.get('model', '?')}: {row['device']}, {row['dtype']}, batch {batch}, image "
            f"{row['image_size'][0]} px, compile {row['compile']}, rounds {rounds}, against stock "
            f"`{row.get('stock_class') or '?'}`"
        )
    notes = (
        "\nEach cell: the measured speed-up (median of the per-round ratios of paired, interleaved rounds against the "
        "stock class with the same weights) and, in brackets, the fraction of the ideal (the FLOPs ratio) it reaches. "
        + "; ".join(setup)
        + ".\n"
    )
    all_rows = [r for _, res in results for r in res["rows"]]
    return (
        "\n".join(lines)
        + "\n"
        + notes
        + unreliable_note(all_rows)
        + "\n"
        + "\n\n".join(source(result, path) for path, result in results)
        + "\n"
    )


@renderer
def siglip2(path: str) -> str:
    result = load(path)
    lines = ["| plan | ideal | measured (min–max) |", "|---|---:|---:|"]
    for row in result["rows"]:
        low, high = row["spread"]
        lines.append(
            f"| {row['plan']} | {x(row['ideal_speedup'])} | {x(row['measured_speedup'])} ({low:.2f}–{high:.2f}) |"
        )
    setup = result["setup"]
    grids = ", ".join(f"{r}×{c}" for r, c in setup["grids"])
    note = (
        f"\nOne batch of images of {grids} patches padded to {setup['model']['num_patches']} slots, random weights, "
        f"{setup['threads']} thread(s), {setup['rounds']} paired rounds against stock `Siglip2VisionModel`.\n"
    )
    return with_source(lines, note + unreliable_note(result["rows"]), result, path)


@renderer
def tune(path: str) -> str:
    result = load(path)
    chosen = (result.get("chosen") or {}).get("label")
    stock = result["stock_accuracy"]
    lines = [
        "| plan | accuracy | Δ vs stock | measured speed-up (min–max) | GFLOPs | ideal | |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    lines.append(f"| stock ViT | {stock:.3f} | | 1.00x | {result['rows'][0]['stock_gflops']:.4g} | 1.00x | |")
    front = sorted((r for r in result["rows"] if r.get("on_front")), key=lambda r: -r["measured_speedup"])
    for row in front:
        low, high = row["spread"]
        mark = "**chosen**" if row["label"] == chosen else ""
        lines.append(
            f"| {row['label']} | {row['accuracy']:.3f} | {row['accuracy'] - stock:+.3f} | "
            f"{x(row['measured_speedup'])} ({low:.2f}–{high:.2f}){' †' if _unreliable(row) else ''} | "
            f"{row['gflops']:.4g} | {x(row['ideal_speedup'])} | {mark} |"
        )
    setup = result["setup"]
    note = (
        f"\nThe Pareto front of {result['evaluated']} candidates (of {result['candidates']}); accuracy on "
        f"{setup['images']} held-out images ({setup['data']}), no training; speed-ups are medians of "
        f"{setup['rounds']} paired rounds (batch {setup['batch_size']}, {setup['device']}). Target: "
        f"{', '.join(f'{k} {v}' for k, v in result['target'].items())}.\n"
    )
    return with_source(lines, note + unreliable_note(front), result, path)


def _unreliable(row: dict) -> bool:
    from hf_tokenprune.measure.report import unreliable_reasons

    return bool(unreliable_reasons(row))


ACCURACY_TOLERANCE = 0.015  # a fine-tuned plan within 1.5 points of the stock model fine-tuned the same way


def accuracy_points(result: dict) -> dict[tuple[str, str], dict[str, dict]]:
    """The accuracy benchmark's rows by (method, operating point), then by setting."""
    points: dict[tuple[str, str], dict[str, dict]] = {}
    for row in result["rows"]:
        points.setdefault((row["method"], row["operating_point"]), {})[row["setting"]] = row
    return points


def accuracy_cells(settings: dict[str, dict]) -> list[str]:
    """zero-shot, fine-tuned (or from scratch), the stock model trained the same way, Δ, digit share."""
    zero = settings.get("zero-shot")
    tuned = settings.get("from scratch") or settings["fine-tuned"]
    zero_text = "untrained" if zero is None or zero.get("untrained") else f"{zero['accuracy']:.3f}"
    reference = tuned["accuracy"] - tuned["accuracy_delta"]
    mark = "" if tuned["accuracy_delta"] >= -ACCURACY_TOLERANCE - 1e-9 else " ✗"
    share = tuned.get("digit_share")
    share = "–" if share is None else f"{share[0]:.2f} ({share[1]:.2f})"
    how = " (from scratch)" if "from scratch" in settings else ""
    return [zero_text, f"{tuned['accuracy']:.3f}{how}", f"{reference:.3f}", f"{tuned['accuracy_delta']:+.3f}{mark}",
            share]  # fmt: skip


def accuracy_setup(result: dict, path: str) -> str:
    recipe, stock = result["recipe"], result["stock_accuracy"]
    speed = result["speed_setup"]
    return (
        f"\nA ViT of {recipe['num_hidden_layers']} layers, width {recipe['hidden_size']}, patch "
        f"{recipe['patch_size']} on {recipe['canvas_size']} px cluttered digits ({result['validation_images']} "
        f"validation images), trained from scratch to {stock['zero-shot']:.3f} through the `Trainer`; each plan "
        f"fine-tuned {recipe['finetune_epochs']} epochs through the `Trainer` with its method's recipe "
        "(`DynamicViTTrainer` for DynamicViT, EViT's `trainer_arguments`, the default schedule otherwise) and "
        "compared with the stock model fine-tuned the same way (Δ; ✗: more than "
        f"{ACCURACY_TOLERANCE * 100:g} points below). Digit patches: the share of digit patches among those the "
        "most reduced layer keeps (random selection keeps the share in brackets). Measured: inference, batch "
        f"{speed['batch_size']}, {speed['dtype']}, {speed['device']}, against stock with the same weights, median "
        f"of {speed['rounds']} paired rounds.\n\n" + source(result, path) + "\n"
    )


@renderer
def accuracy(path: str) -> str:
    """Every operating point of the accuracy benchmark, zero-shot and fine-tuned."""
    result = load(path)
    lines = ["| method | operating point | ideal | measured | zero-shot | fine-tuned | stock, same recipe | Δ | "
             "digit patches kept |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for (method, point), settings in accuracy_points(result).items():
        any_row = next(iter(settings.values()))
        runs = [settings]
        if "from scratch" in settings:  # SkipAt: fine-tuned from the base, and trained from scratch (its protocol)
            runs = [{k: v for k, v in settings.items() if k != "from scratch"}, settings]
        for run in runs:
            lines.append("| " + " | ".join([method, point, x(any_row["ideal_speedup"]), measured(any_row),
                                            *accuracy_cells(run)]) + " |")  # fmt: skip
    return "\n".join(lines) + "\n" + accuracy_setup(result, path)


@renderer
def video_accuracy(path: str) -> str:
    """The video comparison: each method fine-tuned from one model, its accuracy against the unreduced one."""
    from hf_tokenprune import TokenPruneVideoMAEConfig
    from hf_tokenprune.plans import plan_label

    result = load(path)
    lines = ["| method | plan | tokens into the MLP, per layer | accuracy | Δ | ideal | measured |",
             "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    base = result["rows"]["no reduction"]["accuracy"]
    for name, row in result["rows"].items():
        label = plan_label(row["plan"], row["attention_reuse"]) if row["plan"] or row["attention_reuse"] else "–"
        config = TokenPruneVideoMAEConfig(**result["model"], token_reduction=row["plan"])
        counts = " ".join(str(mlp) for _, mlp in config.token_counts())
        speed = {"measured_speedup": row["speedup"], "ideal_speedup": row["ideal_speedup"], **row,
                 "spread": row["speedup_range"]}  # fmt: skip
        change = f"{100 * (row['accuracy'] - base):+.2f}"
        lines.append(f"| {name} | {label} | {counts} | {row['accuracy']:.2%} | {change} | {x(row['ideal_speedup'])} | "
                     f"{measured(speed)} |")  # fmt: skip
    model, data = result["model"], result["data"]
    note = (
        f"\n{data['train']} training and {data['validation']} validation clips of {model['num_frames']} frames of "
        f"{model['image_size']} px; a VideoMAE of {model['num_hidden_layers']} layers, width {model['hidden_size']}, "
        f"tubelets {model['tubelet_size']} x {model['patch_size']} x {model['patch_size']} "
        f"({model['num_frames'] // model['tubelet_size']} x {(model['image_size'] // model['patch_size']) ** 2} = "
        f"{model['num_frames'] // model['tubelet_size'] * (model['image_size'] // model['patch_size']) ** 2} tokens), "
        f"trained from scratch without a plan for {result['epochs']:g} epochs, then each row fine-tuned from those "
        f"weights for {result['finetune_epochs']:g} epochs with the same recipe (the first row without a plan). "
        "Measured: against stock `VideoMAEForVideoClassification` with the same weights, a batch of "
        f"{result['batch_size']} clips, paired and interleaved (median of the rounds; the fraction of the ideal in "
        "brackets)." + unreliable_note([{"label": n, **r, "measured_speedup": r["speedup"],
                                         "spread": r["speedup_range"]} for n, r in result["rows"].items()]) + "\n"
    )  # fmt: skip
    return with_source(lines, note, result, path)


@renderer
def video_example(path: str) -> str:
    """The video example's default run: the plan it trained with, the same weights without it."""
    result = load(path)
    from hf_tokenprune.plans import plan_label

    lines = ["| model | accuracy | GFLOPs per clip | ideal | measured against stock VideoMAE |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, row in result["rows"].items():
        label = plan_label(result["plan"], None) if name == "plan" else "the same weights, plan off"
        speed = "1.00x (the stock cost)"
        if "speedup" in row:
            speed = measured({"measured_speedup": row["speedup"], "ideal_speedup": row["ideal_speedup"], **row,
                              "spread": row["speedup_range"]})  # fmt: skip
        lines.append(
            f"| {label} | {row['accuracy']:.2%} | {row['gflops']:.3f} | {x(row['ideal_speedup'])} | {speed} |"
        )
    data = result["data"]
    note = (
        f"\nTrained from scratch with the plan for {result['epochs']:g} epochs ({data['train']} clips), evaluated on "
        f"{data['validation']} validation clips; measured on a batch of {result['batch_size']} clips, paired and "
        "interleaved (median of the rounds; the fraction of the ideal in brackets).\n"
    )
    return with_source(lines, note, result, path)


@renderer
def accuracy_headline(path: str, target: str = "1.5") -> str:
    """Per method, the operating point nearest ``target`` ideal speed-up, fine-tuned."""
    result = load(path)
    goal = float(target)
    best: dict[str, tuple[str, dict]] = {}
    for (method, point), settings in accuracy_points(result).items():
        ideal = next(iter(settings.values()))["ideal_speedup"]
        if method not in best or abs(ideal - goal) < abs(best[method][1]["fine-tuned"]["ideal_speedup"] - goal):
            best[method] = (point, settings)
    header = (
        f"| method | plan nearest {goal:g}x | ideal | measured | zero-shot | fine-tuned | stock, same recipe | Δ |"
    )
    lines = [header + " digit patches kept |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for method, (point, settings) in sorted(best.items()):
        row = settings["fine-tuned"]
        lines.append("| " + " | ".join([method, point, x(row["ideal_speedup"]), measured(row),
                                        *accuracy_cells(settings)]) + " |")  # fmt: skip
    return "\n".join(lines) + "\n" + accuracy_setup(result, path)


@renderer
def segmentation(path: str) -> str:
    result = load(path)
    rows = result["rows"]
    reference = rows[0]
    lines = [
        "| method | operating point | ideal | measured | mIoU (Δ) | pixel accuracy |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        options = " ".join(f"{k}={v}" for k, v in row["options"].items() if k != "aux_head")
        delta = row["mean_iou"] - reference["mean_iou"]
        lines.append(
            f"| {row['method']} | {options} | {x(row['ideal_speedup'])} | {x(row['speedup'])} | "
            f"{row['mean_iou']:.3f} ({delta:+.3f}) | {row['pixel_accuracy']:.3f} |"
        )
    note = (
        f"\nPretrained {result['pretrain_epochs']:g} + trained {result['epochs']:g} epochs without a plan, then each "
        f"operating point fine-tuned {result['finetune_epochs']:g} epochs with it (the stock row: fine-tuned the same "
        f"way, no plan); measured: batch 64, {result['rounds']} paired rounds, {result['threads']} thread(s).\n"
    )
    return with_source(lines, note, result, path)


@renderer
def segmentation_speed(path: str) -> str:
    result = load(path)
    lines = ["| plan | GFLOPs | ideal | measured (of ideal) |", "|---|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['label']} | {row['gflops']:.1f} | {x(row['ideal_speedup'])} | {measured(row)} |")
    note = (
        "\nViT-B/16 at 512×512 (1,024 tokens), random weights, 150 classes, a linear decoder; against stock "
        f"`ViTModel` with the same weights and decoder; batch {result['batch_size']}, {result['rounds']} paired "
        f"rounds, {result['threads']} thread(s).\n"
    )
    return with_source(lines, note + unreliable_note(result["rows"]), result, path)


@renderer
def onnxruntime(path: str) -> str:
    """`hf-tokenprune benchmark --runtime onnxruntime`: per plan and batch, the measured speed-up of the exported
    plan against the exported stock model, its token-count bound, and the share of each it reaches."""
    result = load(path)
    rows = result["rows"]
    batch = next((r["batch_size"] for r in rows if r["mode"] != "latency"), 1)
    lines = [
        f"| plan | ideal | batch {batch}: measured (of ideal) | bound (of ideal) | measured of bound | "
        "batch 1: measured (of ideal) | bound (of ideal) | measured of bound |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = {r["mode"]: r for r in rows if r["label"] == label}
        cells = [label, x(next(iter(mine.values()))["ideal_speedup"])]
        for mode in ("inference", "latency"):
            row = mine.get(mode)
            if row is None or row.get("bound_speedup") is None:
                cells += [measured(row) if row else "–", "–", "–"]
                continue
            bound = row["bound_speedup"]
            cells += [
                measured(row),
                f"{x(bound)} ({bound / row['ideal_speedup']:.2f})",
                f"{row['fraction_of_bound']:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0]
    rounds = ", ".join(f"{m} {n}" for m, n in {r["mode"]: r["rounds"] for r in rows}.items())
    note = (
        f"\nViT-B/16 at {first['image_size'][0]} px, random weights, {first['dtype']}, exported with "
        "`torch.onnx.export(dynamo=True)` (the plans checked against PyTorch) and run by onnxruntime's CPU provider "
        f"with every graph optimisation, on {first['device']}; rounds: {rounds}. Measured: the median of the "
        "per-round ratios of paired, interleaved runs against the exported stock "
        f"`{first.get('stock_class')}`; bound: the stock layers at the plan's token counts, exported the same way.\n"
    )
    return "\n".join(lines) + "\n" + note + unreliable_note(rows) + "\n" + source(result, path) + "\n"


@renderer
def latency_bound(path: str) -> str:
    result = load(path)
    lines = [
        "| threads | compile | plan | ideal | bound (of ideal) | measured (of ideal) | measured of bound |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for part in result["results"]:
        for row in part["rows"]:
            lines.append(
                f"| {part['threads']} | {'yes' if part['compile'] else 'no'} | {row['plan']} | {x(row['ideal'])} | "
                f"{x(row['bound'])} ({row['bound_of_ideal']:.2f}) | {x(row['measured'])} "
                f"({row['measured_of_ideal']:.2f}) | {row['measured_of_bound']:.2f} |"
            )
    return "\n".join(lines) + "\n\n" + result["setup"] + "\n\n" + source(result, path) + "\n"


@renderer
def main_job(path: str) -> str:
    result = load(path)
    lines = [
        "| model | accuracy | agrees with stock | GFLOPs | speed-up (min–max) | ideal |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["comparison"]:
        low, high = row["speedup_range"]
        mark = " †" if row.get("unreliable") else ""
        lines.append(
            f"| {row['model']} | {row['accuracy']:.2%} | {row['agreement']:.1%} | {row['gflops']:.4f} | "
            f"{x(row['speedup'])} ({low:.2f}–{high:.2f}){mark} | {x(row['ideal_speedup'])} |"
        )
    setup = result["speed_setup"]
    note = (
        f"\nSpeed: batch {setup['batch_size']}, {setup['rounds']} paired rounds against stock "
        f"`ViTForImageClassification` with the same weights; the job took {result['wall_time_s']:.0f} s.\n"
    )
    marked = [
        f"- † {row['model']}: {'; '.join(row['unreliable'])}." for row in result["comparison"] if row.get("unreliable")
    ]
    return (
        "\n".join(lines)
        + "\n"
        + note
        + ("\n" + "\n".join(marked) + "\n" if marked else "")
        + "\n"
        + source(result, path)
        + "\n"
    )


@renderer
def dynamicvit_training(path: str) -> str:
    result = load(path)
    targets = " / ".join(f"{t:.2f}" for t in result["targets"])
    lines = [
        f"| run | kept per stage (targets {targets}) | digit patches kept (random) | accuracy |",
        "|---|---:|---:|---:|",
    ]
    names = {"official": "official code", "ours-official": "ours, `policy_gradient=\"official\"`",
             "ours-bounded": "ours, `policy_gradient=\"bounded\"` (default)"}  # fmt: skip
    for name, run in result["runs"].items():
        kept = " / ".join(f"{k:.3f}" for k in run["final_kept"])
        lines.append(
            f"| {names.get(name, name)} | {kept} | {run['digit_share_kept']:.2f} ({run['digit_share_random']:.2f}) | "
            f"{run['accuracy']:.3f} |"
        )
    model = result["model"]
    note = (
        f"\nA {model['num_hidden_layers']}-layer ViT of width {model['hidden_size']} "
        f"({(model['image_size'] // model['patch_size']) ** 2} patches) trained {result['base_epochs']} epochs on the "
        f"cluttered digits (accuracy {result['base_accuracy']:.3f}), "
        f"then DynamicViT's recipe for {result['fine_tune']['epochs']} epochs at layers {result['plan']['layers']}, "
        f"keep rate {result['plan']['keep_rate']}, from the same weights, batches and seed.\n"
    )
    return with_source(lines, note, result, path)


@renderer
def fidelity(path: str) -> str:
    """One row per method: its official code and commit, the operating points, the largest logit difference."""
    result = load(path)
    methods: dict[str, list[dict]] = {}
    for row in result["rows"]:
        methods.setdefault(row["method"], []).append(row)
    lines = [
        "| method | official code (commit) | operating points | max \\|Δ logit\\| fp32 / fp64 | same tokens kept |",
        "|---|---|---|---:|---|",
    ]
    for method, rows in methods.items():
        points = "; ".join(
            " ".join(f"{k}={v}" for k, v in row["plan"].items() if k not in ("method",)) for row in rows
        )
        fp32 = max(row["max_logit_difference_fp32"] for row in rows)
        fp64 = max(row["max_logit_difference_fp64"] for row in rows)
        same = [row["same_selections"] for row in rows]
        kept = "–" if all(s is None for s in same) else ("yes" if all(same) else "**no**")
        lines.append(
            f"| `{method}` | {rows[0]['repository']} (`{rows[0]['commit'][:7]}`) | {points} | {fp32:.1e} / {fp64:.1e} "
            f"| {kept} |"
        )
    return "\n".join(lines) + "\n\n" + source(result, path) + "\n"


@renderer
def conformance(path: str) -> str:
    result = load(path)
    settings = ("stock", "no-plan", "keep-all", "reducing-restore")
    lines = ["| family | " + " | ".join(settings) + " |", "|---" * (len(settings) + 1) + "|"]
    for family, runs in result["results"].items():
        cells = []
        for setting in settings:
            run = runs.get(setting)
            if run is None:
                cells.append("–")
                continue
            new = sum(f.get("vs_stock") == "new" for f in run.get("failures", []))
            cells.append(f"{run['passed']} / {run['failed']} / {run['skipped']}" + (f" ({new} new)" if new else ""))
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    tests = result["transformers_tests"]
    note = (
        f"\nPassed / failed / skipped of transformers' own model tests ({tests.get('repository', '?')} at "
        f'{str(tests.get("commit", "?"))[:12]}, version {tests.get("version", "?")}); "new": failures the stock '
        "control does not have. Every failure with its reason: [CONFORMANCE.md](conformance/CONFORMANCE.md).\n"
    )
    any_run = next(iter(next(iter(result["results"].values())).values()))
    origin = {"command": any_run.get("command"), "commit": result.get("commit"), "date": result.get("date"),
              "machine": {}}  # fmt: skip
    return with_source(lines, note, origin, path)


# ----------------------------------------------------------------------------------------------------------------
# Tables generated from the code
# ----------------------------------------------------------------------------------------------------------------


@renderer
def support_matrix() -> str:
    """Family x method (runs) and family x capability, from the family table and the method classes."""
    from hf_tokenprune.families import CAPABILITIES, FAMILY_ROWS
    from hf_tokenprune.models.methods import ATTENTION_REUSE_METHODS, REDUCTION_METHODS
    from hf_tokenprune.models.token_reduction import FEATURES

    methods = {**REDUCTION_METHODS, **ATTENTION_REUSE_METHODS}
    methods = {name: cls for name, cls in methods.items() if cls.__module__.startswith("hf_tokenprune.models.")}
    reasons: dict[str, int] = {}

    def gap(reason: str) -> str:
        number = reasons.setdefault(reason, len(reasons) + 1)
        return f"– ({number})"

    lines = ["| family | " + " | ".join(f"`{name}`" for name in methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for row in FAMILY_ROWS:
        config = row.config_class()
        if not hasattr(config, "provides"):  # a full model (CLIP): its vision tower takes the plan
            config = config.sub_configs["vision_config"]
        provides = config.provides
        cells = []
        for cls in methods.values():
            missing = [FEATURES[f] for f in cls.needs if f not in provides]
            cells.append("✓" if not missing else gap(f"the method needs {' and '.join(missing)}"))
        lines.append(f"| {row.title} | " + " | ".join(cells) + " |")
    titles = {"training": "times training", "dense": "dense"}
    capability_lines = ["| family | " + " | ".join(titles.get(c, c) for c in CAPABILITIES) + " |"]
    capability_lines.append("|---" * (len(CAPABILITIES) + 1) + "|")
    for row in FAMILY_ROWS:
        cells = ["✓" if row.can(c) else gap(row.gaps[c]) for c in CAPABILITIES]
        capability_lines.append(f"| {row.title} | " + " | ".join(cells) + " |")
    notes = "\n".join(f"{number}. {reason}" for reason, number in reasons.items())
    return (
        "Which methods run on which family (a plan that does not fit is refused when it is set, in one line):\n\n"
        + "\n".join(lines)
        + "\n\nWhat the tools do per family (export: `hf-tokenprune export`; benchmark: `hf-tokenprune benchmark "
        "--model`; times training: the benchmark's training mode, against the stock class's loss; tune and visualize: "
        "those commands; dense: a backbone and semantic segmentation):\n\n"
        + "\n".join(capability_lines)
        + "\n\n"
        + notes
        + "\n\n<sub>Generated from `hf_tokenprune.families` (each row's `gaps`) and the methods' `needs` against "
        "each family config's `provides`.</sub>\n"
    )


# ----------------------------------------------------------------------------------------------------------------


def render(text: str, page: str) -> str:
    CURRENT_PAGE[0] = page

    def one(match: re.Match) -> str:
        name, args = match["name"], match["args"].split()
        if name not in RENDERERS:
            raise SystemExit(f"{page}: unknown renderer {name!r}; known: {', '.join(sorted(RENDERERS))}")
        return match.group(1) + RENDERERS[name](*args) + match.group(5)

    return BLOCK.sub(one, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a page is out of date")
    args = parser.parse_args(argv)
    stale = []
    for page in PAGES:
        path = ROOT / page
        if not path.is_file():
            continue
        text = path.read_text()
        rendered = render(text, page)
        if rendered != text:
            stale.append(page)
            if not args.check:
                path.write_text(rendered)
    if args.check and stale:
        print("out of date (run python scripts/render_docs.py): " + ", ".join(stale))
        return 1
    print(("rewrote " + ", ".join(stale)) if stale and not args.check else "every rendered table is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
