"""The benchmark harness: paired interleaved timing, plan parsing, result rows, outputs and the CLI, for ViT and for
a saved checkpoint of every family (measured against the stock class of its row of the family table).

These tests check behaviour on tiny models with one or two rounds; they never assert a speed."""

import json
import math
import shlex

import pytest
import torch
from conftest import PNG_MAGIC, REDUCING_PLANS, tiny_config
from family_matrix import FAMILIES, ours, stock_models

from hf_tokenprune import REDUCTION_METHODS, TokenPruneViTForImageClassification
from hf_tokenprune.commands.main import main
from hf_tokenprune.commands.main import main as cli_main
from hf_tokenprune.flops import count_flops
from hf_tokenprune.measure.benchmark import (
    MODES,
    BenchmarkSettings,
    build_models,
    measure_paired,
    measure_training,
    parse_plans,
    run_benchmark,
    training_step,
)
from hf_tokenprune.measure.devices import OthersLoad, parse_device, parse_dtype
from hf_tokenprune.measure.report import compact_counts, noise_warnings, unreliable_reasons, write_results

REQUIRED_KEYS = {
    "label", "plan", "attention_reuse", "mode", "tokens_per_layer", "gflops", "stock_gflops", "ideal_speedup",
    "measured_speedup", "fraction_of_ideal", "spread", "device", "dtype", "batch_size", "rounds",
}  # fmt: skip
pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(**overrides) -> BenchmarkSettings:
    values = dict(batch_size=2, rounds=2, latency_rounds=2, warmup=1, progress=False)
    return BenchmarkSettings(**{**values, **overrides})


def test_measure_paired_interleaves_and_rotates():
    calls = []

    def candidate(name):
        def run(pixel_values):
            calls.append((name, torch.is_inference_mode_enabled(), pixel_values.shape[0]))

        return run

    stats = measure_paired({n: candidate(n) for n in "abc"}, torch.zeros(4, 1), rounds=3, warmup=2, progress=False)
    names = [name for name, _, _ in calls]
    assert names[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up first, every candidate
    assert names[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # one run each per round, order rotated
    assert all(inference and batch == 4 for _, inference, batch in calls)
    for timing in stats.values():
        assert len(timing.times) == 3 and all(t >= 0 for t in timing.times)
        low, high = timing.spread
        assert low <= timing.median_s <= high


def test_others_load_counts_another_process_and_not_our_own_work():
    """A busy child process shows in the load of others; this process's own busy loop does not."""
    import os
    import subprocess
    import sys
    import time

    def busy(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass

    load = OthersLoad().start()
    busy(0.6)
    alone = load.stop().value
    spin = "import time\nend = time.time() + 1.0\nwhile time.time() < end: pass"
    child = subprocess.Popen([sys.executable, "-c", spin])
    load = OthersLoad().start()
    child.wait()
    with_child = load.stop().value
    if alone is None:
        pytest.skip("this system does not report CPU time in /proc/stat")
    assert with_child - alone > 0.5 / os.cpu_count(), (alone, with_child)  # the child kept one core busy
    stats = measure_paired({"a": lambda x: busy(0.01)}, torch.zeros(1), rounds=2, progress=False)
    assert 0.0 <= stats["a"].others_load <= 1.0


def test_a_speed_is_unreliable_when_noisy_busy_or_slower_than_stock():
    quiet = {"label": "evit", "mode": "inference", "measured_speedup": 1.4, "ideal_speedup": 1.5, "noisy": False,
             "spread": [1.35, 1.45], "relative_spread": 0.07, "others_load": 0.02}  # fmt: skip
    assert unreliable_reasons(quiet) == [] and noise_warnings([quiet]) == []
    busy = {**quiet, "others_load": 0.6}
    assert unreliable_reasons(busy) == ["other processes kept 60% of the CPU busy while it was timed"]
    noisy = {**quiet, "noisy": True, "spread": [0.9, 2.1], "relative_spread": 0.86}
    assert unreliable_reasons(noisy)[0].startswith("its timed rounds spread from 0.90x to 2.10x")
    slower = {**quiet, "measured_speedup": 0.84}
    assert "slower than stock (0.84x) although its FLOPs are 1.50x lower" in unreliable_reasons(slower)[0]
    warnings = noise_warnings([busy, slower])
    assert any("up to 60% of the CPU busy" in w for w in warnings)
    assert any("evit (inference) measured slower than stock" in w for w in warnings)
    assert unreliable_reasons({**quiet, "spread": "wide", "noisy": True, "others_load": "x"})  # odd input: no crash


def test_measure_paired_rejects_bad_arguments():
    with pytest.raises(ValueError, match="candidates"):
        measure_paired({}, torch.zeros(1))
    with pytest.raises(ValueError, match="rounds"):
        measure_paired({"a": lambda x: x}, torch.zeros(1), rounds=0)


def test_training_step_trains_inside_inference_mode():
    torch.manual_seed(0)
    model = TokenPruneViTForImageClassification(tiny_config()).train()
    before = model.classifier.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = training_step(model, optimizer, torch.tensor([0, 1]), interpolate=False)
    measure_paired({"train": step}, torch.randn(2, 3, 32, 32), rounds=1, warmup=0, progress=False)
    assert not torch.equal(before, model.classifier.weight)


def test_plan_entries_in_every_form():
    base = tiny_config()
    evit = REDUCING_PLANS["evit"]
    parsed = parse_plans(
        [
            None,
            evit,
            {"token_reduction": REDUCING_PLANS["tome"], "label": "merge"},
            {"token_reduction": None, "label": "plain"},
        ],
        base,
    )
    labels = [entry.label for entry, _ in parsed]
    assert labels[0] == "no reduction" and labels[2] == "merge" and labels[1].startswith("evit")
    assert parsed[1][1].token_reduction["keep_rate"] == evit["keep_rate"]
    assert parsed[3][1].token_reduction is None
    # A bare method name is labelled with the operating point its defaults chose.
    [(entry, config)] = parse_plans([{"method": "evit"}], base)
    assert f"keep_rate={config.token_reduction['keep_rate']:g}" in entry.label


def test_keep_rate_override_applies_to_keep_rate_methods_only():
    parsed = parse_plans([REDUCING_PLANS["evit"], REDUCING_PLANS["tome"]], tiny_config(), keep_rate=0.3)
    assert parsed[0][1].token_reduction["keep_rate"] == 0.3
    assert "keep_rate" not in parsed[1][1].token_reduction


@pytest.mark.parametrize(
    "plans, match",
    [
        ([{"method": "no_such_method"}], "no_such_method"),
        ([{"method": "evit", "keep_rate": 1.5}], "keep_rate"),
        ([42], r"plans\[0\]"),
        ([{"tokens": 3}], "unknown key"),
        ({"method": "evit"}, "list"),
        ([None, None], "repeated labels"),
    ],
)
def test_bad_plans_are_refused(plans, match):
    with pytest.raises(ValueError, match=match):
        parse_plans(plans, tiny_config())


def test_default_plans_cover_every_registered_method():
    from hf_tokenprune.models.attention_reuse import ATTENTION_REUSE_METHODS

    parsed = parse_plans(None, tiny_config())
    methods = {config.token_reduction["method"] for _, config in parsed if config.token_reduction}
    assert methods == set(REDUCTION_METHODS)
    assert any(config.token_reduction is None and config.attention_reuse is None for _, config in parsed)
    reuse = {config.attention_reuse["method"] for _, config in parsed if config.attention_reuse}
    assert reuse == set(ATTENTION_REUSE_METHODS)


def test_models_share_the_stock_weights():
    plans = parse_plans([None, REDUCING_PLANS["evit"]], tiny_config())
    stock, models = build_models(tiny_config(), plans)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(models["no reduction"](pixels).logits, stock(pixels).logits)
    shared = models[plans[1][0].label].vit.layers[0].mlp.fc1.weight
    assert shared.data_ptr() == stock.vit.layers[0].mlp.fc1.weight.data_ptr()


def test_run_benchmark_rows():
    plans = [None, REDUCING_PLANS["evit"], REDUCING_PLANS["skipvit"]]
    rows = run_benchmark(tiny_config(), plans, _settings())
    assert len(rows) == len(plans) * len(MODES)
    for row in rows:
        assert REQUIRED_KEYS <= set(row)
        assert row["mode"] in MODES
        assert row["batch_size"] == (1 if row["mode"] == "latency" else 2) and row["rounds"] == 2
        assert math.isfinite(row["measured_speedup"]) and row["measured_speedup"] > 0
        assert row["spread"][0] <= row["measured_speedup"] <= row["spread"][1]
        assert row["fraction_of_ideal"] == pytest.approx(row["measured_speedup"] / row["ideal_speedup"])
        config = tiny_config(token_reduction=row["plan"])
        assert row["tokens_per_layer"] == [list(c) for c in config.token_counts()]
        assert row["ideal_speedup"] == pytest.approx(count_flops(config).ideal_speedup)
        assert row["dtype"] == "float32" and "cores" in row["device"]
        assert row["others_load"] is None or 0.0 <= row["others_load"] <= 1.0
    no_reduction = [row for row in rows if row["label"] == "no reduction"]
    assert {row["mode"] for row in no_reduction} == set(MODES)
    assert all(row["ideal_speedup"] == pytest.approx(1.0) for row in no_reduction)


@pytest.mark.slow
def test_onnxruntime_rows_time_exported_graphs_beside_their_bound():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    rows = run_benchmark(
        tiny_config(),
        [REDUCING_PLANS["tome"]],
        _settings(runtime="onnxruntime", warmup=0, modes=("inference", "latency")),
    )  # stock, the plan and its bound: three exports
    assert [row["mode"] for row in rows] == ["inference", "latency"]
    for row in rows:
        assert REQUIRED_KEYS <= set(row) and row["runtime"] == "onnxruntime" and "onnxruntime" in row["device"]
        assert row["bound_speedup"] > 0 and row["fraction_of_bound"] == pytest.approx(
            row["measured_speedup"] / row["bound_speedup"]
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(modes=("training",)), "use --modes inference,latency"),
        (dict(compile=True), "without --compile"),
        (dict(dtype=torch.float16), "use --dtype fp32"),
        (dict(runtime="tensorrt"), "--runtime 'tensorrt' is not known"),
    ],
)
def test_onnxruntime_settings_that_cannot_run_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        _settings(runtime=overrides.pop("runtime", "onnxruntime"), **overrides).check()


def test_training_measures_copies():
    plans = parse_plans([REDUCING_PLANS["tome"]], tiny_config())
    stock, models = build_models(tiny_config(), plans)
    before = {name: value.clone() for name, value in stock.state_dict().items()}
    ratios = measure_training(stock, models, tiny_config(), _settings(rounds=1))
    assert list(ratios) == [plans[0][0].label] and len(ratios[plans[0][0].label]) == 1
    for name, value in stock.state_dict().items():  # the caller's models are not trained
        assert torch.equal(before[name], value)


def test_write_results(tmp_path):
    rows = run_benchmark(tiny_config(), [None, REDUCING_PLANS["tome"]], _settings(modes=("inference",)))
    paths = write_results(rows, str(tmp_path / "out"))
    data = json.loads(open(paths["json"]).read())
    assert data["rows"] == json.loads(json.dumps(rows)) and data["machine"]["torch"] == torch.__version__
    table = open(paths["md"]).read()
    assert table.startswith("| plan | MLP tokens per layer | GFLOPs | ideal | inference (of ideal) |")
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == 3  # header + 2 plans
    assert open(paths["png"], "rb").read(8) == PNG_MAGIC


def test_saved_results_name_the_commit_and_only_code_changes_make_it_dirty(tmp_path):
    """A measurement writes its results under docs/ of the checkout it runs from: that must not mark its own commit
    dirty; a change to the code must."""
    import subprocess

    from hf_tokenprune.measure.devices import code_version

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "hf_tokenprune").mkdir()
    (tmp_path / "docs" / "results" / "speed.json").write_text("{}")
    (tmp_path / "hf_tokenprune" / "code.py").write_text("A = 1\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    assert code_version(tmp_path) == head.stdout.strip()
    (tmp_path / "docs" / "results" / "speed.json").write_text('{"speed": 2}')
    assert code_version(tmp_path) == head.stdout.strip()
    (tmp_path / "hf_tokenprune" / "code.py").write_text("A = 2\n")
    assert code_version(tmp_path) == head.stdout.strip() + "-dirty"


def test_compact_counts():
    assert compact_counts([[197, 197]] * 3 + [[197, 138], [138, 138]]) == "197x3 138x2"


def test_devices_and_dtypes():
    assert parse_device("cpu") == torch.device("cpu")
    assert isinstance(parse_device("auto"), torch.device)
    assert parse_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="--device 'tpu'"):
        parse_device("tpu")
    with pytest.raises(ValueError, match="--dtype"):
        parse_dtype("fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no cuda device"):
            parse_device("cuda")
    with pytest.raises(ValueError, match="modes"):
        _settings(modes=("inference", "sprint")).check()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    TokenPruneViTForImageClassification(tiny_config(token_reduction=REDUCING_PLANS["evit"])).save_pretrained(folder)
    return str(folder)


def test_cli_benchmark_on_a_checkpoint(tiny_checkpoint, tmp_path, capsys):
    plans = json.dumps([None, {"token_reduction": REDUCING_PLANS["evit"], "label": "evit"}])
    argv = ["benchmark", "--model", tiny_checkpoint, "--plans", plans, "--device", "cpu", "--batch-size", "2"]
    argv += ["--rounds", "1", "--modes", "inference,latency", "--no-progress", "--output-dir", str(tmp_path)]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "| no reduction |" in printed and "| evit |" in printed
    results = json.loads((tmp_path / "benchmark.json").read_text())
    assert results["command"] == shlex.join(["hf-tokenprune", *argv])  # how to measure it again
    assert f"command: `{results['command']}`" in (tmp_path / "benchmark.md").read_text()
    assert "rounds: inference 1, latency 3;" in (tmp_path / "benchmark.md").read_text()
    rows = results["rows"]
    assert [(row["label"], row["mode"]) for row in rows] == [
        ("no reduction", "inference"), ("no reduction", "latency"), ("evit", "inference"), ("evit", "latency"),
    ]  # fmt: skip
    assert rows[0]["stock_gflops"] == pytest.approx(count_flops(tiny_config()).stock_gflops)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--plans", '[{"method": "no_such_method"}]'], "no_such_method"),
        (["--plans", "[not json"], "--plans is not valid JSON"),
        (["--dtype", "fp32", "--modes", "inference,warp"], "modes"),
    ],
)
def test_cli_refuses_bad_input_before_timing(tiny_checkpoint, tmp_path, capsys, extra, match):
    argv = ["benchmark", "--model", tiny_checkpoint, "--output-dir", str(tmp_path / "out"), "--no-progress"]
    try:
        code = cli_main(argv + extra)
    except SystemExit as exit_:  # parse_json_option exits with its message
        code, message = 2, str(exit_)
    else:
        message = capsys.readouterr().err
    assert code == 2 and match in message
    assert not (tmp_path / "out").exists()  # nothing was measured or written


# What each family is measured against: its row's stock class (CLIP: the tower with its projection).
STOCK_CLASSES = {name: family.row.stock for name, family in FAMILIES.items() if family.row.can("benchmark")}
ARGS = ["--device", "cpu", "--batch-size", "2", "--rounds", "1", "--latency-rounds", "1", "--warmup", "0"]


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    return stock_models(tmp_path_factory)


def _benchmark(folder, output, *extra) -> dict:
    argv = ["benchmark", "--model", str(folder), *ARGS, *extra, "--no-progress", "--output-dir", str(output)]
    assert main(argv) == 0
    return json.loads((output / "benchmark.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STOCK_CLASSES))
def test_a_saved_family_checkpoint_is_measured_against_its_stock_class(stock, tmp_path, capsys, name):
    ours(name, stock(name)[0], token_reduction=REDUCING_PLANS["tome"]).save_pretrained(tmp_path / "ckpt")
    results = _benchmark(tmp_path / "ckpt", tmp_path / "out")  # default plans: none and the saved one
    rows = results["rows"]
    expected_modes = ["inference", "latency"] + (["training"] if FAMILIES[name].row.can("training") else [])
    labels = list(dict.fromkeys(row["label"] for row in rows))
    assert labels[0] == "no reduction" and labels[1].startswith("tome r=8") and len(labels) == 2
    assert [(row["label"], row["mode"]) for row in rows] == [(lab, mode) for lab in labels for mode in expected_modes]
    assert {row["stock_class"] for row in rows} == {STOCK_CLASSES[name]}
    tome = rows[-1]
    config = FAMILIES[name].config(**FAMILIES[name].settings(), token_reduction=REDUCING_PLANS["tome"])
    assert tome["plan"] == config.token_reduction and tome["ideal_speedup"] > 1.0
    assert tome["tokens_per_layer"] == [list(counts) for counts in config.token_counts()]
    printed = capsys.readouterr().out
    assert "| no reduction |" in printed and f"| {labels[1]} |" in printed
    assert f"against stock {STOCK_CLASSES[name]}; device: " in printed
    assert f"against stock {STOCK_CLASSES[name]};" in (tmp_path / "out" / "benchmark.md").read_text()


def test_a_stock_family_folder_is_benchmarked_as_ours(stock, tmp_path):
    _, folder = stock("dinov2")  # a stock Dinov2ForImageClassification checkpoint, no plan
    plans = json.dumps([None, {"token_reduction": REDUCING_PLANS["evit"], "label": "evit"}])
    rows = _benchmark(folder, tmp_path, "--plans", plans, "--modes", "inference")["rows"]
    assert [(row["label"], row["stock_class"]) for row in rows] == [
        ("no reduction", "Dinov2ForImageClassification"),
        ("evit", "Dinov2ForImageClassification"),
    ]
    assert rows[1]["gflops"] < rows[0]["gflops"] == rows[0]["stock_gflops"]


@pytest.mark.parametrize("ours", [False, True])
def test_a_full_clip_folder_is_benchmarked_by_its_vision_tower(tmp_path_factory, tmp_path, ours):
    from family_matrix import clip_checkpoint

    from hf_tokenprune import TokenPruneCLIPModel

    _, folder = clip_checkpoint(tmp_path_factory)  # a stock CLIPModel: the tower and its projection are measured
    if ours:  # a full TokenPruneCLIPModel folder with its own plan
        TokenPruneCLIPModel.from_pretrained(folder, token_reduction=REDUCING_PLANS["evit"]).save_pretrained(tmp_path)
        folder = tmp_path
    plans = json.dumps([None, REDUCING_PLANS["tome"]])
    rows = _benchmark(folder, tmp_path / "out", "--plans", plans, "--modes", "inference")["rows"]
    assert [row["stock_class"] for row in rows] == ["CLIPVisionModelWithProjection"] * 2
    assert rows[1]["tokens_per_layer"][0][0] == 1 + (32 // FAMILIES["clip"].settings()["patch_size"]) ** 2


def test_training_is_refused_for_a_family_without_a_training_loss(stock, tmp_path, capsys):
    _, folder = stock("siglip")
    assert main(["benchmark", "--model", str(folder), "--modes", "training", "--output-dir", str(tmp_path)]) == 2
    assert "has no training loss" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_the_default_plans_of_siglip_are_the_methods_it_runs():
    from hf_tokenprune.models.methods import ATTENTION_REUSE_METHODS, REDUCTION_METHODS
    from hf_tokenprune.plans import parse_plans

    spec = FAMILIES["siglip"]
    labels = [entry.label.split()[0] for entry, _ in parse_plans(None, spec.config(**spec.settings()))]
    runs = [name for name, cls in sorted(REDUCTION_METHODS.items()) if set(cls.needs) <= spec.config.provides]
    runs += [name for name, cls in sorted(ATTENTION_REUSE_METHODS.items()) if set(cls.needs) <= spec.config.provides]
    assert labels == ["no", *runs] and "evit" not in labels  # no CLS token: no EViT, Evo-ViT, SkipViT, SuperViT


def test_the_plan_command_reads_a_family_folder(stock, capsys):
    _, folder = stock("siglip")
    assert main(["plan", "--model", str(folder), "--token-reduction", json.dumps(REDUCING_PLANS["tome"])]) == 0
    assert '"method": "tome"' in capsys.readouterr().out
