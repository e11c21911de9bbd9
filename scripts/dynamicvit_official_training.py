"""DynamicViT's training, the official code against ours, on one small model (for maintainers; CI never runs this).

Why hf_tokenprune's DynamicViT defaults to ``policy_gradient="bounded"``: on a small ViT trained on the cluttered
digits (4 layers, width 48, 16 patches, the setting of ``tests/training/test_selection_learns.py``), the same
fine-tune (layers [1, 2], keep rate 0.7: targets 0.7 and 0.49 of the patches) is run three ways from the same
weights, batches and seed:

- ``official``: raoyongming/DynamicViT's model (``VisionTransformerDiffPruning``), loss
  (``DistillDiffPruningLoss_dynamic`` with main.py's DeiT settings) and teacher (``VisionTransformerTeacher``), in a
  plain loop with the recipe's optimizer groups and schedule (predictors at the rate, backbone at 0.01 of it after a
  frozen 5/30, cosine after a 5/30 warm-up); the forward's hard-coded ``init_n = 14 * 14`` is set to this grid;
- ``ours-official``: our model with ``policy_gradient="official"``, the same loop;
- ``ours-bounded``: our model with the default ``policy_gradient="bounded"``, the same loop.

It records each stage's kept fraction in masked training every 30 steps, and at the end the share of digit patches
the inference-time selection keeps (a random choice keeps the share of digit patches among all patches) and the
accuracy. Needs the reference environment of ``make_reference_fixtures.py``:

    /work/venv-ref/bin/python scripts/dynamicvit_official_training.py /work/ref/DynamicViT \\
        --output docs/results/dynamicvit_official_training.json
"""

import argparse
import collections.abc
import datetime
import importlib.util
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # this checkout
# hf_tokenprune and transformers' torchvision check come before the stand-ins the official code needs (see below).
import make_reference_fixtures as reference  # noqa: E402
import transformers.models.auto.image_processing_auto  # noqa: E402, F401

from hf_tokenprune import TokenPruneViTConfig, TokenPruneViTForImageClassification  # noqa: E402
from hf_tokenprune.convert.layouts import DYNAMICVIT_PREDICTOR  # noqa: E402
from hf_tokenprune.data import cluttered_digits_arrays  # noqa: E402
from hf_tokenprune.training import init_sincos_position_embeddings  # noqa: E402

MODEL = dict(
    image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
    num_labels=10,
)  # fmt: skip
LAYERS, KEEP_RATE = [1, 2], 0.7
TARGETS = [KEEP_RATE ** (stage + 1) for stage in range(len(LAYERS))]
BASE_EPOCHS, BASE_LR, LR, BATCH, BRIGHTER_THAN_CLUTTER = 20, 2e-3, 2e-3, 32, 0.6


def digits():
    out = {}
    for split, (images, labels) in cluttered_digits_arrays(seed=0, canvas_size=32).items():
        pixels = torch.from_numpy((images - 0.5) / 0.5).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        patches = torch.from_numpy(images).reshape(-1, 4, 8, 4, 8).amax(dim=(2, 4)).flatten(1)
        out[split] = (pixels, torch.from_numpy(labels).long(), patches > BRIGHTER_THAN_CLUTTER)
    return out


def train_base(data):
    torch.manual_seed(0)
    model = TokenPruneViTForImageClassification(TokenPruneViTConfig(**MODEL))
    init_sincos_position_embeddings(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=BASE_LR, weight_decay=0.05)
    pixels, labels, _ = data["train"]
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(BASE_EPOCHS):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), BATCH):
            batch = order[start : start + BATCH]
            loss = model(pixel_values=pixels[batch], labels=labels[batch]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def timm_state(ours: dict) -> dict:
    """Our ViT's state (with predictors) under the official names: the inverse of ``hf_tokenprune.convert.layouts``."""
    out = {
        "cls_token": ours["vit.embeddings.cls_token"], "pos_embed": ours["vit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": ours["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": ours["vit.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": ours["vit.layernorm.weight"], "norm.bias": ours["vit.layernorm.bias"],
        "head.weight": ours["classifier.weight"], "head.bias": ours["classifier.bias"],
    }  # fmt: skip
    for layer in range(MODEL["num_hidden_layers"]):
        theirs, mine = f"blocks.{layer}.", f"vit.layers.{layer}."
        for part in ("weight", "bias"):
            qkv = [ours[f"{mine}attention.{name}.{part}"] for name in ("q_proj", "k_proj", "v_proj")]
            out[f"{theirs}attn.qkv.{part}"] = torch.cat(qkv)
            out[f"{theirs}attn.proj.{part}"] = ours[f"{mine}attention.o_proj.{part}"]
            out[f"{theirs}norm1.{part}"] = ours[f"{mine}layernorm_before.{part}"]
            out[f"{theirs}norm2.{part}"] = ours[f"{mine}layernorm_after.{part}"]
            out[f"{theirs}mlp.fc1.{part}"] = ours[f"{mine}mlp.fc1.{part}"]
            out[f"{theirs}mlp.fc2.{part}"] = ours[f"{mine}mlp.fc2.{part}"]
    for stage, layer in enumerate(LAYERS):
        for theirs, mine in DYNAMICVIT_PREDICTOR.items():
            for part in ("weight", "bias"):
                key = f"vit.layers.{layer}.token_reduction.predictor.{mine}.{part}"
                if key in ours:
                    out[f"score_predictor.{stage}.{theirs}.{part}"] = ours[key]
    return {key: value.detach().clone() for key, value in out.items()}


def official_modules(repo: Path):
    """The official ``models/dyvit.py`` (its ``init_n`` set to this grid) and ``losses.py``."""
    sys.meta_path.insert(0, reference._StandIns())
    six = types.ModuleType("torch._six")  # removed in torch 2; the official utils.py imports it
    six.inf, six.string_classes, six.container_abcs = math.inf, str, collections.abc
    sys.modules.setdefault("torch._six", six)
    sys.path.insert(0, str(repo))
    source = (repo / "models" / "dyvit.py").read_text()
    assert source.count("init_n = 14 * 14") == 1, "the official forward changed: check the init_n adaptation"
    source = source.replace("init_n = 14 * 14", "init_n = self.patch_embed.num_patches")
    spec = importlib.util.spec_from_loader("dyvit_on_this_grid", loader=None)
    dyvit = importlib.util.module_from_spec(spec)
    exec(compile(source, str(repo / "models" / "dyvit.py"), "exec"), dyvit.__dict__)
    import losses

    return dyvit, losses


class Official(torch.nn.Module):
    """The official student, teacher and loss as one ``(pixels, labels) -> loss`` module."""

    def __init__(self, dyvit, losses, state):
        super().__init__()
        shape = dict(img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=4, mlp_ratio=2.0, num_classes=10,
                     qkv_bias=True, norm_layer=lambda width: torch.nn.LayerNorm(width, eps=1e-12))  # fmt: skip
        self.model = dyvit.VisionTransformerDiffPruning(**shape, pruning_loc=LAYERS, token_ratio=TARGETS, distill=True)
        self.model.load_state_dict(state, strict=True)
        teacher = dyvit.VisionTransformerTeacher(**shape)
        teacher.load_state_dict({k: v for k, v in state.items() if "score_predictor" not in k}, strict=True)
        self.criterion = losses.DistillDiffPruningLoss_dynamic(
            teacher.eval(), torch.nn.CrossEntropyLoss(), clf_weight=1.0, keep_ratio=TARGETS, mse_token=True,
            ratio_weight=2.0, distill_weight=0.5, pruning_loc=LAYERS, print_mode=False,
        )  # fmt: skip

    def loss(self, pixels, labels):
        return self.criterion(pixels, self.model(pixels), labels)[0]

    def stage_fractions(self, pixels):
        return [decisions.mean().item() for decisions in self.model(pixels)[3]]

    def selection(self, pixels):  # inference: the patches kept after the last stage, as indices
        kept, original = [], self.dyvit.batch_index_select

        def record(x, index):
            if x.shape[-1] != 1:
                kept.append(index)
            return original(x, index)

        self.dyvit.batch_index_select = record
        try:
            logits = self.model(pixels)
        finally:
            self.dyvit.batch_index_select = original
        positions = torch.arange(1 + self.model.patch_embed.num_patches).expand(pixels.shape[0], -1)
        for index in kept:
            positions = positions.gather(1, index)
        return logits, positions[:, 1:] - 1


class Ours(torch.nn.Module):
    """Our model with the recipe's loss (the teacher: the base model, unpruned)."""

    def __init__(self, base, policy_gradient):
        super().__init__()
        plan = {"method": "dynamicvit", "layers": LAYERS, "keep_rate": KEEP_RATE, "policy_gradient": policy_gradient}
        torch.manual_seed(0)
        self.model = TokenPruneViTForImageClassification(TokenPruneViTConfig(**MODEL, token_reduction=plan))
        self.model.load_state_dict(base.state_dict(), strict=False)
        self.teacher = base
        self.fractions = {}
        for layer in LAYERS:
            self._watch(layer)

    def _watch(self, layer):
        reduction = self.model.vit.layers[layer].token_reduction
        masked = reduction._mask

        def record(x, state, target):
            x, state = masked(x, state, target)
            self.fractions[layer] = state.key_policy[:, 1:].mean().item()
            return x, state

        reduction._mask = record

    def loss(self, pixels, labels):
        from hf_tokenprune.training import distillation_loss
        from hf_tokenprune.training.distillation import final_tokens, token_distillation_loss

        with torch.no_grad():
            reference_out = self.teacher(pixel_values=pixels, output_hidden_states=True)
        out = self.model(pixel_values=pixels, labels=labels, output_hidden_states=True)
        tokens = token_distillation_loss(final_tokens(self.model, out), out, final_tokens(self.teacher, reference_out))
        return out.loss + 0.5 * distillation_loss(out.logits, reference_out.logits) + 0.5 * tokens

    def stage_fractions(self, pixels):
        self.model(pixel_values=pixels)
        return [self.fractions[layer] for layer in LAYERS]

    def selection(self, pixels):
        out = self.model(pixel_values=pixels)
        return out.logits, out.token_positions[-1][:, 1:] - 1


def parameter_groups(runner):
    groups = {}
    for name, parameter in runner.named_parameters():
        frozen = name.endswith(("cls_token", "pos_embed", "position_embeddings"))
        if frozen or name.startswith(("teacher.", "criterion.")):
            continue
        predictor = "score_predictor" in name or ".token_reduction." in name
        groups.setdefault((not predictor, parameter.dim() > 1), []).append(parameter)
    return [{"params": params, "backbone": backbone, "weight_decay": 0.05 if decay else 0.0}
            for (backbone, decay), params in groups.items()]  # fmt: skip


def fine_tune(runner, data, epochs):
    """The recipe's loop: predictors at LR, the backbone frozen for 5/30 of the steps and then at 0.01 LR; a linear
    warm-up over 5/30 and a cosine to 1e-3 of the peak."""
    optimizer = torch.optim.AdamW(parameter_groups(runner), lr=LR)
    pixels, labels, _ = data["train"]
    probe = data["validation"][0]
    steps = epochs * math.ceil(len(labels) / BATCH)
    warm, step, trace = round(steps * 5 / 30), 0, []
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), BATCH):
            rate = LR * (step + 1) / warm if step < warm else LR * (
                1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
            )  # fmt: skip
            for group in optimizer.param_groups:
                group["lr"] = (0.0 if step < warm else 0.01 * rate) if group["backbone"] else rate
            batch = order[start : start + BATCH]
            runner.train()
            loss = runner.loss(pixels[batch], labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % 30 == 0 or step == steps:
                state = torch.get_rng_state()
                torch.manual_seed(1)
                with torch.no_grad():
                    fractions = runner.stage_fractions(probe)
                torch.set_rng_state(state)
                trace.append({"step": step, "kept": [round(f, 4) for f in fractions]})
                print(f"  step {step}: kept {trace[-1]['kept']} (targets {[round(t, 2) for t in TARGETS]})")
    return trace


def evaluate(runner, data):
    pixels, labels, digit = data["validation"]
    runner.eval()
    with torch.no_grad():
        logits, kept = runner.selection(pixels)
    return {
        "accuracy": round((logits.argmax(-1) == labels).float().mean().item(), 4),
        "digit_share_kept": round(digit.gather(1, kept).float().mean().item(), 4),
        "digit_share_random": round(digit.float().mean().item(), 4),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", help="a checkout of raoyongming/DynamicViT")
    parser.add_argument("--output", default="docs/results/dynamicvit_official_training.json")
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args(argv)
    repo, output = Path(args.repo).resolve(), Path(args.output).resolve()
    if not (repo / "models" / "dyvit.py").is_file():
        raise SystemExit(f"repo {repo} has no models/dyvit.py; pass a checkout of raoyongming/DynamicViT.")
    if not output.parent.is_dir():
        raise SystemExit(f"--output {output}: the folder {output.parent} does not exist.")
    torch.set_num_threads(1)
    project = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(project), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    reference_commit = reference.repository_commit(repo, None)
    data = digits()
    base = train_base(data)
    base_accuracy = evaluate_base(base, data)
    print(f"base model: {BASE_EPOCHS} epochs, validation accuracy {base_accuracy}")
    dyvit, losses = official_modules(repo)
    runs = {}
    for name in ("official", "ours-official", "ours-bounded"):
        if name == "official":
            ours = Ours(base, "official")  # the same fresh predictors as ours
            runner = Official(dyvit, losses, timm_state(ours.model.state_dict()))
            runner.dyvit = dyvit
        else:
            runner = Ours(base, name.removeprefix("ours-"))
        print(name)
        trace = fine_tune(runner, data, args.epochs)
        runs[name] = {"trace": trace, "final_kept": trace[-1]["kept"], **evaluate(runner, data)}
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in runs[name].items() if k != "trace"))
    os.chdir(project)
    result = {
        "command": "python scripts/dynamicvit_official_training.py " + " ".join(argv or sys.argv[1:]),
        "commit": commit, "date": datetime.date.today().isoformat(),
        "reference": {"repository": "raoyongming/DynamicViT", "commit": reference_commit,
                      "adaptation": "models/dyvit.py: init_n = 14 * 14 -> the model's number of patches"},
        "model": MODEL, "base_epochs": BASE_EPOCHS, "base_accuracy": base_accuracy,
        "plan": {"layers": LAYERS, "keep_rate": KEEP_RATE}, "targets": [round(t, 4) for t in TARGETS],
        "fine_tune": {"epochs": args.epochs, "batch": BATCH, "learning_rate": LR, "backbone_lr_scale": 0.01,
                      "frozen_and_warmup": "5/30", "threads": 1},
        "runs": runs,
    }  # fmt: skip
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


def evaluate_base(base, data):
    pixels, labels, _ = data["validation"]
    with torch.no_grad():
        return round((base(pixel_values=pixels).logits.argmax(-1) == labels).float().mean().item(), 4)


if __name__ == "__main__":
    sys.exit(main())
