"""Patch geometry: unfold an image into p x p patches and fold denoised patches back with the window R_rho."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F


def window_radius(patch_size: int, rho: float, truncate: float) -> int:
    """Radius (px) of the part of each patch that the fold window keeps in the image interior.

    The window is a Gaussian on patch coordinates normalised to [-1, 1] with std `rho`, i.e. a std of
    rho*(p-1)/2 px; it is cut at `truncate` stds. rho = inf (uniform fold) keeps the whole patch.
    """
    half = patch_size // 2
    if math.isinf(rho):
        return half
    return max(0, min(half, int(truncate * rho * half)))


def window_weights(patch_size: int, rho: float) -> torch.Tensor:
    """Separable Gaussian fold weights (p, p), float64, peak 1; all ones for rho = inf."""
    if math.isinf(rho):
        return torch.ones(patch_size, patch_size, dtype=torch.float64)
    u = torch.linspace(-1.0, 1.0, patch_size, dtype=torch.float64)
    g = torch.exp(-0.5 * (u / rho) ** 2)
    return g[:, None] * g[None, :]


def patch_grid(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """Number of patch positions (rows, cols) at stride 1: every p x p window fully inside the image."""
    return height - patch_size + 1, width - patch_size + 1


def unfold(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """All stride-1 patches of x (C, H, W) as rows (Hp*Wp, C*p*p), raster order, channel-major patches."""
    cols = F.unfold(x[None], patch_size)  # (1, C*p*p, L)
    return cols[0].T


def border_band(patch_size: int, radius: int) -> int:
    """Width (px) of the image border in which the fold window is not truncated.

    Pixels closer than p//2 - r to an edge are not covered by any patch's truncated window, so there
    every covering patch contributes with its full Gaussian weight. With r = p//2 the band is empty.
    """
    return patch_size // 2 - radius


def band_mask(height: int, width: int, band: int) -> torch.Tensor:
    """Boolean (H, W): True on the untruncated border band."""
    m = torch.zeros(height, width, dtype=torch.bool)
    if band > 0:
        m[:band] = True
        m[-band:] = True
        m[:, :band] = True
        m[:, -band:] = True
    return m


def band_rows(n_positions: int, extent: int, patch_size: int, band: int) -> torch.Tensor:
    """Boolean over patch positions along one axis: True if the patch reaches the border band."""
    pos = torch.arange(n_positions)
    if band <= 0:
        return torch.zeros(n_positions, dtype=torch.bool)
    return (pos < band) | (pos + patch_size > extent - band)


def fold(patches: torch.Tensor, height: int, width: int, rho: float, radius: int) -> torch.Tensor:
    """Assemble patch estimates into an image: the normalised, windowed sum R_rho (Alg. 1, line 14).

    Args:
        patches: (C, p, p, Hp, Wp): the estimate of every stride-1 patch, position-major last.
            Entries outside the central (2r+1)^2 window are only read for patches reaching the border band.
        height, width: image size; Hp = H - p + 1, Wp = W - p + 1.
        rho: window std on [-1, 1] patch coordinates (inf = uniform).
        radius: truncation radius r from `window_radius`.

    Returns:
        (C, H, W) float32: for each pixel, sum_i g(k_i) * patch_i[k_i] / sum_i g(k_i) over the patches i
        covering it, where k_i is the pixel's offset in patch i and g the window, restricted to
        |k - centre| <= r except on the border band (see `border_band`).
    """
    c, p, _, hp, wp = patches.shape
    num = torch.zeros(c, height, width, dtype=torch.float64 if patches.dtype == torch.float64 else torch.float32)
    g = window_weights(p, rho)
    band = border_band(p, radius)
    mask = band_mask(height, width, band).to(num.dtype)
    lo, hi = p // 2 - radius, p // 2 + radius
    for ky in range(p):
        for kx in range(p):
            w = float(g[ky, kx])
            if w == 0.0:
                continue
            src = patches[:, ky, kx].to(num.dtype)
            if lo <= ky <= hi and lo <= kx <= hi:
                num[:, ky:ky + hp, kx:kx + wp].add_(src, alpha=w)
            elif band > 0:
                num[:, ky:ky + hp, kx:kx + wp].addcmul_(src, mask[ky:ky + hp, kx:kx + wp], value=w)
    return (num / fold_normaliser(height, width, p, rho, radius).to(num.dtype)).to(patches.dtype)


@lru_cache(maxsize=64)
def fold_normaliser(height: int, width: int, patch_size: int, rho: float, radius: int) -> torch.Tensor:
    """The fold's per-pixel weight sum (1, H, W), float64; depends on geometry only, so it is cached."""
    p = patch_size
    hp, wp = patch_grid(height, width, p)
    den = torch.zeros(1, height, width, dtype=torch.float64)
    g = window_weights(p, rho)
    band = border_band(p, radius)
    mask = band_mask(height, width, band).to(torch.float64)
    lo, hi = p // 2 - radius, p // 2 + radius
    for ky in range(p):
        for kx in range(p):
            w = float(g[ky, kx])
            if lo <= ky <= hi and lo <= kx <= hi:
                den[:, ky:ky + hp, kx:kx + wp] += w
            elif band > 0:
                den[:, ky:ky + hp, kx:kx + wp] += w * mask[ky:ky + hp, kx:kx + wp]
    return den
