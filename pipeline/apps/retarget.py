"""Retargeting (seed paper Sec. 4.2; GPNN): a new size or aspect whose layout follows the reference.

As the official `retarget.py`: the coarsest scale is the reference resized once to the coarsest output
size and never denoised; the finer scales start from noise on the target grid with the reference's own
denoisers and blend with the scale below. The number of scales is taken from the smaller short side of
reference and target (official `min_short_side` on both)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..config import Config
from ..io.read import load_image
from ..plan import Plan
from ..pyramid import auto_num_scales, resize
from ..sample.hooks import Hooks
from .masks import Steered, as_tensor


def prepare(cfg: Config, ref_hw: tuple[int, int]) -> Config:
    """cfg with num_scales from the smaller short side of the reference and the target (unless set)."""
    if cfg.num_scales:
        return cfg
    h, w = ref_hw
    oh = cfg.height or (h if not cfg.width else round(h * cfg.width / w))
    ow = cfg.width or (w if not cfg.height else round(w * cfg.height / h))
    short = min(h, w, oh, ow)
    return cfg.replace(num_scales=auto_num_scales(short, short, cfg.patch_size, cfg.coarsest_ratio, cfg.scale_factor))


def make(ref_path: Path, steps: int) -> Callable[[Plan], Hooks]:
    """Hooks of `sidpipe retarget REF --size WxH`: the coarsest scale fixed to REF resized to it."""

    def build(plan: Plan) -> Hooks:
        coarsest = plan.num_scales - 1
        image = resize(as_tensor(load_image(ref_path)), plan.out_sizes[coarsest])
        return Steered(steps, fixed={coarsest: image}).hooks(
            {"app": "retarget", "coarsest": list(plan.out_sizes[coarsest])})

    return build
