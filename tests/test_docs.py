"""The docs stay true: README.md is a front page; every table of measured numbers is the rendering of its saved result;
every relative link and picture exists; every `hf-tokenprune` command the docs write parses; the front page's Python
runs as written (a Hub checkpoint replaced by a small local folder of the same class); and the "next steps" commands
run on a folder the main job wrote."""

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


def test_the_front_page_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move sections to docs/"


def test_every_rendered_table_is_its_saved_result_rendered(capsys):
    """No hand-edited figure: rendering every page again from the saved results changes nothing."""
    render = load_script("render_docs")
    assert render.main(["--check"]) == 0, capsys.readouterr().out
    blocks = sum(len(render.BLOCK.findall(page.read_text())) for page in PAGES if page.is_file())
    assert blocks >= 10


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_and_pictures_exist(page):
    text = FENCE.sub("", page.read_text())  # links inside code are code
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def commands(text: str) -> list[list[str]]:
    """Every `hf-tokenprune ...` command in the code blocks and inline code of a page, as argument lists."""
    found = []
    for _, block in FENCE.findall(text):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            for part in re.split(r"&&|;", line.split("  #")[0]):
                if part.strip().startswith("hf-tokenprune "):
                    found.append(part.strip())
    found += [code for code in re.findall(r"`(hf-tokenprune [^`]+)`", FENCE.sub("", text))]
    parsed = []
    for command in found:
        try:
            parsed.append(shlex.split(command)[1:])
        except ValueError:  # a command cut in prose ('...'), written over two lines
            parsed.append(shlex.split(command.split("'")[0])[1:])
    return parsed


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_command_the_docs_write_exists_with_its_options(page):
    from hf_tokenprune.commands.main import build_parser, dashed

    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    for argv in commands(page.read_text()):
        if not argv or argv[0].startswith("-"):  # hf-tokenprune --help / --version
            assert not argv or argv[0] in ("--help", "--version", "-h"), argv
            continue
        verb = argv[0]
        assert verb in verbs, f"{page.name}: unknown command {verb!r} in {argv}"
        known = {option for action in verbs[verb]._actions for option in action.option_strings}
        flags = [arg.split("=")[0] for arg in dashed(argv[1:]) if arg.startswith("--")]
        unknown = [flag for flag in flags if flag not in known]
        assert not unknown, f"{page.name}: {verb} has no option {unknown} (in {argv})"


def test_the_docs_name_every_command():
    from hf_tokenprune.commands.main import VERBS

    cli = (ROOT / "docs" / "cli.md").read_text()
    for verb in VERBS:
        name = verb.__name__.rsplit(".", 1)[-1]
        assert f"`hf-tokenprune {name}`" in cli


@pytest.fixture
def local_vit(tmp_path):
    """A small ViT saved with its image processor: 12 layers (the front page's plan names layers 3, 6 and 9)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=12, num_attention_heads=2,
                       intermediate_size=64, num_labels=3)  # fmt: skip
    folder = tmp_path / "vit"
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.mark.usefixtures("one_thread")
def test_the_front_pages_python_runs_as_written(local_vit, capsys):
    blocks = [code for language, code in FENCE.findall((ROOT / "README.md").read_text()) if language == "python"]
    assert blocks, "the front page has a Python quickstart"
    for code in blocks:
        assert "google/vit-base-patch16-224" in code
        exec(compile(code.replace("google/vit-base-patch16-224", str(local_vit)), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("LABEL_") and printed[1].startswith("[65, 65, 65")  # 64 patches and CLS


@pytest.mark.slow
def test_the_next_steps_run_on_the_folder_the_main_job_wrote(tmp_path, monkeypatch):
    """Each command of the front page's "next steps", as written, on a folder the main job wrote (trained for a few
    steps only; fewer timing rounds and images where the commands take them). The `hf-tokenprune` lines run through
    the console script's entry point in this process (a process each would spend most of the time importing torch);
    the Python line runs as a process."""
    import os
    import subprocess

    from example_support import load_example
    from transformers.utils import logging as hf_logging

    from hf_tokenprune.commands.main import main

    folder = tmp_path / "outputs" / "cluttered-digits-evit"
    short = ["--max_steps", "3", "--digits_copies", "1", "--eval_strategy", "no", "--benchmark_rounds", "2",
             "--benchmark_batch_size", "8", "--disable_tqdm", "true", "--dataloader_pin_memory", "false"]  # fmt: skip
    load_example().main(["--output_dir", str(folder), *short])
    block = (ROOT / "README.md").read_text().split("## Next steps")[1].split("```bash\n")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for line in block.strip().splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith("pip install"):  # the export extra is part of the test environment
            line = line.split("&&", 1)[1].strip()
        line = line.replace("--rounds 10", "--rounds 2")
        if line.startswith("hf-tokenprune tune"):
            line += " --max-images 16 --rounds 2 --time-budget 1"  # still tries the mildest point of each method
        if line.startswith("hf-tokenprune "):
            threads, verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
            try:
                assert main(shlex.split(line)[1:]) == 0, line
            finally:  # --threads and the quiet loading are the command's, not the rest of the suite's
                torch.set_num_threads(threads)
                hf_logging.set_verbosity(verbosity)
            continue
        done = subprocess.run(line, shell=True, capture_output=True, text=True, env=env, timeout=900)
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    outputs = tmp_path / "outputs"
    assert (outputs / "evit.onnx").is_file() and (outputs / "tuned" / "config.json").is_file()
