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
from ..sample.hooks import Box, Hooks
from .masks import as_tensor


def prepare(cfg: Config, ref_hw: tuple[int, int]) -> Config:
    """cfg with num_scales from the smaller short side of the reference and the target (unless set)."""
    if cfg.num_scales:
        return cfg
    h, w = ref_hw
    oh = cfg.height or (h if not cfg.width else round(h * cfg.width / w))
    ow = cfg.width or (w if not cfg.height else round(w * cfg.height / h))
    short = min(h, w, oh, ow)
    return cfg.replace(num_scales=auto_num_scales(short, short, cfg.patch_size, cfg.coarsest_ratio, cfg.scale_factor))


class Retarget:
    """The fixed coarsest scale: `image` is the reference resized to the coarsest output size."""

    def __init__(self, coarsest: int, image) -> None:
        self.coarsest, self.image = coarsest, image

    def init(self, scale: int, t0: int, box: Box, seed: int):
        if scale != self.coarsest:
            return None
        y0, y1, x0, x1 = box
        return self.image[:, y0:y1, x0:x1].clone()


def make(ref_path: Path, steps: int) -> Callable[[Plan], Hooks]:
    """Hooks of `sidpipe retarget REF --size WxH`."""

    def build(plan: Plan) -> Hooks:
        coarsest = plan.num_scales - 1
        image = resize(as_tensor(load_image(ref_path)), plan.out_sizes[coarsest])
        r = Retarget(coarsest, image)
        return Hooks(start=_Start(coarsest, steps), init=r.init,
                     identity={"app": "retarget", "coarsest": list(plan.out_sizes[coarsest])})

    return build


class _Start:
    """start(s): 0 (fixed) at the coarsest scale, T elsewhere (a picklable callable)."""

    def __init__(self, fixed: int, steps: int) -> None:
        self.fixed, self.steps = fixed, steps

    def __call__(self, scale: int) -> int:
        return 0 if scale == self.fixed else self.steps
