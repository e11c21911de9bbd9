"""Official checkpoints converted: the checkpoints in tests/fixtures/checkpoints were saved by
``scripts/make_reference_fixtures.py`` exactly as the official training scripts save them (``{"model": ...,
"optimizer", "epoch", "args": Namespace}``), from the official model code with the weights of the reference fixture of
the same name, whose inputs and official logits they are checked against."""

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hub_server import LoopbackHub, use_loopback_hub
from safetensors import safe_open

import hf_tokenprune
from hf_tokenprune import TokenPruneViTConfig
from hf_tokenprune.commands.main import main as cli_main
from hf_tokenprune.convert import PUBLISHED, SOURCES, convert_official_checkpoint

FIXTURES = Path(__file__).parents[1] / "fixtures"
CHECKPOINTS = sorted((FIXTURES / "checkpoints").glob("*.pth"))
TINY_ARCH = {"num_attention_heads": 2}  # the fixtures' width (16) is not a multiple of 64: give the heads
TOKEN = "hf_LoopbackDummyToken0123456789abcdef"


def reference(name: str) -> tuple[dict, dict]:
    with safe_open(str(FIXTURES / f"{name}.safetensors"), framework="pt") as file:
        return file.metadata(), {key: file.get_tensor(key) for key in file.keys()}


def fixture_plans(metadata: dict) -> dict:
    config = json.loads(metadata["config"])
    return {"token_reduction": config.get("token_reduction"), "attention_reuse": config.get("attention_reuse")}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_there_is_a_checkpoint_for_every_method_with_a_layout():
    methods = {reference(path.stem)[0]["method"] for path in CHECKPOINTS}
    assert methods == set(SOURCES) - {"none"}


@pytest.mark.parametrize("path", CHECKPOINTS, ids=[path.stem for path in CHECKPOINTS])
def test_converted_checkpoint_gives_the_official_logits(path):
    metadata, tensors = reference(path.stem)
    model = convert_official_checkpoint(path, metadata["method"], arch=TINY_ARCH, **fixture_plans(metadata))
    # Every parameter filled with the official weights under our names (the converter raised if a key was unused).
    weights = {key.removeprefix("weights."): value for key, value in tensors.items() if key.startswith("weights.")}
    state = model.state_dict()
    for key, value in weights.items():
        assert torch.equal(state[key], value), key
    with torch.no_grad():
        out = model(tensors["pixel_values"], interpolate_pos_encoding=True)  # SuperViT at 40 px: its own table
    torch.testing.assert_close(out.logits, tensors["logits_fp32"], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "name", ["dynamicvit_07", "evo_vit_05", "skipat_3_8", "cropr_llf", "evit_fuse", "supervit_07"]
)
def test_without_a_plan_the_official_operating_point_is_used(name):
    metadata, tensors = reference(name)
    model = convert_official_checkpoint(FIXTURES / "checkpoints" / f"{name}.pth", metadata["method"], arch=TINY_ARCH)
    wanted = TokenPruneViTConfig(**json.loads(metadata["config"]))
    for field in ("token_reduction", "attention_reuse"):
        plan = dict(getattr(model.config, field) or {})
        if plan.get("method") == "cropr":  # the official checkpoints carry Cropr's auxiliary heads
            assert plan.pop("training_heads") is True
            plan["training_heads"] = False
        assert plan == (getattr(wanted, field) or {}), field
    with torch.no_grad():
        logits = model(tensors["pixel_values"], interpolate_pos_encoding=True).logits
    torch.testing.assert_close(logits, tensors["logits_fp32"], atol=1e-5, rtol=0)


def test_a_folder_loads_in_a_process_without_the_package_and_pushes_with_its_card(tmp_path, monkeypatch):
    metadata, tensors = reference("dynamicvit_07")
    folder = tmp_path / "converted"
    with LoopbackHub(TOKEN) as hub:
        use_loopback_hub(monkeypatch, hub, tmp_path / "hf_home")
        convert_official_checkpoint(
            FIXTURES / "checkpoints" / "dynamicvit_07.pth", published="dynamicvit-deit-s-0.7", arch=TINY_ARCH,
            output=folder, push_to_hub="someone/dynamicvit-tiny",
        )  # fmt: skip
        pushed = hub.files("someone/dynamicvit-tiny")
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= set(pushed)
    card = (folder / "README.md").read_text()
    assert "79.32%" in card and "reported by the authors" in card and "raoyongming/DynamicViT" in card
    assert "logits equal the official model's" in card
    assert b"reported by the authors" in pushed["README.md"]
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["crop_pct"] == 0.875 and processor["resample"] == 3 and processor["image_std"][0] == 0.229
    torch.save(tensors["pixel_values"], tmp_path / "pixels.pt")
    script = textwrap.dedent(
        """
        import sys, torch
        sys.modules["hf_tokenprune"] = None  # the package must not be importable
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        with torch.no_grad():
            torch.save(model(torch.load(sys.argv[2])).logits, sys.argv[3])
        print(type(model).__module__)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder), str(tmp_path / "pixels.pt"), str(tmp_path / "logits.pt")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith("transformers_modules")
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), tensors["logits_fp32"], atol=1e-5, rtol=0)


def test_the_package_offers_the_converter_at_the_top():
    assert hf_tokenprune.convert_official_checkpoint is convert_official_checkpoint


def timm_state(width=64, depth=2, patch=16, image=32, labels=3, distilled=False, seed=0) -> dict:
    """A plain timm ViT/DeiT state dict (the layout of timm and of the DeiT repository) with random values."""
    generator = torch.Generator().manual_seed(seed)
    prefix = 2 if distilled else 1

    def rand(*shape):
        return 0.05 * torch.randn(*shape, generator=generator)

    state = {"cls_token": rand(1, 1, width), "pos_embed": rand(1, (image // patch) ** 2 + prefix, width),
             "patch_embed.proj.weight": rand(width, 3, patch, patch), "patch_embed.proj.bias": rand(width),
             "norm.weight": 1 + rand(width), "norm.bias": rand(width),
             "head.weight": rand(labels, width), "head.bias": rand(labels)}  # fmt: skip
    if distilled:
        state.update({"dist_token": rand(1, 1, width), "head_dist.weight": rand(labels, width),
                      "head_dist.bias": rand(labels)})  # fmt: skip
    for layer in range(depth):
        block = f"blocks.{layer}."
        state.update({f"{block}norm1.weight": 1 + rand(width), f"{block}norm1.bias": rand(width),
                      f"{block}attn.qkv.weight": rand(3 * width, width), f"{block}attn.qkv.bias": rand(3 * width),
                      f"{block}attn.proj.weight": rand(width, width), f"{block}attn.proj.bias": rand(width),
                      f"{block}norm2.weight": 1 + rand(width), f"{block}norm2.bias": rand(width),
                      f"{block}mlp.fc1.weight": rand(4 * width, width), f"{block}mlp.fc1.bias": rand(4 * width),
                      f"{block}mlp.fc2.weight": rand(width, 4 * width),
                      f"{block}mlp.fc2.bias": rand(width)})  # fmt: skip
    return state


def test_a_distilled_deit_converts_into_the_deit_class_and_keeps_both_heads(tmp_path):
    state = timm_state(distilled=True)
    torch.save({"model": state}, tmp_path / "deit.pth")
    model = convert_official_checkpoint(tmp_path / "deit.pth", "none", token_reduction={"method": "tome", "r": 1})
    assert type(model).__name__ == "TokenPruneDeiTForImageClassificationWithTeacher"
    weights = model.state_dict()
    assert torch.equal(weights["deit.embeddings.distillation_token"], state["dist_token"])
    assert torch.equal(weights["distillation_classifier.weight"], state["head_dist.weight"])
    assert model.config.num_attention_heads == 1 and model.config.token_reduction["r"] == [1, 1]
    plain = convert_official_checkpoint(tmp_path / "deit.pth", "none")
    with torch.no_grad():  # the ViT blocks read the same way: a ViT with these weights and no plan agrees
        pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        assert plain(pixels).logits.shape == (1, 3)


def test_the_command_converts_a_state_dict_under_module_prefixes(tmp_path, capsys):
    state = {f"module.{key}": value for key, value in timm_state().items()}
    torch.save({"state_dict": state, "epoch": 3, "args": argparse.Namespace(lr=0.1)}, tmp_path / "ckpt.pth")
    code = cli_main(["convert", str(tmp_path / "ckpt.pth"), "--method", "tome", "--output", str(tmp_path / "out"),
                     "--token-reduction", '{"r": 1}', "--eval-transform", "augreg"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "read 32 tensors" in out and "['state_dict']" in out and "'r': 1" in out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["token_reduction"]["r"] == [1, 1] and config["hidden_size"] == 64
    assert json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())["crop_pct"] == 0.9
    assert "No accuracy is stated for this checkpoint" in (tmp_path / "out" / "README.md").read_text()


class Executable:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    "make, args, message",
    [
        (lambda p: torch.save({"model": timm_state(), "x": Executable()}, p), ["--method", "evit"],
         r"needs code to load .*it was not run"),
        (lambda p: p.write_bytes(b"PK\x03\x04truncated"), ["--method", "evit"],
         r"truncated or not a PyTorch checkpoint"),
        (lambda p: torch.save({"model": timm_state()}, p), ["--method", "dynamicvit"],
         r"has no score_predictor\.\* keys: it is not a dynamicvit checkpoint"),
        (lambda p: torch.save({"model": {**timm_state(), "qks.0.qk.weight": torch.zeros(1)}}, p), ["--method", "evit"],
         r"holds evo_vit's modules \(qks.0.qk.weight, ...\), not evit's; convert it with --method evo_vit"),
        (lambda p: torch.save({"model": timm_state()}, p), ["--method", "evit", "--arch", "vit-small-patch16-224"],
         r"does not have the shape of --arch vit-small-patch16-224: hidden_size is 64 in the checkpoint, 384"),
        (lambda p: torch.save({"model": timm_state()}, p), ["--method", "evit", "--arch", "vit-huge"],
         r"--arch 'vit-huge' is not a built-in ViT shape"),
        (lambda p: torch.save({"model": {**timm_state(), "extra.weight": torch.zeros(1)}}, p), ["--method", "evit"],
         r"1 keys that no part of a evit model takes \(first: \['extra.weight'\]\)"),
        (lambda p: torch.save({"optimizer": {}}, p), ["--method", "evit"], r"holds no weights: found \['optimizer'\]"),
        (lambda p: torch.save({"model": timm_state()}, p), ["--published", "evit-deit-s-fuse-0.3"],
         r"--published 'evit-deit-s-fuse-0.3' is not a known release"),
    ],
    ids=["code", "truncated", "other-method", "modules-of-another", "arch", "unknown-arch", "extra-key", "empty",
         "published"],
)  # fmt: skip
def test_bad_input_is_refused_in_one_line(tmp_path, capsys, make, args, message):
    path = tmp_path / "ckpt.pth"
    make(path)
    code = cli_main(["convert", str(path), *args, "--output", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2 and "this must never run" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_not_empty_is_kept_unless_overwrite(tmp_path):
    torch.save({"model": timm_state()}, tmp_path / "ckpt.pth")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="--output .* already exists and is not empty"):
        convert_official_checkpoint(tmp_path / "ckpt.pth", "evit", output=tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    convert_official_checkpoint(tmp_path / "ckpt.pth", "evit", output=tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "config.json").exists() and not (tmp_path / "out" / "notes.txt").exists()


def test_every_published_release_names_a_method_with_a_layout_and_a_plan_that_validates():
    from hf_tokenprune import TokenPruneViTConfig
    from hf_tokenprune.convert.sources import plan_for

    for entry in PUBLISHED.values():
        assert entry.method in SOURCES and 0 < entry.top1 < 100
        plan = plan_for(entry.method, entry.plan)
        field = "attention_reuse" if SOURCES[entry.method].reuse else "token_reduction"
        TokenPruneViTConfig(**{field: plan})  # validates at ViT-B/16 224
