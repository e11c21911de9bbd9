#!/usr/bin/env python
"""Train a TokenPruneViT semantic-segmentation model with the Hugging Face Trainer, in the style of transformers'
``examples/pytorch/semantic-segmentation/run_semantic_segmentation.py``.

With no arguments it first trains a small ViT (the image-classification main job's model) for a few epochs to
classify the cluttered digits of the same 64x64 canvas, then fine-tunes it on the embedded digit segmentation set
(real scikit-learn digits on cluttered canvases, labelled per pixel; no download) with Token Cropr's segmentation
variant (one query per patch, an auxiliary head trained on the patch labels, pruning warmed up over the first half
as in the official code, which also starts from a pretrained backbone), then evaluates the trained weights with and
without the plan, prints mIoU, pixel accuracy, GFLOPs and the measured speed-up against stock ViT with the same
weights, saves a picture, and writes a folder that loads with
``AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True)``:

    python examples/run_semantic_segmentation.py
    python examples/run_semantic_segmentation.py --token_reduction '{"method": "tome", "r": 6}'
    python examples/run_semantic_segmentation.py --dataset_name scene_parse_150 --model_name_or_path \\
        google/vit-base-patch16-224 --token_reduction '{"method": "evit", "keep_rate": 0.7}' --output_dir out/ade
"""

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import HfArgumentParser, SegformerImageProcessor, Trainer, TrainingArguments, set_seed

from hf_tokenprune import (
    TokenPruneViTConfig,
    TokenPruneViTForImageClassification,
    TokenPruneViTForSemanticSegmentation,
)
from hf_tokenprune.data import SEGMENTATION_CLASS_NAMES, cluttered_digits_arrays, load_digit_segmentation
from hf_tokenprune.training import build_schedule, init_sincos_position_embeddings
from hf_tokenprune.training.metrics import build_segmentation_compute_metrics, segmentation_metrics

# A small ViT for 64x64 images in 8x8 patches (64 patch tokens + CLS): the image-classification main job's model.
SMALL_MODEL = dict(
    image_size=64,
    patch_size=8,
    hidden_size=96,
    num_hidden_layers=4,
    num_attention_heads=3,
    intermediate_size=192,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
# Cropr's segmentation variant: after blocks 0 and 1, 16 tokens go (17 at the first: 64 -> 31 patch tokens); they
# rejoin before the last block (last-layer fusion), so the decoder sees every patch.
DEFAULT_PLAN = {"method": "cropr", "tokens_per_layer": 16, "aux_head": "per_query"}
DEFAULTS = dict(
    output_dir="outputs/digit-segmentation",
    num_train_epochs=8,
    learning_rate=1e-3,
    lr_scheduler_type="cosine",
    weight_decay=0.05,
    warmup_steps=20,
    per_device_train_batch_size=16,
    per_device_eval_batch_size=64,
    eval_strategy="epoch",
    save_strategy="no",
    logging_steps=20,
    report_to="none",
    remove_unused_columns=False,
    dataloader_num_workers=0,
    seed=0,
)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "A ViT checkpoint; none: from scratch."})
    token_reduction: str | None = field(
        default=json.dumps(DEFAULT_PLAN), metadata={"help": "The plan, as JSON ('null' for none)."}
    )
    attention_reuse: str | None = field(default=None, metadata={"help": "An attention-reuse plan, as JSON."})
    schedule: str = field(default="auto", metadata={"help": "auto (Cropr: linear over half), none, linear, ..."})


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "A dataset with image/label; none: embedded."})
    image_size: int | None = field(default=None, metadata={"help": "Resize to this size (default: the model's)."})
    digits_copies: int = field(default=1, metadata={"help": "Embedded set: renders of each training digit."})
    pretrain_epochs: float = field(
        default=10.0, metadata={"help": "No checkpoint: epochs of digit classification first (0: from scratch)."}
    )
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)
    benchmark_rounds: int = field(default=7, metadata={"help": "Paired timing rounds."})


def parse_json(text: str | None, name: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        example = json.dumps(DEFAULT_PLAN)
        raise ValueError(f"--{name} must be JSON, e.g. '{example}'; got {text!r} ({error}).") from None


def load_data(data_args: DataArguments):
    """(dataset dict with train/validation, label names) from the embedded set or a dataset with image/label."""
    if data_args.dataset_name is None:
        return load_digit_segmentation(copies=data_args.digits_copies), SEGMENTATION_CLASS_NAMES
    import datasets

    data = datasets.load_dataset(data_args.dataset_name)
    if "validation" not in data:
        data = data["train"].train_test_split(test_size=0.15, seed=0)
        data = datasets.DatasetDict(train=data["train"], validation=data["test"])
    missing = {"image", "label"} - set(data["train"].column_names)
    if missing:
        raise ValueError(f"--dataset_name {data_args.dataset_name} lacks the column(s) {sorted(missing)}.")
    labels = max(int(np.array(example["label"]).max()) for example in data["train"].select(range(50))) + 1
    return data, [str(i) for i in range(labels)]


def pretrain_backbone(epochs: float, output_dir: str, max_samples: int | None = None, seed: int = 0) -> str:
    """Trains SMALL_MODEL (no plan) to classify the cluttered digits of the same canvas, with the image-classification
    main job's recipe, with the digits at the segmentation set's scale; returns the folder it is saved in: the
    segmentation model starts from its ViT."""
    size = SMALL_MODEL["image_size"]
    arrays = cluttered_digits_arrays(canvas_size=size, copies=2, scale=(size // 21, size // 16))["train"]
    images = torch.from_numpy((arrays[0] - 0.5) / 0.5)[:, None].expand(-1, 3, -1, -1)  # (N, 3, H, W)
    samples = [{"pixel_values": x, "labels": int(y)} for x, y in zip(images, arrays[1])][:max_samples]
    torch.manual_seed(seed)
    model = TokenPruneViTForImageClassification(TokenPruneViTConfig(**SMALL_MODEL, num_labels=10))
    with torch.no_grad():
        init_sincos_position_embeddings(model)
    folder = os.path.join(output_dir, "backbone")
    args = TrainingArguments(
        output_dir=folder, num_train_epochs=epochs, learning_rate=1e-3, weight_decay=0.05, warmup_steps=0.1,
        lr_scheduler_type="cosine", per_device_train_batch_size=32, save_strategy="no", report_to="none",
        logging_steps=50, seed=seed, disable_tqdm=True,
        dataloader_pin_memory=torch.accelerator.current_accelerator() is not None,  # on the CPU it only warns
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=samples).train()
    model.save_pretrained(folder)
    return folder


def build_model(model_args: ModelArguments, labels: list[str]):
    plans = dict(
        token_reduction=parse_json(model_args.token_reduction, "token_reduction"),
        attention_reuse=parse_json(model_args.attention_reuse, "attention_reuse"),
        restore_tokens=True,  # dense outputs: every removed token rejoins the grid
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    if model_args.model_name_or_path is not None:
        return TokenPruneViTForSemanticSegmentation.from_pretrained(model_args.model_name_or_path, **plans)
    model = TokenPruneViTForSemanticSegmentation(TokenPruneViTConfig(**SMALL_MODEL, **plans))
    with torch.no_grad():
        init_sincos_position_embeddings(model)
    return model


def add_transforms(data, processor) -> None:
    def transform(batch):
        encoded = processor(batch["image"], segmentation_maps=batch["label"], return_tensors="pt")
        return {"pixel_values": encoded["pixel_values"], "labels": encoded["labels"].long()}

    for split in data:
        data[split].set_transform(transform)


def predict(model, dataset, batch_size: int = 64, **forward):
    """Predicted and true label maps of a whole split."""
    predictions, labels = [], []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            batch = dataset[start : start + batch_size]
            predictions.append(model(pixel_values=batch["pixel_values"], **forward).logits.argmax(dim=1))
            labels.append(batch["labels"])
    return torch.cat(predictions).numpy(), torch.cat(labels).numpy()


class StockSegmenter(torch.nn.Module):
    """Stock `ViTModel` with the same weights and the same linear decoder: the speed reference."""

    def __init__(self, model):
        super().__init__()
        from transformers import ViTModel

        from hf_tokenprune.measure.benchmark import stock_config

        self.vit = ViTModel(stock_config(model.config), add_pooling_layer=False).eval()
        missing, _ = self.vit.load_state_dict(model.vit.state_dict(), strict=False)
        if missing:
            raise ValueError(f"The trained model lacks stock ViT weights {missing[:3]}.")
        self.head, self.grid = model.segmentation_head, model.config.patch_grid

    def forward(self, pixel_values):
        patches = self.vit(pixel_values).last_hidden_state[:, 1:]
        logits = self.head(patches).transpose(1, 2).reshape(len(pixel_values), -1, *self.grid)
        return torch.nn.functional.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear")


def compare(model, dataset, rounds: int) -> list[dict[str, Any]]:
    """mIoU, pixel accuracy, GFLOPs and measured speed-up of the plan, the plan off, and stock ViT."""
    from hf_tokenprune.flops import count_flops
    from hf_tokenprune.measure.benchmark import measure_paired

    model.eval()
    stock = StockSegmenter(model)
    pixels = dataset[:64]["pixel_values"]
    candidates = {
        "TokenPruneViT, plan": lambda x: model(pixel_values=x),
        "same weights, plan off": lambda x: model(pixel_values=x, disable_plans=True),
        "stock HF ViT": lambda x: stock(x),
    }
    timings = measure_paired(candidates, pixels, rounds=rounds, desc="speed (paired)")
    reference, full = timings["stock HF ViT"].median_s, count_flops(stock.vit.config).gflops
    rows = []
    for name, forward in (("TokenPruneViT, plan", {}), ("same weights, plan off", {"disable_plans": True})):
        predictions, labels = predict(model, dataset, **forward)
        metrics = segmentation_metrics(predictions, labels, model.config.num_labels)
        gflops = count_flops(model.config).gflops if not forward else full
        rows.append(_row(name, metrics, gflops, full, reference / timings[name].median_s))
    rows.append({**rows[-1], "model": "stock HF ViT", "speedup": 1.0})  # same weights, same predictions
    return rows


def _row(name, metrics, gflops, full, speedup):
    return {
        "model": name,
        "mean_iou": metrics["mean_iou"],
        "pixel_accuracy": metrics["pixel_accuracy"],
        "gflops": gflops,
        "ideal_speedup": full / gflops,
        "speedup": speedup,
    }


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'model':<24}{'mIoU':>8}{'pixel acc':>11}{'GFLOPs':>9}{'speed-up':>10}{'ideal':>7}", "-" * 69]
    for row in rows:
        lines.append(
            f"{row['model']:<24}{row['mean_iou']:>8.3f}{row['pixel_accuracy']:>11.3f}{row['gflops']:>9.4f}"
            f"{row['speedup']:>9.2f}x{row['ideal_speedup']:>6.2f}x"
        )
    return "\n".join(lines)


def mark_removed(image: np.ndarray, layer_map: dict[str, Any]) -> np.ndarray:
    """The image with merge groups tinted (`paint`) and patches out of the sequence tinted red."""
    from hf_tokenprune.visualization import paint

    rows, columns = layer_map["alive"].shape
    block = (image.shape[0] // rows, image.shape[1] // columns)
    removed = np.kron(~layer_map["alive"], np.ones(block))[..., None] > 0
    return np.where(removed, 0.45 * image + 0.55 * np.array([0.85, 0.15, 0.15]), paint(image, layer_map))


def save_picture(model, dataset, images, path: str, count: int = 3) -> str:
    """Rows of: image, ground truth, prediction, and the tokens in the plan's smallest layer (red: removed); a title
    naming the plan and a colour key of the classes shown."""
    import textwrap

    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    from hf_tokenprune.plans import plan_label
    from hf_tokenprune.visualization import _pyplot, token_maps

    plt = _pyplot()
    batch = dataset[:count]
    with torch.inference_mode():
        outputs = model.eval()(pixel_values=batch["pixel_values"])
    smallest = min(range(len(outputs.token_counts)), key=lambda i: outputs.token_counts[i][1])
    figure, axes = plt.subplots(count, 4, figsize=(10, 2.6 * count), squeeze=False, dpi=100)
    labels = model.config.num_labels
    for row in range(count):
        image = np.asarray(images[row].convert("RGB"), dtype=np.float32) / 255.0
        layer_map = token_maps(outputs, row)[smallest]
        panels = [
            ("image", image, {}),
            ("ground truth", batch["labels"][row].numpy(), dict(cmap="tab20", vmin=0, vmax=labels)),
            ("prediction", outputs.logits[row].argmax(0).numpy(), dict(cmap="tab20", vmin=0, vmax=labels)),
            (f"tokens in layer {smallest} ({outputs.token_counts[smallest][1]})", mark_removed(image, layer_map), {}),
        ]
        for axis, (title, picture, style) in zip(axes[row], panels):
            axis.imshow(picture, interpolation="nearest", **style)
            axis.set_title(title, fontsize=9)
            axis.axis("off")
    shown = sorted(
        {int(c) for c in batch["labels"][:count].unique()} | {int(c) for c in outputs.logits.argmax(1).unique()}
    )
    colour, scale = plt.get_cmap("tab20"), Normalize(vmin=0, vmax=labels)
    names = model.config.id2label
    handles = [Patch(color=colour(scale(c)), label=names.get(c, str(c))) for c in shown if 0 <= c < labels]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    plan = plan_label(model.config.token_reduction, getattr(model.config, "attention_reuse", None))
    title = f"semantic segmentation, plan: {plan} (red patches: removed in layer {smallest})"
    figure.suptitle(textwrap.fill(title, width=110), fontsize=10)
    figure.tight_layout(rect=(0, 0.06, 1, 0.97))
    figure.savefig(path)
    plt.close(figure)
    return path


def parse_args(argv: list[str] | None):
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [arg.replace("--token-reduction", "--token_reduction") for arg in argv]
    given = {arg.split("=")[0].lstrip("-") for arg in argv if arg.startswith("--")}
    defaults = [f"--{key}={value}" for key, value in DEFAULTS.items() if key not in given]
    if torch.accelerator.current_accelerator() is None and "dataloader_pin_memory" not in given:
        defaults.append("--dataloader_pin_memory=false")  # no accelerator: pinned memory has no use (torch warns)
    return parser.parse_args_into_dataclasses(args=defaults + argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    model_args, data_args, training_args = parse_args(argv)
    set_seed(training_args.seed)
    data, labels = load_data(data_args)
    if model_args.model_name_or_path is None and data_args.dataset_name is None and data_args.pretrain_epochs > 0:
        model_args.model_name_or_path = pretrain_backbone(
            data_args.pretrain_epochs, training_args.output_dir, data_args.max_train_samples, training_args.seed
        )
    model = build_model(model_args, labels)
    size = data_args.image_size or SMALL_MODEL["image_size"]
    processor = SegformerImageProcessor(
        size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    images = [data["validation"][i]["image"] for i in range(3)]
    add_transforms(data, processor)
    train, validation = data["train"], data["validation"]
    if data_args.max_train_samples:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples:
        validation = validation.select(range(min(data_args.max_eval_samples, len(validation))))
    schedule = build_schedule(model_args.schedule, model.config.token_reduction)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=validation,
        compute_metrics=build_segmentation_compute_metrics(len(labels)),
        callbacks=[schedule] if schedule is not None else None,
    )
    trainer.train()
    return report(model, validation, images, processor, training_args.output_dir, data_args.benchmark_rounds)


def report(model, validation, images, processor, output_dir: str, rounds: int) -> dict[str, Any]:
    os.makedirs(output_dir, exist_ok=True)
    rows = compare(model, validation, rounds)
    print(format_rows(rows))
    picture = save_picture(model, validation, images, os.path.join(output_dir, "segmentation.png"))
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    results = {"plan": model.config.token_reduction, "rows": rows, "picture": picture}
    with open(os.path.join(output_dir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"Saved to {output_dir} (loads with trust_remote_code=True); picture: {picture}")
    return results


if __name__ == "__main__":
    main()
