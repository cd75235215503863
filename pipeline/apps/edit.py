"""Editing (GPNN; SinGAN): turn a rough paste-up EDITED of REF into a coherent image made of REF's patches.

The coarsest scale is fixed to EDITED resized to it (its layout is the edit); the finer scales start from
noise and use REF's patches, blending with the scale below (as retargeting does). With a mask (given, or
`auto`: pixels where |EDITED - REF| > `threshold` in any channel) the result is pasted back softly (mask
dilated by 20 px, blurred with std 5): farther away, the output is REF, bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import ImageError
from ..io.read import load_image
from ..plan import Plan
from ..pyramid import resize
from ..sample.hooks import Hooks
from .masks import Steered, as_tensor, file_digest, read_mask, soft_mask

RADIUS, SIGMA = 20, 5.0
AUTO_THRESHOLD = 0.1  # in [-1, 1] units (~13 of 255 gray levels)


def make(ref_path: Path, edited_path: Path, mask_path: Path | None, auto_mask: bool, steps: int) -> Callable[[Plan], Hooks]:
    """Hooks of `sidpipe edit REF EDITED [--mask M | --auto-mask]` (the plan's reference is REF)."""

    def build(plan: Plan) -> Hooks:
        ref, edited = as_tensor(load_image(ref_path)), as_tensor(load_image(edited_path))
        if edited.shape != ref.shape:
            raise ImageError(f"EDITED {edited_path} is {edited.shape[2]}x{edited.shape[1]} with {edited.shape[0]} channels "
                             f"but REF is {ref.shape[2]}x{ref.shape[1]} with {ref.shape[0]}")
        mask = None
        if mask_path is not None:
            mask = read_mask(mask_path, tuple(ref.shape[-2:]))
        elif auto_mask:
            mask = edit_mask(ref, edited)
            if not bool(mask.any()):
                raise ImageError(f"--auto-mask: EDITED differs from REF nowhere by more than {AUTO_THRESHOLD} "
                                 "(of the [-1, 1] range): nothing to edit")
        coarsest = plan.num_scales - 1
        region = Steered(steps, fixed={coarsest: resize(edited, plan.out_sizes[coarsest])},
                         weight=None if mask is None else soft_mask(mask, RADIUS, SIGMA), base=ref)
        identity = {"app": "edit", "edited": file_digest(edited_path),
                    "mask": None if mask is None else file_digest(mask_path) if mask_path else "auto"}
        return region.hooks(identity)

    return build


def edit_mask(ref: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """The --auto-mask of a pair: True where any channel differs by more than AUTO_THRESHOLD."""
    return (edited - ref).abs().amax(0) > AUTO_THRESHOLD
