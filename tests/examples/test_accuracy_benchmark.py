"""The tiny version of examples/benchmark_accuracy.py: it must produce a well-formed BENCHMARKS.md, JSON and PNG.

It checks the form of the outputs, never the numbers' values (a tiny model trained for one epoch is near chance).
"""

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import PNG_MAGIC

from hf_tokenprune import REDUCTION_METHODS
from hf_tokenprune.flops import count_flops

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "benchmark_accuracy.py"
NUMBER = r"[+-]?\d+(\.\d+)?(e[+-]?\d+)?"


def _load_script():
    spec = importlib.util.spec_from_file_location("benchmark_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture(scope="module")
def report(script):
    """examples/accuracy_report.py (BENCHMARKS.md), importable once the script has put examples/ on the path."""
    import accuracy_report

    return accuracy_report


@pytest.fixture(scope="module")
def tiny_run(script, tmp_path_factory):
    output = tmp_path_factory.mktemp("accuracy")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared machine: one thread is fastest
    try:
        assert script.main(["--tiny", "--output-dir", str(output), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    return output


def _table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_operating_points_cover_every_method(script):
    from hf_tokenprune.models.attention_reuse import ATTENTION_REUSE_METHODS

    recipe = script.Recipe(**script.TINY)
    points = script.operating_points(recipe)
    methods = {method for method, _, _ in points}
    assert set(REDUCTION_METHODS) <= methods
    variants = {name for extra in script.VARIANTS.values() for name in extra}
    assert methods - set(REDUCTION_METHODS) == (set(ATTENTION_REUSE_METHODS) & {"skipat"}) | variants
    for method in methods:
        names = [name for m, name, _ in points if m == method]
        assert len(names) == len(set(names)) and 1 <= len(names) <= 2  # --tiny: at most two points each
    full = script.operating_points(script.Recipe())
    assert len(full) > len(points)  # the full benchmark has three or four points per method
    keep = [name for method, name, _ in full if method == "evit"]
    # EViT's own points and the one nearest 1.5x ideal, mildest to strongest
    assert keep == ["keep_rate=0.9", "keep_rate=0.7", "keep_rate=0.55", "keep_rate=0.5"]


@pytest.mark.slow
def test_benchmarks_md_is_well_formed(script, report, tiny_run):
    text = (tiny_run / "BENCHMARKS.md").read_text()
    assert report.TABLE_HEADER in text
    assert re.search(r"torch \d+\.\d+", text) and "cores" in text  # the machine it ran on
    header, separator, *rows = _table_rows(text)
    assert header[0] == "method" and set(separator[0]) == {"-"}
    points = script.operating_points(script.Recipe(**script.TINY))
    expected = {(method, name, setting) for method, name, _ in points for setting in script.SETTINGS}
    expected.add(("skipat", "layers=[1, 2]", script.SCRATCH))  # SkipAt's default point: its paper's protocol too
    untrained = " (untrained selector)"
    assert len(rows) == len(expected) and {(r[0], r[1], r[2].removesuffix(untrained)) for r in rows} == expected
    marked = {(r[0], r[2]) for r in rows if r[2].endswith(untrained)}  # new selectors rank arbitrarily zero-shot
    assert marked == {(method, "zero-shot" + untrained) for method in ("dynamicvit", "cropr")}
    for row in rows:
        accuracy, delta, gflops = float(row[3]), float(row[4]), float(row[5])
        ideal, measured, fraction = float(row[6].rstrip("x")), float(row[7].rstrip("x")), float(row[8])
        assert 0.0 <= accuracy <= 1.0 and -1.0 <= delta <= 1.0 and gflops > 0
        # the table rounds all three to 2 decimals: the ratio of the rounded values moves by up to about 0.015
        assert ideal > 1.0 and measured > 0 and fraction == pytest.approx(measured / ideal, abs=0.02)
        assert all(re.fullmatch(NUMBER, cell.rstrip("x")) for cell in row[3:9])
        share = re.fullmatch(r"(\d\.\d\d) \((\d\.\d\d)\)", row[9])  # digit patches kept (random)
        assert share or (row[9] == "–" and row[0] in ("tome", "skipat")), row
    assert "![accuracy against measured speed-up](accuracy_vs_speedup.png)" in text
    assert "## Targets" in text and "- Load: 1-minute load average" in text  # the targets; how busy


@pytest.mark.slow
def test_json_and_png(tiny_run):
    results = json.loads((tiny_run / "accuracy_benchmark.json").read_text())
    assert {"zero-shot", "fine-tuned", "fine-tuned evit", "fine-tuned dynamicvit"} == set(results["stock_accuracy"])
    assert all(row["measured_speedup"] > 0 and len(row["spread"]) == 2 for row in results["rows"])
    assert results["machine"]["torch"] == torch.__version__
    assert (tiny_run / "accuracy_vs_speedup.png").read_bytes()[:8] == PNG_MAGIC
    text = (tiny_run / "BENCHMARKS.md").read_text()
    for method in REDUCTION_METHODS:  # what each method keeps, on a digit
        picture = tiny_run / f"kept_tokens_{method}.png"
        assert picture.read_bytes()[:8] == PNG_MAGIC and f"]({picture.name})" in text


@pytest.mark.slow
def test_skipat_is_trained_from_scratch_and_dynamicvit_evit_over_seeds(tiny_run):
    results = json.loads((tiny_run / "accuracy_benchmark.json").read_text())
    stock, rows = results["stock_accuracy"], results["rows"]
    scratch = [row for row in rows if row["setting"] == "from scratch"]
    assert [row["operating_point"] for row in scratch] == ["layers=[1, 2]"]  # the default, half of the 4 layers
    assert all(row["method"] == "skipat" and row["digit_share"] is None for row in scratch)
    assert all(row["accuracy_delta"] == pytest.approx(row["accuracy"] - stock["zero-shot"]) for row in scratch)
    seeds = results["seed_accuracy"]  # --tiny: 2 seeds of stock, DynamicViT and EViT at keep 0.7
    assert set(seeds) == {"stock", "dynamicvit keep_rate=0.7", "evit keep_rate=0.7"}
    assert all(len(accuracies) == 2 for accuracies in seeds.values()) and seeds["stock"][0] == stock["fine-tuned"]
    tuned = {f"{r['method']} {r['operating_point']}": r["accuracy"] for r in rows if r["setting"] == "fine-tuned"}
    assert all(seeds[label][0] == tuned[label] for label in seeds if label != "stock")
    assert "at the same keep rate, mean of 2 seeds (per seed: dynamicvit " in (tiny_run / "BENCHMARKS.md").read_text()


def test_fine_tunes_go_through_the_trainer_with_each_methods_official_recipe(script, tmp_path):
    """The benchmark trains through the Trainer users build: DynamicViTTrainer with its groups and teacher for
    DynamicViT, EViT's trainer_arguments, the default schedule for the others and the stock model."""
    from hf_tokenprune.training import DynamicViTTrainer, TokenPruneTrainer

    recipe = script.Recipe(**script.TINY)
    data = (torch.zeros(4, 3, recipe.canvas_size, recipe.canvas_size), torch.zeros(4, dtype=torch.long))
    base = recipe.learning_rate

    def built(plan, method=None):
        model = script.plan_model(recipe, {"token_reduction": plan} if plan else {}, {}, 0)
        method = method or (plan or {}).get("method")
        return script.trainer_for(model, data, recipe, 1, 0, str(tmp_path), False, method)

    dynamicvit = built({"method": "dynamicvit", "keep_rate": 0.7})
    assert (
        type(dynamicvit) is DynamicViTTrainer and dynamicvit.teacher_model is not None and dynamicvit.teacher_plans_off
    )
    assert dynamicvit.args.learning_rate == base and dynamicvit.args.warmup_steps == pytest.approx(5 / 30)
    assert dynamicvit.args.lr_scheduler_kwargs == {"min_lr_rate": 1e-3}
    assert {group["lr"] for group in dynamicvit.create_optimizer().param_groups} == {base, base * 0.01}
    evit = built({"method": "evit", "keep_rate": 0.7})
    assert type(evit) is TokenPruneTrainer and evit.args.learning_rate == pytest.approx(0.04 * base)
    assert (evit.args.weight_decay, evit.args.warmup_steps, evit.args.lr_scheduler_kwargs) == (
        1e-6, 0.0, {"min_lr_rate": 0.025})  # fmt: skip
    stock_as_evit = built(None, "evit")
    assert stock_as_evit.args.learning_rate == evit.args.learning_rate
    for trainer in (built({"method": "tome", "r": 2}), built(None)):
        assert type(trainer) is TokenPruneTrainer and trainer.args.learning_rate == recipe.finetune_learning_rate
        assert (trainer.args.weight_decay, trainer.args.lr_scheduler_type.value) == (0.05, "cosine")


def test_every_method_has_a_point_near_the_target_speed_up(script):
    recipe = script.Recipe()
    config = script.base_config(recipe)
    for method, cls in sorted(REDUCTION_METHODS.items()):
        if not cls.operating_points:
            continue
        plan = script.near_target(cls, recipe, config)
        assert plan in script.method_points(cls, recipe, config)
        ideal = count_flops(script.base_config(recipe, token_reduction=plan)).ideal_speedup
        assert abs(ideal - script.TARGET_SPEEDUP) < 0.1, (method, plan, ideal)


def test_bad_option_is_refused(script):
    with pytest.raises(ValueError, match="--epochs 0"):
        script.recipe_from_args(script.parse_args(["--tiny", "--epochs", "0"]))


def test_the_base_model_is_cached_across_runs(script, tmp_path, monkeypatch):
    recipe = script.recipe_from_args(script.parse_args(["--tiny", "--epochs", "1", "--copies", "1"]))
    recipe.max_train, recipe.max_eval = 32, 16
    data = script.load_data(recipe, seed=0)
    path = str(tmp_path / "base.pt")
    weights, stock = script.cached_base(recipe, data, 0, path, progress=False)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached base must not be trained again")

    monkeypatch.setattr(script, "train_base", no_training)
    again, stock_again = script.cached_base(recipe, data, 0, path, progress=False)
    assert stock_again == stock and all(torch.equal(again[k], weights[k]) for k in weights)
    recipe.operating_points, recipe.bench_rounds = 1, 3  # neither changes the base nor the stock fine-tune
    assert script.cached_base(recipe, data, 0, path, progress=False)[1] == stock
    recipe.epochs = 2  # another recipe: trained anew
    with pytest.raises(AssertionError, match="must not be trained again"):
        script.cached_base(recipe, data, 0, path, progress=False)


def _row(method, point, entry, accuracy, delta, gflops, share=None):
    return {"method": method, "operating_point": point, "setting": "fine-tuned", "accuracy": accuracy,
            "accuracy_delta": delta, "gflops": gflops, "entry": {"token_reduction": entry},
            "digit_share": share}  # fmt: skip


def test_targets_are_checked_on_the_numbers(report):
    rows = [
        _row("evit", "keep_rate=0.7", {"method": "evit", "keep_rate": 0.7}, 0.905, -0.005, 0.050),
        _row("evit", "keep_rate=0.5", {"method": "evit", "keep_rate": 0.5}, 0.890, -0.020, 0.040),
        _row("dynamicvit", "keep_rate=0.7", {"method": "dynamicvit", "keep_rate": 0.7}, 0.880, -0.030, 0.049,
             (0.40, 0.20)),
        _row("tome", "r=3", {"method": "tome", "r": 3}, 0.910, 0.0, 0.060),
        _row("tome", "r=5", {"method": "tome", "r": 5}, 0.908, -0.002, 0.051),
        _row("cropr", "tokens_per_layer=8", {"method": "cropr", "tokens_per_layer": 8}, 0.90, -0.01, 0.052,
             (0.10, 0.20)),
    ]  # fmt: skip
    text = "\n".join(report.target_lines({"rows": rows, "stock_accuracy": {"fine-tuned": 0.91}}))
    assert "- evit keep_rate=0.7: 0.905 (-0.005): within 1 point met." in text
    assert "- dynamicvit keep_rate=0.7: 0.880 (-0.030): within 1 point **not met**." in text
    assert "- tome r=5:" in text and "tome r=3" not in text  # ToMe at the FLOPs nearest the keep-0.7 points
    assert "- cropr tokens_per_layer=8: 0.900 (-0.010): within 1 point met." in text  # exactly one point
    assert "DynamicViT 0.880 against EViT 0.905 at the same keep rate: no worse **not met**." in text
    assert "dynamicvit keep_rate=0.7 keeps 0.40 digit patches against 0.20 for random selection: larger met." in text
    assert (
        "cropr tokens_per_layer=8 keeps 0.10 digit patches against 0.20 for random selection: larger **not met**"
        in text
    )
    assert report.target_lines({"rows": rows[3:5], "stock_accuracy": {"fine-tuned": 0.91}}) == []  # no keep rate 0.7


def test_skipat_target_uses_its_from_scratch_row_and_the_comparison_seed_means(report):
    rows = [
        _row("evit", "keep_rate=0.7", {"method": "evit", "keep_rate": 0.7}, 0.925, 0.009, 0.050),
        _row("dynamicvit", "keep_rate=0.7", {"method": "dynamicvit", "keep_rate": 0.7}, 0.919, 0.003, 0.049),
        _row("skipat", "layers=[1, 2]", None, 0.844, -0.072, 0.048),
        {**_row("skipat", "layers=[1, 2]", None, 0.912, -0.006, 0.048), "setting": "from scratch"},
    ]  # fmt: skip
    seeds = {"stock": [0.916, 0.919, 0.922], "dynamicvit keep_rate=0.7": [0.919, 0.925, 0.922],
             "evit keep_rate=0.7": [0.925, 0.914, 0.922]}  # fmt: skip
    results = {"rows": rows, "stock_accuracy": {"fine-tuned": 0.916, "zero-shot": 0.918}, "seed_accuracy": seeds}
    text = "\n".join(report.target_lines(results))
    assert "- skipat layers=[1, 2] (from scratch): 0.912 (-0.006): within 1 point met." in text
    assert "against the base model, trained the same way (0.918)" in text
    assert (
        "- DynamicViT 0.922 against EViT 0.920 at the same keep rate, mean of 3 seeds (per seed: dynamicvit 0.919, "
        "0.925, 0.922; evit 0.925, 0.914, 0.922; stock 0.916, 0.919, 0.922; difference +0.002, standard error 0.005 "
        "over the paired seeds): no worse met." in text
    )  # the first seeds alone (0.919 against 0.925) would not be
