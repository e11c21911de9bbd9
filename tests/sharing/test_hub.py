"""Sharing on the Hub: the generated card and its template, pushes through a loopback Hub (`push_to_hub`,
`TokenPruneTrainer.push_to_hub`, transformers' own `model.push_to_hub`), and loading in a clean process."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REDUCING_PLANS, REUSE_PLANS, TINY, tiny_config
from family_matrix import FAMILIES
from hub_server import LoopbackHub, use_loopback_hub
from huggingface_hub import ModelCard
from PIL import Image
from transformers import TrainingArguments, ViTConfig, ViTForImageClassification, ViTImageProcessor

import hf_tokenprune
from hf_tokenprune import TokenPruneViTForImageClassification
from hf_tokenprune.commands.main import main as cli_main
from hf_tokenprune.flops import count_flops
from hf_tokenprune.models.methods import ATTENTION_REUSE_METHODS, REDUCTION_METHODS
from hf_tokenprune.models.modeling_tokenprune_common import island_files
from hf_tokenprune.models.token_reduction import TokenReduction, register_reduction
from hf_tokenprune.sharing import hub, model_card
from hf_tokenprune.sharing.model_card import template_path
from hf_tokenprune.training import TokenPruneTrainer

TOKEN = "hf_LoopbackDummyToken0123456789abcdef"
HOSTILE = 'Evil: "name"\n---\nlicense: stolen\r\n{{ 7*7 }} {% raw %} <script>alert(1)</script> [x](javascript:y) | a'
# Per-layer token bookkeeping in the outputs, which the Trainer's prediction loop cannot gather (python ints).
OUTPUT_BOOKKEEPING = ["token_counts", "token_positions", "token_owner", "patch_grid"]
SPEED_ROW = {
    "label": "evit keep 0.6",
    "mode": "inference",
    "measured_speedup": 1.31,
    "ideal_speedup": 1.46,
    "fraction_of_ideal": 0.9,
    "device": "cpu",
    "dtype": "float32",
    "batch_size": 8,
    "gflops": 0.0083,
    "stock_gflops": 0.0121,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and lose a lot on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def loopback_hub(monkeypatch, tmp_path):
    """A loopback Hub with the client of this process pointed at it (HF_ENDPOINT, HF_TOKEN, an empty HF_HOME)."""
    with LoopbackHub(TOKEN) as server:
        server.env = use_loopback_hub(monkeypatch, server, tmp_path / "hf_home")
        yield server


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "picture.png"
    Image.new("RGB", (12, 8), (200, 30, 90)).save(path)
    return path


def evit_model(seed: int = 0, **overrides) -> TokenPruneViTForImageClassification:
    torch.manual_seed(seed)
    config = tiny_config(token_reduction=REDUCING_PLANS["evit"], **overrides)
    config.id2label = {i: f"class-{i}" for i in range(TINY["num_labels"])}
    config.label2id = {v: k for k, v in config.id2label.items()}
    return TokenPruneViTForImageClassification(config).eval()


def table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header row starts with ``header``."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip("|"))])  # GFM: '\|' is no border
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The card
# ----------------------------------------------------------------------------------------------------------------


def test_every_built_in_method_names_its_paper():
    for cls in [*REDUCTION_METHODS.values(), *ATTENTION_REUSE_METHODS.values()]:
        if cls.__module__.startswith("hf_tokenprune."):
            assert cls.paper.title and cls.paper.arxiv, cls.method


@pytest.mark.parametrize("name", sorted(REDUCING_PLANS))
def test_card_metadata_and_plan_table_follow_the_config(name):
    config = tiny_config(token_reduction=REDUCING_PLANS[name])
    card = model_card.write_model_card(None, config, base_model="google/vit-base-patch16-224", datasets="ylecun/mnist")
    data = ModelCard(str(card)).data
    assert data.library_name == "transformers" and data.pipeline_tag == "image-classification"
    assert data.base_model == "google/vit-base-patch16-224" and data.datasets == ["ylecun/mnist"]
    assert {"token-pruning", "custom_code", "vision", name.replace("_", "-")} <= set(data.tags)
    assert data.eval_results is None  # no accuracy given: no model-index
    layers = table_rows(card.text, "| Layer |")
    assert [(int(r[0]), int(r[1]), int(r[2])) for r in layers] == [
        (i, a, m) for i, (a, m) in enumerate(config.token_counts())
    ]
    report = count_flops(config)
    assert f"**{report.gflops:.4g} GFLOPs**" in card.text and f"**{report.ideal_speedup:.2f}x**" in card.text
    paper = REDUCTION_METHODS[config.token_reduction["method"]].paper
    assert paper.title in card.text and f"https://arxiv.org/abs/{paper.arxiv}" in card.text
    assert 'revision = "main"' in card.text and "trust_remote_code=True" in card.text


@pytest.mark.parametrize("name", sorted(REUSE_PLANS))
def test_card_of_attention_reuse_marks_the_reused_layers(name):
    config = tiny_config(**REUSE_PLANS[name])
    card = model_card.write_model_card(None, config)
    reused = config.attention_reuse["layers"]
    layers = table_rows(card.text, "| Layer |")
    assert [row[0] for row in layers] == [f"{i} (attention reused)" if i in reused else str(i) for i in range(4)]
    assert {"attention-reuse", "skipat"} <= set(card.data.tags)
    assert "Attention reuse: `skipat`" in card.text and "https://arxiv.org/abs/2301.02240" in card.text
    assert ("`attention_reuse.layers`", model_card.markdown_text(json.dumps(reused))) in map(
        tuple, table_rows(card.text, "| Option |")
    )


def test_card_with_measurements_and_pictures(tmp_path, png):
    model = evit_model()
    model.save_pretrained(tmp_path)
    accuracy = {"with_reduction": 0.875, "without_reduction": 0.9, "dataset": "digits", "split": "validation"}
    sha = "0123456789abcdef0123456789abcdef01234567"
    model_card.write_model_card(
        tmp_path, model, accuracy=accuracy, speed=[SPEED_ROW], images={"kept_tokens": png, "pareto": png},
        repo_id="someone/evit-tiny", revision=sha, training={"learning_rate": 5e-5},
    )  # fmt: skip
    card = ModelCard.load(tmp_path / "README.md")
    (result, without) = card.data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_name) == ("accuracy", 0.875, "digits")
    assert without.metric_value == 0.9 and card.data.model_name == "evit-tiny"
    assert table_rows(card.text, "| Dataset |") == [["digits", "validation", "**87.50%**", "90.00%"]]
    speed = table_rows(card.text, "| Run |")
    assert speed == [["evit keep 0\\.6", "inference", "8", "cpu", "float32", "**1.31x**", "1.46x", "90%"]]
    for name in ("kept_tokens.png", "pareto.png"):
        assert (tmp_path / model_card.IMAGES_DIR / name).read_bytes() == png.read_bytes()
        assert f"]({model_card.IMAGES_DIR}/{name})" in card.text
    assert f'repo_id = "someone/evit-tiny"\nrevision = "{sha}"' in card.text


def test_a_speed_measured_under_load_is_published_as_unreliable(tmp_path):
    """The card says why a figure cannot be read as the plan's speed (the benchmark's own rules) instead of
    publishing it bare: other processes busy, rounds that disagree, slower than stock at lower FLOPs."""
    busy = {**SPEED_ROW, "others_load": 0.55, "measured_speedup": 0.84, "spread": [0.82, 0.88]}
    model_card.write_model_card(tmp_path, evit_model(), speed=[busy])
    card = ModelCard.load(tmp_path / "README.md")
    (row,) = table_rows(card.text, "| Run |")
    assert row[5] == "**0.84x (0.82–0.88), unreliable**"
    assert "unreliable**, not this plan's speed: other processes kept 55% of the CPU busy" in card.text
    assert r"measured slower than stock \(0\.84x\) although its FLOPs are 1\.46x lower" in card.text  # escaped
    model_card.write_model_card(tmp_path, evit_model(), speed=[SPEED_ROW])
    assert "unreliable" not in ModelCard.load(tmp_path / "README.md").text


def test_hostile_text_cannot_break_the_front_matter_or_the_markdown(tmp_path):
    card = model_card.write_model_card(
        tmp_path, evit_model(), model_name=HOSTILE, description=HOSTILE + "\n\n# heading?\n- list?",
        accuracy={"with_reduction": 0.5, "dataset": HOSTILE, "split": HOSTILE}, tags=[HOSTILE],
        speed={**SPEED_ROW, "label": HOSTILE, "device": HOSTILE}, training={HOSTILE: HOSTILE},
    )  # fmt: skip
    text = (tmp_path / "README.md").read_text()
    loaded = ModelCard.load(tmp_path / "README.md")
    flat = model_card.one_line(HOSTILE, "x")
    assert loaded.data.to_dict() == card.data.to_dict()
    assert loaded.data.license is None and "license" not in loaded.data.to_dict()
    assert loaded.data.model_name == flat and flat in loaded.data.tags
    assert loaded.data.eval_results[0].dataset_name == flat
    front_matter = text.split("\n---\n")[0]
    assert "\nlicense:" not in front_matter and "\n---" not in front_matter.strip("-\n")
    body = loaded.text
    assert "<script>" not in body and "&lt;script&gt;" in body and "49" not in body
    assert "\\{\\{ 7\\*7 \\}\\}" in body and "\\[x\\]\\(javascript:y\\)" in body
    assert "\n# heading" not in body and "\n- list" not in body
    assert all(len(row) == 8 for row in table_rows(body, "| Run |"))  # a '|' in a cell cannot add a column


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"base_model": "a\n---\nb: c"}, "base_model"),
        ({"datasets": ["fine/name", "not a hub id"]}, "datasets"),
        ({"repo_id": "x y"}, "repo_id"),
        ({"revision": "main\nlicense: x"}, "revision"),
        ({"accuracy": {"with_reduction": 93}}, "accuracy['with_reduction']"),
        ({"accuracy": {"without_reduction": 0.9}}, "with_reduction"),
        ({"accuracy": {"with_reduction": 0.9, "top5": 0.99}}, "top5"),
        ({"speed": {"label": "no number"}}, "measured_speedup"),
        ({"speed": {"measured_speedup": -1}}, "speed[0]['measured_speedup']"),
        ({"speed": {**SPEED_ROW, "plan": {"method": "tome", "r": 2}}}, "no benchmark row measures this model's plan"),
        ({"images": {"kept_tokens": "picture.svg"}}, "images['kept_tokens']"),
        ({"images": {"Bad Key": "picture.png"}}, "images key"),
        ({"model_name": ""}, "model_name"),
    ],
)
def test_bad_card_inputs_are_refused_with_the_field_named(tmp_path, png, kwargs, field):
    (tmp_path / "picture.svg").write_text("<svg/>")
    with pytest.raises(ValueError, match=re.escape(field)):
        model_card.write_model_card(tmp_path, evit_model(), **kwargs)
    assert not (tmp_path / "README.md").exists()


def benchmark_rows(config, **changes) -> list[dict]:
    """Rows as hf_tokenprune's benchmark writes them: this plan at two batch sizes, and another plan."""
    mine = {**SPEED_ROW, "plan": config.token_reduction, "attention_reuse": config.attention_reuse, **changes}
    other = {**SPEED_ROW, "label": "tome", "plan": {"method": "tome", "r": 2}, "attention_reuse": None}
    return [mine, {**mine, "batch_size": 64, "spread": [1.2, 1.4]}, other]


def test_card_command_rewrites_the_card_of_a_saved_folder(tmp_path, png, capsys):
    model = evit_model()
    model.save_pretrained(tmp_path / "model")
    benchmark = {"machine": {"device": "cpu"}, "rows": benchmark_rows(model.config)}
    (tmp_path / "bench.json").write_text(json.dumps(benchmark))
    argv = ["card", str(tmp_path / "model"), "--base-model", "google/vit-base-patch16-224", "--accuracy", "0.8",
            "--accuracy-without-reduction", "0.82", "--eval-dataset", "digits", "--benchmark",
            str(tmp_path / "bench.json"), "--kept-tokens", str(png), "--repo-id", "me/evit",
            "--tag", "demo"]  # fmt: skip
    assert cli_main(argv) == 0
    card = ModelCard.load(tmp_path / "model" / "README.md")
    assert card.data.base_model == "google/vit-base-patch16-224" and "demo" in card.data.tags
    assert [r.metric_value for r in card.data.eval_results] == [0.8, 0.82]
    speed = table_rows(card.text, "| Run |")  # the other plan's row is left out
    assert [(row[2], row[5]) for row in speed] == [("8", "**1.31x**"), ("64", "**1.31x (1.20–1.40)**")]
    assert (tmp_path / "model" / model_card.IMAGES_DIR / "kept_tokens.png").is_file()
    assert cli_main(["card", str(tmp_path / "model"), "--accuracy", "93"]) == 2
    assert "error: accuracy['with_reduction'] = 93.0 must be a fraction" in capsys.readouterr().err
    assert cli_main(["card", str(tmp_path)]) == 2


# ----------------------------------------------------------------------------------------------------------------
# Pushing through the loopback Hub
# ----------------------------------------------------------------------------------------------------------------


class TinyImages(torch.utils.data.Dataset):
    def __init__(self, count: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.pixels = torch.randn(count, 3, 32, 32, generator=generator)
        self.labels = torch.randint(0, TINY["num_labels"], (count,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixels[index], "labels": self.labels[index]}


def accuracy_metric(prediction) -> dict:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def tiny_trainer(model, output_dir, repo_name: str) -> TokenPruneTrainer:
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=3, per_device_train_batch_size=4, per_device_eval_batch_size=8,
        learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
        hub_model_id=repo_name, disable_tqdm=True, seed=0,
    )  # fmt: skip
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    return TokenPruneTrainer(
        model=model, args=args, train_dataset=TinyImages(12, 0), eval_dataset=TinyImages(8, 1),
        compute_metrics=accuracy_metric, processing_class=processor,
    )  # fmt: skip


def test_trainer_card_takes_the_evaluation_and_the_stock_arguments(tmp_path):
    trainer = tiny_trainer(evit_model(seed=4), tmp_path / "run", "card-only")
    accuracy = trainer.evaluate(ignore_keys=OUTPUT_BOOKKEEPING)["eval_accuracy"]
    trainer.create_model_card("en", "apache-2.0", "my-tag", finetuned_from="google/vit-base-patch16-224")
    card = ModelCard.load(tmp_path / "run" / "README.md")
    assert card.data.license == "apache-2.0" and "my-tag" in card.data.tags and "token-pruning" in card.data.tags
    assert card.data.base_model == "google/vit-base-patch16-224" and card.data.model_name == "card-only"
    assert card.data.eval_results[0].metric_value == accuracy
    assert ["learning\\_rate", "0\\.001"] in table_rows(card.text, "| Hyperparameter |")


CLEAN_LOAD = textwrap.dedent(
    """
    import json, sys, torch
    from pathlib import Path
    sys.modules["hf_tokenprune"] = None  # the package must not be importable
    from huggingface_hub import snapshot_download
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    def snapshot_files(root):
        return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())

    results = {}
    for repo_id, revision in json.loads(sys.argv[1]):
        model = AutoModelForImageClassification.from_pretrained(repo_id, trust_remote_code=True, revision=revision)
        processor = AutoImageProcessor.from_pretrained(repo_id, revision=revision)
        pixels, expected = torch.load(sys.argv[2] + "/" + repo_id.replace("/", "--") + ".pt")
        with torch.no_grad():
            logits = model.eval()(pixels).logits
        results[repo_id] = {
            "module": type(model).__module__,
            "max_diff": (logits - expected).abs().max().item(),
            "plan": model.config.token_reduction,
            "reuse": model.config.attention_reuse,
            "processor_size": processor.size["height"],
            "snapshot": snapshot_files(snapshot_download(repo_id)),  # main: repo info, tree, every file
        }
    print(json.dumps(results))
    """
)


def pinned_revision(card_text: str) -> str:
    return re.search(r'^revision = "([0-9a-f]{40})"$', card_text, re.MULTILINE).group(1)


@pytest.mark.slow
def test_push_then_load_from_the_hub_in_a_clean_process(loopback_hub, tmp_path, png, capfd):
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    expected = {}

    # TokenPruneTrainer.push_to_hub: train a few steps, evaluate, push (the card takes the Trainer's eval accuracy).
    trainer = tiny_trainer(evit_model(seed=1), tmp_path / "run", "trained-evit")
    trainer.train()
    eval_accuracy = trainer.evaluate(ignore_keys=OUTPUT_BOOKKEEPING)["eval_accuracy"]
    trainer.push_to_hub(finetuned_from="google/vit-base-patch16-224", dataset_tags="ylecun/mnist")
    trained = "loopback-user/trained-evit"
    with torch.no_grad():
        expected[trained] = trainer.model.eval()(pixels).logits

    # push_to_hub(model, ...): attention reuse with token merging, measurements given by hand.
    torch.manual_seed(2)
    tome = TokenPruneViTForImageClassification(tiny_config(**REUSE_PLANS["skipat+tome"])).eval()
    hub.push_to_hub(
        tome, "someone/tome-tiny", image_processor=ViTImageProcessor(size={"height": 32, "width": 32}),
        accuracy={"with_reduction": 0.61, "without_reduction": 0.64, "dataset": "digits"}, speed=SPEED_ROW,
        images={"kept_tokens": png},
    )  # fmt: skip
    with torch.no_grad():
        expected["someone/tome-tiny"] = tome(pixels).logits

    # What the Hub received: safetensors weights, config with auto_map, every island file, processor, card.
    island = {path.name for path in island_files(tome)}
    pinned = {}
    for repo_id in expected:
        files = loopback_hub.files(repo_id)
        assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} | island <= set(files)
        assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
        assert json.loads(files["config.json"])["auto_map"]["AutoModelForImageClassification"]
        card = ModelCard.load(repo_id)  # downloaded from the loopback Hub
        assert card.data.library_name == "transformers" and "custom_code" in card.data.tags
        pinned[repo_id] = pinned_revision(card.text)
        commits = loopback_hub.repos[repo_id].commits
        assert "README.md" not in commits[pinned[repo_id]].files  # the pinned commit holds weights and code
        assert island <= set(commits[pinned[repo_id]].files)
        torch.save((pixels, expected[repo_id]), tmp_path / (repo_id.replace("/", "--") + ".pt"))
    trained_card = ModelCard.load(trained)
    assert trained_card.data.eval_results[0].metric_value == eval_accuracy
    assert trained_card.data.base_model == "google/vit-base-patch16-224"
    tome_card = ModelCard.load("someone/tome-tiny")
    assert tome_card.data.eval_results[0].metric_value == 0.61
    assert loopback_hub.files("someone/tome-tiny")[f"{model_card.IMAGES_DIR}/kept_tokens.png"] == png.read_bytes()
    assert f"]({model_card.IMAGES_DIR}/kept_tokens.png)" in tome_card.text

    # Another user, in a fresh process where hf_tokenprune cannot be imported, with an empty cache and no token.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE", "PYTHONPATH")}
    env.update(HF_ENDPOINT=loopback_hub.endpoint, HF_HOME=str(tmp_path / "other_user"), OMP_NUM_THREADS="1")
    requests_before = len(loopback_hub.requests)
    result = subprocess.run(
        [sys.executable, "-c", CLEAN_LOAD, json.dumps(list(pinned.items())), str(tmp_path)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for repo_id in expected:
        assert report[repo_id]["max_diff"] == 0.0
        assert report[repo_id]["module"].startswith("transformers_modules")
        assert report[repo_id]["processor_size"] == 32
        assert report[repo_id]["snapshot"] == sorted(loopback_hub.files(repo_id))
    assert report["someone/tome-tiny"]["plan"] == tome.config.token_reduction
    assert report["someone/tome-tiny"]["reuse"] == tome.config.attention_reuse
    downloads = [path for method, path, _ in loopback_hub.requests[requests_before:] if method == "GET"]
    assert any(path.endswith(f"/resolve/{pinned[trained]}/reduction_evit.py") for path in downloads)
    assert not loopback_hub.unhandled and not loopback_hub.errors

    # The token: sent to the Hub, never written to a file there or here, never printed.
    captured = capfd.readouterr()
    for repo in loopback_hub.repos.values():
        for commit in repo.commits.values():
            assert not [path for path, data in commit.files.items() if TOKEN.encode() in data]
    local_files = [path for path in (tmp_path / "run").rglob("*") if path.is_file()]
    assert not [path for path in local_files if TOKEN.encode() in path.read_bytes()]
    for output in (captured.out, captured.err, result.stdout, result.stderr):
        assert TOKEN not in output


# ----------------------------------------------------------------------------------------------------------------
# Refusals and the models we leave alone
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def runtime_method():
    """A method registered by user code at runtime (keeps every token), removed afterwards."""

    @register_reduction("user_keep_all")
    class UserKeepAll(TokenReduction):
        pass

    yield "user_keep_all"
    hf_tokenprune.REDUCTION_METHODS.pop("user_keep_all", None)


def test_a_method_registered_at_runtime_is_refused_before_any_upload(loopback_hub, tmp_path, runtime_method):
    model = TokenPruneViTForImageClassification(tiny_config(token_reduction={"method": runtime_method}))
    with pytest.raises(ValueError, match=r"'user_keep_all' is not built into hf_tokenprune.*Built-in methods: \["):
        model.push_to_hub("someone/custom")
    with pytest.raises(ValueError, match="'evit'") as error:  # the message lists the built-in methods
        hub.push_to_hub(model, "someone/custom")
    assert "test_hub.py" in str(error.value)
    with pytest.raises(ValueError, match="user_keep_all"):
        tiny_trainer(model, tmp_path / "run", "custom").push_to_hub()
    assert loopback_hub.requests == [] and loopback_hub.commit_count() == 0


def test_a_folder_containing_the_token_is_refused_before_any_upload(loopback_hub, tmp_path):
    with pytest.raises(ValueError, match="README.md' contains your Hugging Face access token") as error:
        hub.push_to_hub(evit_model(), "someone/leaky", description=f"my token is {TOKEN}")
    assert TOKEN not in str(error.value)
    with pytest.raises(ValueError, match="README.md' contains your Hugging Face access token"):
        tiny_trainer(evit_model(), tmp_path / "run", "leaky-run").push_to_hub(model_name=TOKEN)
    assert loopback_hub.requests == [] and loopback_hub.commit_count() == 0


def test_push_to_a_branch_leaves_main_alone(loopback_hub):
    info = hub.push_to_hub(evit_model(), "someone/branchy", revision="release", commit_message="first release")
    repo = loopback_hub.repos["someone/branchy"]
    assert set(loopback_hub.files("someone/branchy", "main")) == {".gitattributes"}
    assert repo.branches["release"] == info.oid and "README.md" in loopback_hub.files("someone/branchy", "release")
    model_commit = repo.commits[repo.commits[info.oid].parent]
    assert model_commit.message == "first release" and "model.safetensors" in model_commit.files
    assert f'revision = "{model_commit.oid}"' in loopback_hub.files("someone/branchy", "release")["README.md"].decode()


# family -> (name in the card, stock class, pipeline tag, a base checkpoint of that family)
FAMILY_CARDS = {
    "deit": ("DeiT", "DeiTForImageClassificationWithTeacher", "image-classification",
             "facebook/deit-tiny-distilled-patch16-224"),
    "dinov2": ("DINOv2", "Dinov2ForImageClassification", "image-classification", "facebook/dinov2-small"),
    "dinov2-registers": ("DINOv2 with registers", "Dinov2WithRegistersForImageClassification", "image-classification",
                         "facebook/dinov2-with-registers-small"),
    "clip": ("CLIP vision tower", "CLIPVisionModel", "image-feature-extraction", "openai/clip-vit-base-patch16"),
    "siglip": ("SigLIP vision tower", "SiglipVisionModel", "image-feature-extraction",
               "google/siglip-base-patch16-224"),
    "videomae": ("VideoMAE", "VideoMAEForVideoClassification", "video-classification",
                 "MCG-NJU/videomae-base-finetuned-kinetics"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FAMILY_CARDS))
def test_push_of_every_family_uploads_its_card(loopback_hub, name):
    family, stock_class, pipeline_tag, base = FAMILY_CARDS[name]
    torch.manual_seed(0)
    spec = FAMILIES[name]
    model = spec.model(spec.config(**spec.settings(), token_reduction={"method": "tome", "r": 3})).eval()
    repo_id = f"someone/{name}-tome"
    hub.push_to_hub(model, repo_id, base_model=base)
    files = loopback_hub.files(repo_id)
    assert {"model.safetensors", "config.json", "README.md"} | spec.island <= set(files)
    card = ModelCard.load(repo_id)
    assert card.data.base_model == base and card.data.pipeline_tag == pipeline_tag
    assert {spec.model.config_class.model_type.split("_")[1], "tome", "custom_code"} <= set(card.data.tags)
    summary = next(line for line in card.text.split("\n") if line.startswith("A "))
    assert summary.startswith(f"A {family} model for ") and f"`{stock_class}`" in summary
    assert f"https://huggingface.co/{base})" in summary and "**`tome`** (token reduction)" in summary
    assert ("`method`", "tome") in [tuple(row) for row in table_rows(card.text, "| Option |")]
    assert len(table_rows(card.text, "| Layer |")) == TINY["num_hidden_layers"]
    assert card.data.tags.count("vit") == 0 and "ViT" not in summary


def test_trainer_push_of_a_family_model_uploads_its_card(loopback_hub, tmp_path):
    spec = FAMILIES["dinov2"]
    torch.manual_seed(0)
    model = spec.model(spec.config(**spec.settings(), token_reduction=REDUCING_PLANS["evit"]))
    trainer = tiny_trainer(model, tmp_path / "run", "dinov2-evit")
    trainer.train()
    trainer.evaluate(ignore_keys=OUTPUT_BOOKKEEPING)
    trainer.push_to_hub(finetuned_from="facebook/dinov2-small")
    card = ModelCard.load("loopback-user/dinov2-evit")
    assert card.data.base_model == "facebook/dinov2-small" and card.data.eval_results[0].metric_type == "accuracy"
    assert "A DINOv2 model for image classification" in card.text and "evit" in card.data.tags
    assert not [path for path in loopback_hub.files("loopback-user/dinov2-evit") if path.endswith(".bin")]


def test_card_command_reads_a_family_folder(tmp_path, capsys):
    spec = FAMILIES["dinov2-registers"]
    model = spec.model(spec.config(**spec.settings(), token_reduction=REDUCING_PLANS["evit"]))
    model.save_pretrained(tmp_path)
    assert cli_main(["card", str(tmp_path), "--base-model", "facebook/dinov2-with-registers-small"]) == 0
    card = ModelCard.load(tmp_path / "README.md")
    assert "A DINOv2 with registers model for image classification" in card.text
    assert "`Dinov2WithRegistersForImageClassification`" in card.text and "evit" in card.data.tags
    ViTForImageClassification(ViTConfig(**TINY)).save_pretrained(tmp_path / "stock")
    assert cli_main(["card", str(tmp_path / "stock")]) == 2
    assert "holds a 'vit' model; cards are for tokenprune_vit" in capsys.readouterr().err


def test_other_models_keep_the_stock_push_and_card(loopback_hub, tmp_path):
    torch.manual_seed(0)
    stock = ViTForImageClassification(ViTConfig(**TINY))
    stock.push_to_hub("someone/stock-vit")
    files = loopback_hub.files("someone/stock-vit")
    assert "hf-tokenprune" not in files["README.md"].decode() and "modeling_tokenprune_vit.py" not in files
    assert "transformers model that has been pushed on the Hub" in files["README.md"].decode()  # the stock card
    with pytest.raises(ValueError, match="'vit' model or config"):
        hub.push_to_hub(stock, "someone/not-ours")
    trainer = tiny_trainer(stock, tmp_path / "stock_run", "stock-run")
    trainer.create_model_card(model_name="stock-run")
    readme = (tmp_path / "stock_run" / "README.md").read_text()
    assert "generated_from_trainer" in readme and "token-pruning" not in readme


def test_model_push_to_hub_is_transformers_own_push_of_weights_and_remote_code(loopback_hub):
    model = evit_model()
    model.push_to_hub("someone/plain-push")
    files = loopback_hub.files("someone/plain-push")
    assert {"model.safetensors", "config.json"} | {path.name for path in island_files(model)} <= set(files)
    card = files["README.md"].decode()
    assert "transformers model that has been pushed on the Hub" in card and "hf-tokenprune" not in card


def test_push_of_siglip2_uploads_its_card(loopback_hub):
    from family_matrix import SIGLIP2_TINY as SIGLIP2

    from hf_tokenprune import TokenPruneSiglip2VisionConfig, TokenPruneSiglip2VisionModel

    torch.manual_seed(0)
    config = TokenPruneSiglip2VisionConfig(**SIGLIP2, token_reduction={"method": "tome", "r": 3})
    base = "google/siglip2-base-patch16-naflex"
    model = TokenPruneSiglip2VisionModel(config).eval()
    hub.push_to_hub(model, "someone/siglip2-tome", base_model=base)
    files = set(loopback_hub.files("someone/siglip2-tome"))
    island = {path.name for path in island_files(model)}
    assert {"modeling_tokenprune_siglip2.py", "modeling_tokenprune_clip.py", "token_reduction.py"} <= island
    assert {"model.safetensors", "config.json", "README.md"} | island <= files
    card = ModelCard.load("someone/siglip2-tome")
    assert card.data.base_model == base and {"siglip2", "tome", "custom_code"} <= set(card.data.tags)
    summary = next(line for line in card.text.split("\n") if line.startswith("A "))
    assert summary.startswith("A SigLIP 2 vision tower model for ") and "`Siglip2VisionModel`" in summary
    assert len(table_rows(card.text, "| Layer |")) == SIGLIP2["num_hidden_layers"]


def test_the_template_is_family_neutral():
    path = template_path()
    assert path.name == "tokenprune.md" and path.parent.name == "model_cards"
    text = path.read_text(encoding="utf-8")
    assert "{{ family }}" in text and "{{ stock_class }}" in text
    assert "vit" not in text.lower()  # the family, its stock class and its Auto class come from the model


def test_a_folder_with_only_the_older_template_name_still_works(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    (old / "tokenprune_vit.md").write_text("old", encoding="utf-8")
    (new / "tokenprune.md").write_text("new", encoding="utf-8")
    assert template_path([old]) == old / "tokenprune_vit.md"
    assert template_path([old, new]) == new / "tokenprune.md"  # the current name wins wherever it is
    with pytest.raises(FileNotFoundError, match="card template tokenprune.md not found in"):
        template_path([Path(tmp_path / "empty")])
