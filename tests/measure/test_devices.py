"""Devices: the library never names or imports a device backend; Accelerate and the Trainer choose the device.

The same code then runs on CPU, CUDA, Ascend NPU (torch_npu + Accelerate's MULTI_NPU) and MPS. The one allowed place
is the ``--device`` option parsing of `hf_tokenprune.measure.devices` (functions and constants whose name says
"device" or "npu")."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "hf_tokenprune"
CONFIGS = ROOT / "examples" / "accelerate_configs"

# Backend names as they appear in code: torch.cuda, "npu", torch_npu, mps, xpu, ... ('input' does not match 'npu':
# a name must not be glued to other letters).
DEVICE_NAME = re.compile(
    r"(?<![a-z])(cuda|cudnn|nccl|npu|hccl|mps|xpu|hpu|mlu|musa|xla|tpu|habana|ipex)(?![a-z])", re.IGNORECASE
)
BACKEND_MODULES = {
    "torch_npu",
    "intel_extension_for_pytorch",
    "habana_frameworks",
    "torch_mlu",
    "torch_musa",
    "torch_xla",
    "torch_directml",
}
ALLOWED_FILE = "measure/devices.py"  # the --device option parsing, and only that
ALLOWED_SCOPE = re.compile(r"device|npu", re.IGNORECASE)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _words(node: ast.AST, docstrings: set[int]) -> list[str]:
    """Identifiers, attribute names, imported modules and (non-doc) string literals of one node."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.alias):
        return [node.name, node.asname or ""]
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, ast.keyword):
        return [node.arg or ""]
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
        return [node.value]
    return []


def _allowed_nodes(tree: ast.Module) -> set[int]:
    """Nodes inside the benchmark's device-parsing functions and constants."""
    allowed = set()
    for top in tree.body:
        names = []
        if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = [top.name]
        elif isinstance(top, (ast.Assign, ast.AnnAssign)):
            targets = top.targets if isinstance(top, ast.Assign) else [top.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
        if any(ALLOWED_SCOPE.search(name) for name in names):
            allowed.update(id(node) for node in ast.walk(top))
    return allowed


def device_names_in(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = _docstrings(tree)
    allowed = _allowed_nodes(tree) if path == PACKAGE / ALLOWED_FILE else set()
    hits = []
    for node in ast.walk(tree):
        if id(node) in allowed:
            continue
        for word in _words(node, docstrings):
            match = DEVICE_NAME.search(word)
            if match:
                hits.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}: {match.group(0)!r} in {word!r}")
    return hits


def test_the_scan_finds_device_names():
    code = "import torch_npu\nx = y.cuda()\nz = torch.device('mps')\ndef f(input):\n    '''runs on cuda'''\n"
    tree = ast.parse(code)
    words = [w for node in ast.walk(tree) for w in _words(node, _docstrings(tree))]
    found = sorted({DEVICE_NAME.search(w).group(0) for w in words if DEVICE_NAME.search(w)})
    assert found == ["cuda", "mps", "npu"]  # the docstring and 'input' do not count


def test_library_code_names_no_device_backend():
    files = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / ALLOWED_FILE in files and any(f.parent.name == "models" for f in files)
    hits = [hit for path in files for hit in device_names_in(path)]
    assert not hits, "device names in library code (only the benchmark's --device parsing may name one):\n" + (
        "\n".join(hits)
    )


PROBE = r"""
import importlib, json, pkgutil, sys, traceback

BACKENDS = set(json.loads(sys.argv[1]))
seen = []

class Watch:
    # Records every attempt to find a backend module, with the module that asked (the innermost frame outside the
    # import machinery), and reports it as absent.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BACKENDS:
            frames = [f.filename for f in traceback.extract_stack()[:-1] if "importlib" not in f.filename]
            seen.append({"module": name, "asked_by": frames[-1] if frames else "?"})
        return None

sys.meta_path.insert(0, Watch())
importlib.util.find_spec("torch_npu")  # the watch works: this probe is recorded as asked by this script
import torch
import hf_tokenprune
for info in pkgutil.walk_packages(hf_tokenprune.__path__, "hf_tokenprune."):
    if not info.name.endswith("__main__"):  # the command line's entry point runs when imported
        importlib.import_module(info.name)

# Use the library: build a model with a plan, run it, take a Trainer step.
from transformers import TrainingArguments
from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForImageClassification
from hf_tokenprune.training import CosineSchedule, DistillationTrainer
config = TokenPruneViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=20, num_labels=3,
                             token_reduction={"method": "evit", "layers": [1], "keep_rate": 0.5})
model = TokenPruneViTForImageClassification(config)
data = [{"pixel_values": torch.randn(3, 16, 16), "labels": i % 3} for i in range(4)]
args = TrainingArguments(output_dir=sys.argv[2], max_steps=1, per_device_train_batch_size=4, report_to="none",
                         save_strategy="no", disable_tqdm=True, use_cpu=True, dataloader_pin_memory=False)
DistillationTrainer(model=model, args=args, train_dataset=data, callbacks=[CosineSchedule()]).train()
ours = [s for s in seen if "/hf_tokenprune/" in s["asked_by"].replace("\\", "/")]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BACKENDS)
print(json.dumps({"ours": ours, "loaded": loaded, "all": seen}))
"""


@pytest.mark.slow
def test_importing_and_training_imports_no_backend(tmp_path):
    command = [sys.executable, "-c", PROBE, json.dumps(sorted(BACKEND_MODULES)), str(tmp_path / "run")]
    process = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads(process.stdout.strip().splitlines()[-1])
    assert report["all"][0] == {"module": "torch_npu", "asked_by": "<string>"}, report["all"]
    assert report["ours"] == [], f"hf_tokenprune looked for a backend module itself: {report['ours']}"
    assert report["loaded"] == []


@pytest.mark.parametrize(
    "name, distributed_type, processes",
    [("multi_gpu.yaml", "MULTI_GPU", 2), ("multi_npu.yaml", "MULTI_NPU", 8), ("cpu_2proc.yaml", "MULTI_GPU", 2)],
)
def test_accelerate_configs_load(name, distributed_type, processes):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(CONFIGS / name))  # unknown keys or bad values raise
    assert config.distributed_type.value == distributed_type
    assert config.num_processes == processes and config.num_machines == 1
    assert str(config.mixed_precision) == ("no" if name.startswith("cpu") else "bf16")
