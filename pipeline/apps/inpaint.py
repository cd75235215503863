"""Inpainting (GPNN; RePaint / SinDiffusion Eq. 6): regenerate the white region of a mask from the image's
own patches. The dataset at every scale is the image's patches that do not touch the hole (at that
scale); after every step the known region is put back at the step's noise level; the output equals
the input outside the hole, bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError
from ..plan import Plan
from ..sample.hooks import Hooks
from .masks import ImageFile, KnownRegion, MaskFile, check_excludable, check_mask, file_digest


def make(image_path: Path, mask_path: Path, steps: int, patch_size: int) -> Callable[[Plan], Hooks]:
    """Hooks of `sidpipe inpaint IMAGE --mask M` for a plan whose reference is IMAGE."""

    def build(plan: Plan) -> Hooks:
        # Read by region, never whole: the checks scan the mask band by band (stopping as soon as they can),
        # and the planes are written chunk by chunk when the run stores or first uses them.
        image = ImageFile(image_path)
        hole = MaskFile(mask_path, tuple(image.shape[-2:]))
        check_mask(hole)
        if plan.out_sizes[0] != tuple(image.shape[-2:]):
            raise ConfigError("inpaint keeps the image's size: do not give --size")
        check_excludable(hole, plan.ref_sizes, patch_size)
        region = KnownRegion(image, hole, plan.out_sizes, steps, exclude_from=hole, exclude_sizes=plan.ref_sizes)
        return region.hooks({"app": "inpaint", "mask": file_digest(mask_path)})

    return build
