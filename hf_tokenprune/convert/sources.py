"""What the official repositories publish: each method's checkpoint layout, the operating point its checkpoints
were trained for (on a 12-layer model), its evaluation transform, and the checkpoints its authors released with the
ImageNet-1k top-1 their READMEs report (read from the READMEs at the commits the reference fixtures name)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The evaluation transforms of the official code (resize the short side to size / crop_pct, bicubic, centre crop).
EVAL_TRANSFORMS = {
    "deit": {"crop_pct": 224 / 256, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
    "augreg": {"crop_pct": 0.9, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
}


@dataclass(frozen=True)
class Source:
    """One method's official checkpoints.

    Args:
        method: our method name (``"none"``: a plain timm ViT/DeiT, for the training-free methods).
        repository: the official repository (GitHub owner/name).
        marker: a key prefix only this method's checkpoints have (None: a plain timm layout).
        plan: the operating point its checkpoints are trained for, on 12 layers (token reduction, or the
            ``attention_reuse`` plan for SkipAt).
        eval_transform: a key of `EVAL_TRANSFORMS`.
    """

    method: str
    repository: str
    marker: str | None
    plan: dict = field(default_factory=dict)
    eval_transform: str = "deit"

    @property
    def reuse(self) -> bool:
        return self.method == "skipat"


@dataclass(frozen=True)
class Published:
    """A checkpoint the authors released: its method, shape and operating point, and what they report."""

    name: str
    method: str
    arch: str
    top1: float
    link: str
    plan: dict = field(default_factory=dict)
    image_size: int = 224
    note: str = ""


SOURCES = {
    source.method: source
    for source in (
        Source("dynamicvit", "raoyongming/DynamicViT", "score_predictor",
               {"method": "dynamicvit", "layers": [3, 6, 9], "keep_rate": 0.7}),
        Source("evit", "youweiliang/evit", None,
               {"method": "evit", "layers": [3, 6, 9], "keep_rate": 0.7, "fuse": True}),
        Source("evo_vit", "YifanXu74/Evo-ViT", "qks",
               {"method": "evo_vit", "keep_rate": 0.5, "attention_momentum": 0.5}),
        Source("supervit", "lmbxmu/SuperViT", "pos_embed_list",
               {"method": "supervit", "layers": [3, 6, 9], "keep_rate": 0.7}),
        Source("cropr", "benbergner/cropr", "cropr", {"method": "cropr", "tokens_per_layer": 8}),
        Source("skipat", "Qualcomm-AI-research/skip-attention", "param_1",
               {"method": "skipat", "layers": [3, 4, 5, 6, 7, 8]}, eval_transform="augreg"),
        Source("tome", "facebookresearch/ToMe", None, {"method": "tome", "r": 13}),
        Source("none", "huggingface/pytorch-image-models", None, {}),
    )
}  # fmt: skip

_DRIVE = "https://drive.google.com/file/d/{}"
PUBLISHED = {
    entry.name: entry
    for entry in (
        Published("dynamicvit-deit-s-0.7", "dynamicvit", "vit-small-patch16-224", 79.32,
                  _DRIVE.format("1H5kHHagdqo4emk9CgjfA7DA62XJr8Yc1"), {"keep_rate": 0.7}),
        Published("dynamicvit-deit-b-0.7", "dynamicvit", "vit-base-patch16-224", 81.43,
                  _DRIVE.format("1J9PCPiOSHmzRiWw370GDYJPEZ8r4uU3M"), {"keep_rate": 0.7}),
        Published("dynamicvit-deit-256-0.7", "dynamicvit", "width 256, 4 heads", 76.53,
                  _DRIVE.format("1fpdTNRZtGOW25UwOadj1iUdjqmu88WkO"), {"keep_rate": 0.7}),
        *[Published(f"evit-deit-s-{'fuse' if fuse else 'drop'}-{rate}", "evit", "vit-small-patch16-224", top1,
                    _DRIVE.format(drive), {"keep_rate": rate, "fuse": fuse})
          for fuse, rate, top1, drive in (
              (True, 0.9, 79.8, "1CmROmlLV-7nyYY-Bhph8_5ut3wFwqvny"),
              (True, 0.8, 79.8, "1BTJyIe0zVK3zYXz3BzIlSC4YZCnZu7cJ"),
              (True, 0.7, 79.5, "1FfvdEBss9f8gexjqEY8vOSUQe_8qwYuL"),
              (True, 0.6, 78.9, "1D1m067jDbyG0g2UjyBMaJ4NTT2Ad8vrv"),
              (True, 0.5, 78.5, "1-nyxAlRWjD2icbgj3Y3YWcCmYj9sTgfD"),
              (False, 0.9, 79.9, "1tSaPLged8ED2RTiN5ttSmeTNIw1aNNwV"),
              (False, 0.8, 79.7, "1zdFbHk-gOw_Wiid5_Z8NFcBa1HMI-JF-"),
              (False, 0.7, 79.4, "1VCZGphW34rFWZDXOoF7XO4EJfRLZ-YB8"),
              (False, 0.6, 79.1, "1okYcKryyD6FFPG9v5r40R28SRNfVZ5X0"),
              (False, 0.5, 78.4, "1qsPeLN5ytLO8pM7lUuj5bi6pyMhjiSJO"),
          )],
        Published("evo-vit-deit-t", "evo_vit", "vit-tiny-patch16-224", 72.0,
                  _DRIVE.format("1AL4uHGHvCoFXkrtHRgf4XmurgRs5-qab")),
        Published("evo-vit-deit-s", "evo_vit", "vit-small-patch16-224", 79.4,
                  _DRIVE.format("1AiD1J-z9klr72-zczkJzX1HHVlxO7iin")),
        Published("evo-vit-deit-b", "evo_vit", "vit-base-patch16-224", 81.3,
                  _DRIVE.format("15EmMKb4L5IjHqnMYQHVNYZGRRGdByTsz")),
        Published("evo-vit-deit-b-384", "evo_vit", "vit-base-patch16-224", 82.0,
                  _DRIVE.format("1MBSH4Fx8Bq9cgGhktvYAb23EFioiv2y2"), image_size=384),
        Published("supervit-deit-s", "supervit", "vit-small-patch16-224", 80.50,
                  _DRIVE.format("1y2-zU5UvHqGCmWEB41VLbnf7B27BatBL"), {"keep_rate": 0.7},
                  note="one model for 4 resolutions x 3 keep rates; 80.50 at 224 px, keep 0.7 (80.62 at keep 1)"),
        Published("skipat-vit-t", "skipat", "vit-tiny-patch16-224", 73.3,
                  "https://github.com/Qualcomm-AI-research/skip-attention/releases/download/v1.0/skipat-tiny.t7"),
        Published("skipat-vit-s", "skipat", "vit-small-patch16-224", 80.0,
                  "https://github.com/Qualcomm-AI-research/skip-attention/releases/download/v1.0/skipat-small.t7"),
        Published("tome-deit-s-r13", "tome", "vit-small-patch16-224", 79.36,
                  "https://dl.fbaipublicfiles.com/tome/f367470145_deit_S_r13.pth", {"r": 13}),
        Published("tome-deit-t-r13", "tome", "vit-tiny-patch16-224", 71.27,
                  "https://dl.fbaipublicfiles.com/tome/f367470145_deit_T_r13.pth", {"r": 13}),
    )
}  # fmt: skip


def plan_for(method: str, overrides: dict | None = None) -> dict:
    """The official plan of ``method``'s checkpoints with ``overrides`` (a user's plan, or a published one's)."""
    source = SOURCES[method]
    if not source.plan:
        return dict(overrides or {})
    return {**source.plan, **(overrides or {}), "method": source.plan["method"]}


def describe_published() -> list[dict[str, Any]]:
    """The published checkpoints as rows (for the docs and ``--help``)."""
    return [
        {"name": e.name, "method": e.method, "arch": e.arch, "top1": e.top1, "link": e.link, "note": e.note}
        for e in PUBLISHED.values()
    ]
