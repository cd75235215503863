"""Reproducible Gaussian noise keyed by (seed, scale, step) and a fixed global block grid.

The noise of a pixel never depends on how the image is tiled or scheduled: the image plane is cut
into fixed NOISE_BLOCK x NOISE_BLOCK blocks, each drawn from its own generator seeded by a hash of
(seed, scale, step, block row, block col), and any region is cut from the blocks that cover it.
"""

from __future__ import annotations

import hashlib
import struct

import torch

NOISE_BLOCK = 256


def _block_seed(*key: int) -> int:
    digest = hashlib.blake2b(struct.pack(f"<{len(key)}q", *key), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def noise_region(
    channels: int,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
    *,
    seed: int,
    scale: int,
    step: int,
) -> torch.Tensor:
    """N(0, I) noise for rows [y0, y1) and columns [x0, x1) of the plane keyed by (seed, scale, step)."""
    b = NOISE_BLOCK
    out = torch.empty(channels, y1 - y0, x1 - x0)
    gen = torch.Generator()
    for by in range(y0 // b, (y1 - 1) // b + 1):
        for bx in range(x0 // b, (x1 - 1) // b + 1):
            gen.manual_seed(_block_seed(seed, scale, step, by, bx))
            block = torch.randn(channels, b, b, generator=gen)
            ya, yb = max(y0, by * b), min(y1, (by + 1) * b)
            xa, xb = max(x0, bx * b), min(x1, (bx + 1) * b)
            out[:, ya - y0:yb - y0, xa - x0:xb - x0] = block[:, ya - by * b:yb - by * b, xa - bx * b:xb - bx * b]
    return out


def noise_like(shape: tuple[int, int, int], *, seed: int, scale: int, step: int) -> torch.Tensor:
    """Noise for a whole (C, H, W) plane at (seed, scale, step)."""
    c, h, w = shape
    return noise_region(c, 0, h, 0, w, seed=seed, scale=scale, step=step)
