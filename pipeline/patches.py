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


def query_positions(n_positions: int, stride: int) -> torch.Tensor:
    """Patch positions denoised along one axis: 0, s, 2s, ... plus the last one, so every pixel is covered."""
    pos = list(range(0, n_positions, stride))
    if pos[-1] != n_positions - 1:
        pos.append(n_positions - 1)
    return torch.tensor(pos, dtype=torch.long)


class Folder:
    """The fold of Alg. 1 done block by block: memory O(image), never O(image * p^2).

    Blocks of patch estimates are weighted with the window R_rho (truncated to radius r, untruncated on
    the border band, exactly as `fold`), scatter-added into a numerator image, and divided at the end by
    the same sum of weights. A block's contribution depends only on the block, so adding the same
    blocks in the same order gives the same bits whatever else is folded (tiles == whole image).

    Args:
        channels, height, width: the image (or the rectangle of it) being assembled.
        patch_size, rho, radius: as for `fold`.
        dtype: accumulation dtype (float32, or float64 for the naive reference path).
        origin, full: the rectangle's top-left pixel in the whole image, and the whole image's (H, W)
            (default: the rectangle is the whole image); the border band is the whole image's.
    """

    def __init__(self, channels: int, height: int, width: int, patch_size: int, rho: float, radius: int,
                 *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 origin: tuple[int, int] = (0, 0), full: tuple[int, int] | None = None) -> None:
        p = patch_size
        self.p, self.radius, self.dtype = p, radius, dtype
        self.origin = origin
        self.num = torch.zeros(channels, height, width, dtype=dtype, device=device)
        self.den = torch.zeros(1, height, width, dtype=dtype, device=device)
        g = window_weights(p, rho).to(dtype)
        lo, hi = p // 2 - radius, p // 2 + radius + 1
        inside = torch.zeros(p, p, dtype=dtype)
        inside[lo:hi, lo:hi] = 1.0
        self.g_full = g.reshape(-1, 1).to(device)                      # (p*p, 1)
        self.inside = inside.reshape(-1, 1).to(device)                 # (p*p, 1)
        self.g_box = g[lo:hi, lo:hi].reshape(-1, 1).to(device)         # (k*k, 1)
        self.band = border_band(p, radius)
        self.mask = None
        if self.band > 0:
            fh, fw = full or (height, width)
            ys = torch.arange(origin[0], origin[0] + height)
            xs = torch.arange(origin[1], origin[1] + width)
            rows = (ys < self.band) | (ys >= fh - self.band)
            cols = (xs < self.band) | (xs >= fw - self.band)
            self.mask = (rows[:, None] | cols[None, :]).to(dtype).to(device)

    def add(self, est: torch.Tensor, i0: int, j0: int, stride: int = 1) -> None:
        """Add a block of estimates.

        Args:
            est: (C, k, k, bh, bw) with k = p (whole patches; the band rule applies) or k = 2r + 1 (the
                window only: patches that do not reach the border band).
            i0, j0: patch position (top-left pixel, whole-image coordinates) of the block's first patch.
            stride: the block's patches sit at (i0 + stride*a, j0 + stride*b) (query stride).
        """
        c, k, _, bh, bw = est.shape
        n = bh * bw
        i0, j0 = i0 - self.origin[0], j0 - self.origin[1]
        size = ((bh - 1) * stride + k, (bw - 1) * stride + k)
        if k == self.p:
            weights = (self.g_full * self.inside).expand(k * k, n)
            if self.mask is not None:
                m = self.mask[i0:i0 + size[0], j0:j0 + size[1]]
                reach = F.unfold(m[None, None], k, stride=stride)[0]   # (p*p, n): pixel on the band
                weights = self.g_full * torch.maximum(self.inside, reach)
            off = 0
        else:
            weights = self.g_box.expand(k * k, n)
            off = self.p // 2 - self.radius
        cols = (est.reshape(c, k * k, n).to(self.dtype) * weights).reshape(1, c * k * k, n)
        y0, x0 = i0 + off, j0 + off
        self.num[:, y0:y0 + size[0], x0:x0 + size[1]] += F.fold(cols, size, k, stride=stride)[0]
        den = F.fold(weights.reshape(1, k * k, n).contiguous(), size, k, stride=stride)[0]
        self.den[:, y0:y0 + size[0], x0:x0 + size[1]] += den

    def result(self) -> torch.Tensor:
        """(C, H, W): numerator / weights. Every pixel must have been covered."""
        return self.num / self.den


def regular_runs(positions: torch.Tensor, stride: int) -> list[tuple[int, int]]:
    """Split sorted positions into runs spaced exactly `stride` apart: [(first position, count), ...]."""
    pos = positions.tolist()
    runs, start = [], 0
    for i in range(1, len(pos) + 1):
        if i == len(pos) or pos[i] - pos[i - 1] != stride:
            runs.append((pos[start], i - start))
            start = i
    return runs
