"""Hooks: how an application (inpaint, outpaint, retarget, ...) steers the coarse-to-fine sampler.

The sampler never knows application names; an application is a small module that fills a `Hooks`.
Every hook works on rectangles `box` = (y0, y1, x0, x1) in the global pixel coordinates of its scale,
and must give a pixel the same value whatever rectangle it is computed in: the in-memory sampler calls
it once with the whole image, the tiled sampler once per tile, and the two stay equal bit for bit.
Noise a hook draws is keyed by (seed, scale, step) and global position (`noise.noise_region`).

With `hooks=None` (or an empty `Hooks()`) the sampler runs exactly as without hooks.

Hooks, in the order the sampler calls them at scale s (index 0 = finest):

1. `start(s)`: the step the scale starts at (default T: from noise). 0 fixes the scale: its result is
   `init` at t = 0 and it is never denoised (retarget's coarsest scale, harmonize's coarse scales).
2. `init(s, t0, box, seed)`: x_{s,t0} on `box`; None = the keyed noise (only valid at t0 = T).
3. `transform(s, t, box, read)`: x_hat on `box` after the denoiser; `read(rect)` returns any rectangle
   of the denoiser's raw estimate (so a transform may read elsewhere, e.g. the mirrored rectangle).
   The noise estimate eps_hat is computed from the transformed x_hat.
4. `guide(s, crect)`: the guide g of the two-scale blend on rectangle `crect` of scale s + 1 (default:
   the finished coarser result x_{s+1,0}; None = that default); BLEND(x_hat, g) = x_hat - UP(DOWN(x_hat)) + UP(g).
5. `exclude(s, (h, w), p)`: a bool (h - p + 1, w - p + 1) tensor, True at the top-left corner of every
   reference patch to drop from scale s's dataset (exact denoiser and IVF index alike), or None.
6. `replace(s, t_prev, box, x_prev, seed)`: x_{t-1} on `box` after the step (e.g. a known region
   pasted back at that step's noise level).
7. `paste(box, x0)`: the finest scale's result on `box`, after its last step (final paste-back).
8. `finish(box, read)`: the finest scale's result on `box` after `paste`, where `read(rect)` returns the
   result before it on any rectangle (symmetric's final mirror reads the mirrored rectangle; the tiled
   sampler computes that rectangle's last step again rather than wait for the tile that owns it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

Box = tuple[int, int, int, int]  # y0, y1, x0, x1
Reader = Callable[[Box], torch.Tensor]


@dataclass(frozen=True)
class Hooks:
    """Optional callables steering the sampler (see the module docstring); None = the plain sampler."""

    start: Callable[[int], int] | None = None
    init: Callable[[int, int, Box, int], torch.Tensor | None] | None = None
    transform: Callable[[int, int, Box, Reader], torch.Tensor] | None = None
    guide: Callable[[int, Box], torch.Tensor | None] | None = None
    exclude: Callable[[int, tuple[int, int], int], torch.Tensor | None] | None = None
    replace: Callable[[int, int, Box, torch.Tensor, int], torch.Tensor] | None = None
    paste: Callable[[Box, torch.Tensor], torch.Tensor] | None = None
    finish: Callable[[Box, Reader], torch.Tensor] | None = None
    # active(s, box): False when `replace` decides every pixel of the box after every step whatever the
    # step computed (a tile away from an inpainting hole). The tiled sampler then only writes `replace`'s
    # value there, and denoises just the tiles whose estimate an active tile reads.
    active: Callable[[int, Box], bool] | None = None
    # estimated(s, box): False when no pixel of the denoiser's raw estimate on the box is ever read, through
    # `transform` or otherwise (symmetric: the mirrored half, whose x_hat is the kept half's mirror). The tiled
    # sampler does not denoise such tiles (the in-memory sampler denoises the whole image and ignores them).
    estimated: Callable[[int, Box], bool] | None = None
    # What the application is and its inputs (fingerprints, parameters): part of a run directory's
    # identity, so a resumed run never mixes two different jobs.
    identity: dict[str, Any] = field(default_factory=dict)
    # store(path, write): the same hooks reading their images and masks (`apps.masks.Planes`) from the zarr group
    # at `path` region by region, written there first when `write`. The tiled sampler stores them in the run
    # directory (`hooks.zarr`), so a task sent to a worker process carries a path, not the arrays.
    store: Callable[[Path, bool], Hooks] | None = None
    # Periodic rows / columns (tileable textures): the denoiser sees the image circularly padded and DOWN/UP
    # wrap around (`pyramid.resize_wrap`); the tiled sampler reads halos modulo the size (`pyramid.circular`).
    wrap: tuple[bool, bool] = (False, False)

    def start_step(self, scale: int, steps: int) -> int:
        t0 = steps if self.start is None else int(self.start(scale))
        if not 0 <= t0 <= steps:
            raise ValueError(f"start step {t0} of scale {scale} is outside [0, {steps}]")
        return t0


def start_step(hooks: Hooks | None, scale: int, steps: int, warm: int | None = None) -> int:
    """The step scale `scale` starts at: the application's (`Hooks.start`), else `warm` (a finer scale's warm
    start, `Config.warm_start`), else T."""
    if hooks is not None and hooks.start is not None:
        return hooks.start_step(scale, steps)
    return steps if warm is None else warm


def scale_starts(hooks: Hooks | None, num_scales: int, steps: int, warm: int | None = None) -> list[int]:
    """The step each scale starts at (index 0 = finest): `start_step`, with `warm` for every scale but the
    coarsest (the one with no coarser result to start from)."""
    return [start_step(hooks, s, steps, warm if s + 1 < num_scales else None) for s in range(num_scales)]


def keep_mask(hooks: Hooks | None, scale: int, size: tuple[int, int], patch_size: int) -> torch.Tensor | None:
    """Bool (h - p + 1, w - p + 1): True for the reference patches scale `scale` keeps; None = all."""
    if hooks is None or hooks.exclude is None:
        return None
    drop = hooks.exclude(scale, size, patch_size)
    if drop is None:
        return None
    h, w = size
    expected = (h - patch_size + 1, w - patch_size + 1)
    if tuple(drop.shape) != expected:
        raise ValueError(f"exclude hook of scale {scale} returned {tuple(drop.shape)}, expected {expected}")
    return ~drop.bool()
