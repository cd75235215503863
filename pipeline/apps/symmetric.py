"""Symmetric images (seed paper Fig. 6, official `symmetric.py`): after every denoiser call the kept half of
x_hat is mirrored onto the other half (an odd width keeps its centre column); eps_hat is computed from the
mirrored x_hat, then the blend and the step. The finest result is mirrored once more (`Hooks.finish`), so
the written image equals its mirror exactly (the blend's resampling is mirror-symmetric only up to float
rounding).

Out of core both mirrors read the mirrored rectangle from the global state: x_hat of the whole scale is
complete after pass A, and the final mirror recomputes the last step on the mirrored rectangle
(`tiles.step_tile`), so tiled == in memory bit for bit."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import ConfigError
from ..plan import Plan
from ..sample.hooks import Box, Hooks, Reader

AXES = {"horizontal": ("left", "right"), "vertical": ("top", "bottom")}


class Mirror:
    """x_hat's kept half mirrored onto the other, on any rectangle (global coordinates of each scale).

    axis "horizontal": the image is symmetric under a left-right flip (keep "left" or "right");
    "vertical": under a top-bottom flip (keep "top" or "bottom")."""

    def __init__(self, sizes: list[tuple[int, int]], axis: str, keep: str) -> None:
        if axis not in AXES:
            raise ConfigError(f"--axis must be horizontal or vertical, got {axis!r}")
        if keep not in AXES[axis]:
            raise ConfigError(f"--keep must be {' or '.join(AXES[axis])} with --axis {axis}, got {keep!r}")
        self.sizes, self.dim = sizes, 2 if axis == "horizontal" else 1
        self.first = keep in ("left", "top")

    def apply(self, n: int, box: Box, read: Reader) -> torch.Tensor:
        """The symmetrised rectangle `box` of an image n pixels long along the mirrored dimension."""
        y0, y1, x0, x1 = box
        a, b = (x0, x1) if self.dim == 2 else (y0, y1)
        # keep the first half: positions < ceil(n/2) are kept; keep the second: positions >= floor(n/2)
        pos = torch.arange(a, b)
        kept = pos < (n + 1) // 2 if self.first else pos >= n // 2
        if bool(kept.all()):  # (a tile inside one half reads only what it needs: same values)
            return read(box)
        if self.dim == 2:
            mirrored = read((y0, y1, n - x1, n - x0)).flip(2)
            kept = kept[None, None, :]
        else:
            mirrored = read((n - y1, n - y0, x0, x1)).flip(1)
            kept = kept[None, :, None]
        if not bool(kept.any()):
            return mirrored
        return torch.where(kept, read(box), mirrored)

    def kept_any(self, scale: int, box: Box) -> bool:
        """Whether `box` has a pixel of the kept half at `scale` (else its raw x_hat is never read)."""
        n = self.sizes[scale][self.dim - 1]
        a, b = (box[2], box[3]) if self.dim == 2 else (box[0], box[1])
        return a < (n + 1) // 2 if self.first else b > n // 2

    def transform(self, scale: int, t: int, box: Box, read: Reader) -> torch.Tensor:
        return self.apply(self.sizes[scale][self.dim - 1], box, read)

    def finish(self, box: Box, read: Reader) -> torch.Tensor:
        return self.apply(self.sizes[0][self.dim - 1], box, read)


def make(axis: str, keep: str | None) -> Callable[[Plan], Hooks]:
    """Hooks of `sidpipe symmetric REF --axis horizontal|vertical [--keep left|right|top|bottom]`."""
    keep = keep or AXES.get(axis, ("",))[0]
    Mirror([(1, 1)], axis, keep)  # check the arguments before any work

    def build(plan: Plan) -> Hooks:
        m = Mirror(plan.out_sizes, axis, keep)
        return Hooks(transform=m.transform, finish=m.finish, estimated=m.kept_any,
                     identity={"app": "symmetric", "axis": axis, "keep": keep})

    return build
