# Copyright 2026 The hf_tokenprune authors. Licensed under the Apache License, Version 2.0.
"""SuperViT: one model, many operating points (keep rates and resolutions chosen at call time).

Lin et al., "Super Vision Transformer", IJCV 2023 (arXiv 2205.11397); reference code lmbxmu/SuperViT.

At inference SuperViT keeps tokens like EViT without fusion: at each listed layer the patch tokens the CLS token
attends to least are dropped. The reference code counts the CLS token in: it keeps ``ceil(keep_rate * (N + 1))``
patch tokens of ``N`` (at ViT-B/16 224 and keep rate 0.7: 139, 99 and 71 tokens with CLS after blocks 3, 6, 9),
one or two more than EViT's ``ceil(keep_rate * N)``. What makes it SuperViT is training: every step runs
the full model, a random lower keep rate distilled from it, a random smaller resolution, and that resolution with a
lower keep rate distilled from its full version (``hf_tokenprune.training.SuperViTTrainer``). The trained model
serves every (resolution, keep rate) pair of ``resolutions`` x ``keep_rates``: pass ``keep_rate=`` and an image of
that size with ``interpolate_pos_encoding=True`` (position embeddings are interpolated; no extra parameters).
"""

import math

from .reduction_evit import EViTReduction
from .token_reduction import Paper, check_keep_rate, check_options, grid_of, register_reduction

# SuperViT's operating points for a 224-pixel model; scaled to other image sizes.
BASE_RESOLUTIONS = (128, 160, 192, 224)
BASE_KEEP_RATES = (0.5, 0.7, 1.0)


def _check_resolutions(value, config) -> list[int]:
    image = grid_of(config.image_size, 1)[0]
    patch = grid_of(config.patch_size, 1)[0]
    if value is None:
        value = sorted({max(patch, round(image * r / 224 / patch) * patch) for r in BASE_RESOLUTIONS})
    field = "token_reduction['resolutions']"
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{field} = {value!r} must be a non-empty list of image sizes in pixels.")
    for size in value:
        if isinstance(size, bool) or not isinstance(size, int) or size < patch or size % patch:
            raise ValueError(
                f"{field} = {list(value)!r}: every size must be a multiple of the patch size {patch} (got {size!r})."
            )
    return sorted(set(value))


@register_reduction("supervit")
class SuperViTReduction(EViTReduction):
    options = {**EViTReduction.options, "fuse": False, "keep_rates": list(BASE_KEEP_RATES), "resolutions": None}
    paper = Paper("Super Vision Transformer", "Lin et al., IJCV 2023", "2205.11397", "lmbxmu/SuperViT")
    headline_plan = {"keep_rate": 0.7}  # layers 3, 6, 9 of 12
    operating_points = ("keep_rate", (0.9, 0.7, 0.5))

    @classmethod
    def num_kept(cls, num_patches: int, keep_rate: float) -> int:
        """``ceil(keep_rate * (N + 1))`` patch tokens, the CLS token counted in (lmbxmu/SuperViT
        ``important_token_num``, the same float expression), at most ``N``; keep rate 1 keeps all."""
        return max(1, min(num_patches, math.ceil(keep_rate * (num_patches + 1))))

    @classmethod
    def check_plan(cls, plan, config):
        plan = check_options(plan, cls.options, "token_reduction")
        checked = EViTReduction.check_plan(
            {key: plan[key] for key in EViTReduction.options} | {"method": "evit"}, config
        )
        checked["method"] = cls.method
        rates = plan["keep_rates"]
        if not isinstance(rates, (list, tuple)) or not rates:
            raise ValueError(f"token_reduction['keep_rates'] = {rates!r} must be a non-empty list of keep rates.")
        checked["keep_rates"] = sorted({check_keep_rate(r, "token_reduction['keep_rates']") for r in rates})
        checked["resolutions"] = _check_resolutions(plan["resolutions"], config)
        return checked
