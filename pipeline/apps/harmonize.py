"""Harmonization (SinDDM Fig. 11): blend a pasted object into its background's texture and colours.

The coarse scales are fixed to the composite (its layout and the object's shape are kept); the finest
scale starts from the composite at noise level `level` (SDEdit: alpha_k c + sigma_k eps at the step k
nearest the level) and is denoised with the background's patches: REF's, or without REF the composite's
own patches that do not touch the dilated mask. The result is pasted back with SinDDM's soft mask (dilated
by `radius`, blurred with std `sigma`), so pixels farther than radius + 4 sigma from the mask are the
composite's, bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError
from ..io.read import load_image
from ..plan import Plan
from ..pyramid import resize
from ..sample.hooks import Hooks
from .masks import Steered, as_tensor, check_excludable, dilate, file_digest, read_mask, soft_mask

RADIUS, SIGMA = 7, 5.0  # SinDDM: mask dilated by a disk of 7, blurred with std 5


def start_of(level: float, steps: int) -> int:
    """The step whose noise level sigma_t / (alpha_t + sigma_t) = t / T is nearest `level` (at least 1)."""
    if not 0.0 < level <= 1.0:
        raise ConfigError(f"--level must be in (0, 1], got {level}")
    return max(1, min(steps, round(level * steps)))


def make(composite_path: Path, mask_path: Path, ref_path: Path | None, steps: int, patch_size: int,
         level: float) -> Callable[[Plan], Hooks]:
    """Hooks of `sidpipe harmonize COMPOSITE --mask M [--ref REF]` (the plan's reference is REF or COMPOSITE)."""
    t0 = start_of(level, steps)

    def build(plan: Plan) -> Hooks:
        comp = as_tensor(load_image(composite_path))
        mask = read_mask(mask_path, tuple(comp.shape[-2:]))
        if plan.out_sizes[0] != tuple(comp.shape[-2:]):
            raise ConfigError("harmonize keeps the composite's size")
        fixed = {s: resize(comp, size) for s, size in enumerate(plan.out_sizes) if s > 0}
        exclude = None if ref_path is not None else dilate(mask, RADIUS)
        region = Steered(steps, fixed=fixed, sdedit={0: (t0, comp)}, weight=soft_mask(mask, RADIUS, SIGMA), base=comp,
                         exclude_from=exclude)
        if exclude is not None:
            check_excludable(exclude, plan.ref_sizes[:1], patch_size)
        return region.hooks({"app": "harmonize", "mask": file_digest(mask_path), "start": t0,
                             "composite": file_digest(composite_path)})

    return build
