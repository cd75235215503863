"""Scale pyramids: how many scales, their sizes, and the resampling used by DOWN, UP and BLUR.

Resampling is bicubic as in `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`
(antialiased, PIL-style, when shrinking) but written as explicit per-output taps with weights that
depend only on the *global* input and output sizes. Any rectangle of the output can therefore be
computed from the matching rectangle of the input (plus the taps' support), and every output pixel
is the same sum, in the same order, whatever rectangle it was computed in: tiled == whole image,
bit for bit. Each tap is one multiply and one add (never a fused multiply-add, whose rounding can
differ between a vectorised loop body and its scalar tail).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


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


def _cubic(x: torch.Tensor, a: float) -> torch.Tensor:
    """Keys' cubic convolution kernel with parameter a (float64)."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


class Taps:
    """1-D resampling from `n_in` to `n_out` samples as taps: out[o] = sum_k w[o, k] * in[idx[o, k]].

    antialias=False: torch's bicubic (a = -0.75, source index clamped at the borders);
    antialias=True: torch's/PIL's antialiased bicubic (a = -0.5, kernel widened by the shrink factor,
    weights renormalised inside the image). Unused taps have weight 0 and repeat a used index.
    wrap=True: a periodic signal (tileable textures): no kernel is cut at a border and source indices are
    not clamped but left unwrapped (they may be < 0 or >= n_in: read them from the periodic extension of
    the input, `circular`). Outputs outside [0, n_out) are then defined too: output o + k n_out reads the
    inputs of o shifted by k n_in with the same weights, so a rectangle reaching across the wrap (a tile's
    halo) is computed exactly as the whole image computes the pixels it repeats.
    """

    def __init__(self, n_in: int, n_out: int, antialias: bool, wrap: bool = False) -> None:
        self.n_in, self.n_out = n_in, n_out
        scale = n_in / n_out
        o = torch.arange(n_out, dtype=torch.float64)
        if antialias:
            support = 2.0 * scale if scale >= 1.0 else 2.0
            inv = 1.0 / scale if scale >= 1.0 else 1.0
            centre = scale * (o + 0.5)
            lo, hi = (centre - support + 0.5).floor(), (centre + support + 0.5).floor()
            if not wrap:
                lo, hi = torch.clamp(lo, min=0), torch.clamp(hi, max=n_in)
            k = int((hi - lo).max())
            j = torch.arange(k, dtype=torch.float64)
            idx = lo[:, None] + j[None, :]
            w = _cubic((idx - centre[:, None] + 0.5) * inv, -0.5)
            w = torch.where(idx < hi[:, None], w, torch.zeros_like(w))
            w = w / w.sum(1, keepdim=True)
            idx = idx if wrap else torch.minimum(idx, hi[:, None] - 1)
        else:
            src = scale * (o + 0.5) - 0.5
            base = src.floor()
            t = src - base
            idx = base[:, None] + torch.arange(-1, 3, dtype=torch.float64)[None, :]
            idx = idx if wrap else idx.clamp(0, n_in - 1)
            w = _cubic(torch.stack([t + 1, t, 1 - t, 2 - t], 1), -0.75)
        self.wrap = wrap
        self.idx = idx.long()
        self.w = w.float()

    def _taps(self, o0: int, o1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, weights) of outputs [o0, o1); with wrap, any outputs (periodically extended)."""
        if not self.wrap or (0 <= o0 and o1 <= self.n_out):
            return self.idx[o0:o1], self.w[o0:o1]
        o = torch.arange(o0, o1)
        period = torch.div(o, self.n_out, rounding_mode="floor")
        r = o - period * self.n_out
        return self.idx[r] + period[:, None] * self.n_in, self.w[r]

    def support(self, o0: int, o1: int) -> tuple[int, int]:
        """Input range [i0, i1) read by outputs [o0, o1) (with wrap: unwrapped, possibly outside [0, n_in))."""
        part = self._taps(o0, o1)[0]
        return int(part.min()), int(part.max()) + 1

    def apply(self, x: torch.Tensor, dim: int, o0: int, o1: int, origin: int = 0) -> torch.Tensor:
        """Outputs [o0, o1) along `dim` of x, whose index 0 along `dim` is input sample `origin`."""
        idx, w = self._taps(o0, o1)
        idx, w = idx - origin, w.to(x.device)
        shape = [1] * x.dim()
        shape[dim] = o1 - o0
        out = None
        for k in range(idx.shape[1]):
            term = x.index_select(dim, idx[:, k].to(x.device)) * w[:, k].reshape(shape)
            out = term if out is None else out.add_(term)
        return out


@lru_cache(maxsize=128)
def taps(n_in: int, n_out: int, antialias: bool, wrap: bool = False) -> Taps:
    return Taps(n_in, n_out, antialias, wrap)


NO_WRAP = (False, False)


def resize_plan(in_size: tuple[int, int], out_size: tuple[int, int],
                wrap: tuple[bool, bool] = NO_WRAP) -> tuple[Taps, Taps]:
    """Row and column taps of `resize` from in_size to out_size (antialiased if either side shrinks);
    wrap: periodic rows / columns (see `Taps`)."""
    shrink = out_size[0] < in_size[0] or out_size[1] < in_size[1]
    return taps(in_size[0], out_size[0], shrink, wrap[0]), taps(in_size[1], out_size[1], shrink, wrap[1])


def resize_support(in_size: tuple[int, int], out_size: tuple[int, int],
                   box: tuple[int, int, int, int], wrap: tuple[bool, bool] = NO_WRAP) -> tuple[int, int, int, int]:
    """Input rectangle (y0, y1, x0, x1) that output rectangle `box` (y0, y1, x0, x1) reads. With wrap, both
    may reach outside the image along a periodic dimension (coordinates of its periodic extension)."""
    rows, cols = resize_plan(in_size, out_size, wrap)
    return (*rows.support(box[0], box[1]), *cols.support(box[2], box[3]))


def resize_region(x: torch.Tensor, origin: tuple[int, int], in_size: tuple[int, int], out_size: tuple[int, int],
                  box: tuple[int, int, int, int], wrap: tuple[bool, bool] = NO_WRAP) -> torch.Tensor:
    """Rectangle `box` (y0, y1, x0, x1) of resize(image, out_size), where x is the part of the (C, *in_size)
    image starting at `origin` (y, x) and containing at least `resize_support(...)` (with wrap: the part
    of its periodic extension, `circular`)."""
    rows, cols = resize_plan(in_size, out_size, wrap)
    y0, y1, x0, x1 = box
    c0, c1 = cols.support(x0, x1)
    part = x[:, :, c0 - origin[1]:c1 - origin[1]]
    part = rows.apply(part, 1, y0, y1, origin[0])
    return cols.apply(part, 2, x0, x1, c0)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample (C, H, W) to `size` with bicubic interpolation, antialiased when shrinking."""
    in_size = tuple(x.shape[-2:])
    if in_size == tuple(size):
        return x.clone()
    return resize_region(x, (0, 0), in_size, tuple(size), (0, size[0], 0, size[1]))


def reference_pyramid(reference: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """The reference at every scale, each resized directly from the full-resolution image."""
    return [reference.clone() if s == tuple(reference.shape[-2:]) else resize(reference, s) for s in sizes]


def blur(x: torch.Tensor, coarse_size: tuple[int, int]) -> torch.Tensor:
    """BLUR = UP(DOWN(x)): the low-pass part that the two-scale blend replaces (Alg. 2, line 17)."""
    return resize(resize(x, coarse_size), tuple(x.shape[-2:]))


def circular(read, rect: tuple[int, int, int, int], size: tuple[int, int],
             wrap: tuple[bool, bool]) -> torch.Tensor:
    """Rectangle `rect` (y0, y1, x0, x1) of the periodic extension of an image of `size` along the wrapped
    dimensions, put together from `read(r)` calls on rectangles r inside the image (one per period crossed).
    A rectangle inside the image is a single read."""

    def pieces(a: int, b: int, n: int, periodic: bool) -> list[tuple[int, int]]:
        if not periodic or (0 <= a and b <= n):
            return [(a, b)]
        out = []
        while a < b:
            base = (a // n) * n
            end = min(b, base + n)
            out.append((a - base, end - base))
            a = end
        return out

    rows = pieces(rect[0], rect[1], size[0], wrap[0])
    cols = pieces(rect[2], rect[3], size[1], wrap[1])
    parts = [[read((a, b, c, d)) for c, d in cols] for a, b in rows]
    band = [row[0] if len(row) == 1 else torch.cat(row, -1) for row in parts]
    return band[0] if len(band) == 1 else torch.cat(band, -2)


def resize_wrap(x: torch.Tensor, size: tuple[int, int], wrap: tuple[bool, bool]) -> torch.Tensor:
    """`resize` of (C, H, W) treating the rows (wrap[0]) and/or columns (wrap[1]) as periodic: the image's
    top continues its bottom, its left its right (tileable textures)."""
    in_size = tuple(x.shape[-2:])
    if in_size == tuple(size):
        return x.clone()
    whole = (0, size[0], 0, size[1])
    rect = resize_support(in_size, tuple(size), whole, wrap)
    part = circular(lambda r: x[:, r[0]:r[1], r[2]:r[3]], rect, in_size, wrap)
    return resize_region(part, (rect[0], rect[2]), in_size, tuple(size), whole, wrap)
