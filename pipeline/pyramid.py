"""Scale pyramids: how many scales, their sizes, and the resampling used by DOWN, UP and BLUR."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def auto_num_scales(height: int, width: int, patch_size: int, coarsest_ratio: float, factor: float) -> int:
    """Scales such that the coarsest short side is nearest (in log scale) to coarsest_ratio * p.

    Never fewer than 1, and never so many that the coarsest scale is smaller than one patch.
    For 186 x 248, p = 15, ratio 1.7, factor 2: 4 scales (coarsest 23 x 31), as in the paper.
    """
    short = min(height, width)
    n = 1 + round(math.log(short / (coarsest_ratio * patch_size), factor))
    n = max(1, n)
    while n > 1 and round(short / factor ** (n - 1)) < patch_size:
        n -= 1
    return n


def scale_sizes(height: int, width: int, num_scales: int, factor: float, min_side: int = 1) -> list[tuple[int, int]]:
    """Sizes (h, w) of scales 0 (finest, = the given size) to num_scales - 1 (coarsest)."""
    return [
        (max(min_side, round(height / factor**s)), max(min_side, round(width / factor**s)))
        for s in range(num_scales)
    ]


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample (C, H, W) to `size` with bicubic interpolation, antialiased when shrinking."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x.clone()
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    out = F.interpolate(x[None], size=size, mode="bicubic", align_corners=False, antialias=shrink)
    return out[0]


def reference_pyramid(reference: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """The reference at every scale, each resized directly from the full-resolution image."""
    return [reference.clone() if s == tuple(reference.shape[-2:]) else resize(reference, s) for s in sizes]


def blur(x: torch.Tensor, coarse_size: tuple[int, int]) -> torch.Tensor:
    """BLUR = UP(DOWN(x)): the low-pass part that the two-scale blend replaces (Alg. 2, line 17)."""
    return resize(resize(x, coarse_size), tuple(x.shape[-2:]))
