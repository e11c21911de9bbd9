"""The shape of the package, read from its source: the import graph has no cycle (function-level imports included)
and points down the layers, the command line lives in ``commands/`` only, and the package installs no import hook
and patches no class of transformers (checked in the source and in a process that uses the library)."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hf_tokenprune

PACKAGE = Path(hf_tokenprune.__file__).resolve().parent
ROOT = "hf_tokenprune"
# Layers, from the bottom: the island, the shared pieces (and the package root), the uses of the library, the CLI.
# A module may import its own layer or a lower one, never a higher one.
LAYER = {"models": 0, "training": 2, "measure": 2, "sharing": 2, "convert": 3, "commands": 4, "__main__": 4}
# The dynamic imports the package makes, each downward: the family table loads its classes from the island, the
# package root and the lazy subpackages load their public names on first use, export checks an optional package.
DYNAMIC_IMPORTS = {
    "hf_tokenprune.families": "the family table loads its classes from the island",
    "hf_tokenprune": "the root loads the registry of built-in methods",
    "hf_tokenprune._lazy": "a lazy package loads its own submodules",
    "hf_tokenprune.sharing.export": "export checks that onnx / onnxscript / onnxruntime are installed",
}
THIRD_PARTY_HOSTS = ("transformers", "torch", "huggingface_hub", "accelerate", "datasets")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(name: str) -> int:
    parts = name.split(".")
    return LAYER.get(parts[1], 1) if len(parts) > 1 else 1


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every hf_tokenprune module ``name`` imports, at any depth of its code, and those its lazy table names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = resolve(name, path.name == "__init__.py", node)
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source for alias in node.names
            ]
        found |= {target for target in targets if target.split(".")[0] == ROOT}
    table = next(
        (n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "_NAMES"), None
    )
    if table is not None:  # a lazy package: it loads the submodules its table names
        found |= {f"{name}.{value.value}" for value in table.value.values}
    return {target for target in found if target in known and target != name}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def test_the_import_graph_has_no_cycle():
    edges = graph()
    assert sum(len(targets) for targets in edges.values()) > 50  # the scan sees the imports
    assert cycles(edges) == []


def test_the_scan_finds_function_level_imports_and_cycles():
    assert "hf_tokenprune.flops" in graph()["hf_tokenprune.commands.plan"]  # imported inside run()
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_point_down_the_layers():
    upward = [
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in graph().items()
        for target in sorted(targets)
        if layer(target) > layer(name)
    ]
    assert upward == []


def test_the_island_imports_only_its_siblings():
    for name, path in modules().items():
        if layer(name) != 0:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.level in (0, 1), f"{name}: a sub-folder or parent import cannot be copied flat"
                assert node.level == 1 or node.module.split(".")[0] != ROOT, f"{name}: absolute hf_tokenprune import"
                assert node.level == 0 or node.module, f"{name}: 'from . import x' is not copied by save_pretrained"
            if isinstance(node, ast.Import):
                assert all(alias.name.split(".")[0] != ROOT for alias in node.names), name


def test_the_command_line_lives_in_commands_only():
    for name, path in modules().items():
        if name.startswith("hf_tokenprune.commands") or name == "hf_tokenprune.__main__":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        calls = {
            node.func.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }
        assert "argparse" not in imported, f"{name} imports argparse"
        assert not {"add_parser", "add_subparsers", "add_argument"} & calls, f"{name} builds a parser"


def _dynamic_imports(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                lines.append(node.lineno)
    return lines


def test_dynamic_imports_are_the_known_downward_ones():
    found = {name: _dynamic_imports(ast.parse(path.read_text())) for name, path in modules().items()}
    assert {name for name, lines in found.items() if lines} == set(DYNAMIC_IMPORTS)


def test_no_import_hook_and_no_patched_host_class_in_the_source():
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        for hook in ("meta_path", "path_hooks", "MetaPathFinder", "importlib.abc"):
            assert hook not in text, f"{name} mentions {hook}"
        tree = ast.parse(text)
        hosts = {
            alias.asname or alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            and ((node.module or "") if isinstance(node, ast.ImportFrom) else node.names[0].name).split(".")[0]
            in THIRD_PARTY_HOSTS
            for alias in node.names
        }
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                root = target
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(target, ast.Attribute) and isinstance(root, ast.Name):
                    assert root.id not in hosts, f"{name}:{node.lineno} assigns to {root.id}'s attribute"
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setattr" and node.args:
                first = node.args[0]
                assert not (isinstance(first, ast.Name) and first.id in hosts), f"{name}:{node.lineno} setattr"


USE_THE_LIBRARY = r"""
import json, sys
import transformers
from transformers import PreTrainedModel, Trainer, TrainingArguments, ViTForImageClassification
watched = [Trainer, PreTrainedModel, ViTForImageClassification, transformers.PretrainedConfig]
before = [dict(vars(cls)) for cls in watched]
hooks = list(sys.meta_path), list(sys.path_hooks)
import torch
import hf_tokenprune
from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForImageClassification
from hf_tokenprune.training import TokenPruneTrainer
hf_tokenprune.register()
config = TokenPruneViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=20, num_labels=3, token_reduction={"method": "evit", "layers": [1]})
model = TokenPruneViTForImageClassification(config)
data = [{"pixel_values": torch.randn(3, 16, 16), "labels": i % 3} for i in range(4)]
args = TrainingArguments(output_dir=sys.argv[1], max_steps=1, per_device_train_batch_size=4, report_to="none",
                         save_strategy="no", disable_tqdm=True, use_cpu=True, dataloader_pin_memory=False)
TokenPruneTrainer(model=model, args=args, train_dataset=data).train()
changed = [cls.__name__ for cls, old in zip(watched, before) if dict(vars(cls)) != old]
auto = transformers.AutoModelForImageClassification.from_config(config)
print(json.dumps({"changed": changed, "hooks_same": hooks == (list(sys.meta_path), list(sys.path_hooks)),
                  "auto": type(auto).__name__}))
"""


@pytest.mark.slow
def test_using_the_library_adds_no_hook_and_patches_no_class(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.run(
        [sys.executable, "-c", USE_THE_LIBRARY, str(tmp_path)], capture_output=True, text=True, timeout=240, env=env
    )
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads(process.stdout.strip().splitlines()[-1])
    assert report == {"changed": [], "hooks_same": True, "auto": "TokenPruneViTForImageClassification"}


REGISTRATION = """
import sys
import hf_tokenprune
assert 'transformers' not in sys.modules and 'torch' not in sys.modules  # importing the package is cheap
import transformers
assert 'tokenprune_vit' not in transformers.CONFIG_MAPPING  # and registers nothing by itself
if sys.argv[2] == 'name':
    hf_tokenprune.TokenPruneViTConfig  # the first use of a public name registers
else:
    hf_tokenprune.register()
model = transformers.AutoModelForImageClassification.from_pretrained(sys.argv[1])  # no remote code needed
print(type(model).__module__)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["name", "register"])
def test_the_auto_classes_are_served_after_a_public_name_is_used_or_register(tmp_path, how):
    from conftest import REDUCING_PLANS, tiny_config

    from hf_tokenprune import TokenPruneViTForImageClassification

    TokenPruneViTForImageClassification(tiny_config(token_reduction=REDUCING_PLANS["evit"])).save_pretrained(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        [sys.executable, "-c", REGISTRATION, str(tmp_path), how], capture_output=True, text=True, env=env, timeout=120
    )
    assert process.stdout.split() == ["hf_tokenprune.models.modeling_tokenprune_vit"], process.stderr[-2000:]
