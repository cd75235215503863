"""Tileable textures (seed paper Fig. 6): outputs whose right edge continues their left (and/or bottom their top).

Instead of the official `blend_shifts` (denoise several rolled copies and combine them with hard band masks),
every operator is made periodic along the chosen directions: the denoiser sees the image circularly padded
by a patch, DOWN and UP wrap around (`pyramid.resize_wrap`). The denoiser is then shift-equivariant across
the wrap and there is no band seam.

Out of core, a tile reads its halos modulo the image size and resamples with the same periodic taps
(`tiles.denoise_tile`, `pyramid.circular`), so a tiled run is the in-memory one bit for bit."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from ..plan import Plan
from ..sample.hooks import Hooks

DIRECTIONS = {"both": (True, True), "horizontal": (False, True), "vertical": (True, False)}


def make(direction: str) -> Callable[[Plan], Hooks]:
    """Hooks of `sidpipe tileable REF --direction both|horizontal|vertical`: horizontal = left/right edges wrap."""
    if direction not in DIRECTIONS:
        raise ConfigError(f"--direction must be both, horizontal or vertical, got {direction!r}")

    def build(plan: Plan) -> Hooks:
        return Hooks(wrap=DIRECTIONS[direction], identity={"app": "tileable", "direction": direction})

    return build


def seam_error(image, axis: int) -> float:
    """Mean |difference| across the wrap (last to first row/column along `axis` of a (C, H, W) image) minus
    the median over the interior neighbour differences, clamped at 0, in 0-255 units (the notes' measure)."""
    import numpy as np

    x = np.asarray(image, dtype=np.float64) * 127.5
    diffs = np.abs(np.diff(x, axis=axis)).mean(axis=tuple(a for a in range(3) if a != axis))
    wrap = np.abs(np.take(x, 0, axis=axis) - np.take(x, -1, axis=axis)).mean()
    return float(max(0.0, wrap - np.median(diffs)))
