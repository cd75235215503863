"""Outpainting (SinDiffusion Fig. 10): inpainting on a canvas larger than the reference, the reference
placed at an offset; the canvas outside it is generated from the reference's patches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError
from ..plan import Plan
from ..sample.hooks import Hooks
from .masks import BoxMask, ImageFile, KnownRegion, Placed


def placement(ref_hw: tuple[int, int], canvas_hw: tuple[int, int], offset: tuple[int, int] | None) -> tuple[int, int]:
    """(x, y) of the reference's top-left corner on the canvas (default: centred), checked."""
    (h, w), (ch, cw) = ref_hw, canvas_hw
    if ch < h or cw < w:
        raise ConfigError(f"outpaint --size {cw}x{ch} is smaller than the reference {w}x{h}")
    if (ch, cw) == (h, w):
        raise ConfigError(f"outpaint --size {cw}x{ch} equals the reference's size: nothing to generate")
    x, y = offset if offset is not None else ((cw - w) // 2, (ch - h) // 2)
    if not (0 <= x <= cw - w and 0 <= y <= ch - h):
        raise ConfigError(f"--offset {x},{y} puts the {w}x{h} reference off the {cw}x{ch} canvas "
                          f"(x must be in 0..{cw - w}, y in 0..{ch - h})")
    return x, y


def make(ref_path: Path, offset: tuple[int, int] | None, steps: int) -> Callable[[Plan], Hooks]:
    """Hooks of `sidpipe outpaint REF --size WxH [--offset x,y]` (the plan's output size is the canvas)."""

    def build(plan: Plan) -> Hooks:
        ref = ImageFile(ref_path)  # read by region when the planes are written, never whole
        c, h, w = ref.shape
        ch, cw = plan.out_sizes[0]
        x, y = placement((h, w), (ch, cw), offset)
        known, hole = Placed(ref, (ch, cw), (x, y)), BoxMask((ch, cw), (y, y + h, x, x + w))
        return KnownRegion(known, hole, plan.out_sizes, steps).hooks({"app": "outpaint", "offset": [x, y]})

    return build
