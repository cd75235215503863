"""Which patches of a reference scale an index holds, and reading them back by id."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..patches import patch_grid


@dataclass(frozen=True)
class PatchGrid:
    """The dataset Y_s: every `stride`-th p x p patch of a (C, H, W) reference, raster order.

    id = row * cols + col on the strided grid; the patch's top-left pixel is (row*stride, col*stride).
    """

    channels: int
    height: int
    width: int
    patch_size: int
    stride: int = 1

    @property
    def shape(self) -> tuple[int, int]:
        hp, wp = patch_grid(self.height, self.width, self.patch_size)
        return (hp - 1) // self.stride + 1, (wp - 1) // self.stride + 1

    @property
    def size(self) -> int:
        rows, cols = self.shape
        return rows * cols

    @property
    def dim(self) -> int:
        return self.channels * self.patch_size**2

    def pixel_offsets(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(d,) offsets into the flattened (C*H*W) image of a patch's entries, channel-major like `unfold`."""
        c, p = torch.arange(self.channels), torch.arange(self.patch_size)
        off = c[:, None, None] * (self.height * self.width) + p[None, :, None] * self.width + p[None, None, :]
        return off.reshape(-1).to(device)

    def top_left(self, ids: torch.Tensor) -> torch.Tensor:
        """Flat pixel index of each id's top-left corner."""
        _, cols = self.shape
        return (ids // cols) * self.stride * self.width + (ids % cols) * self.stride

    def descriptors(self, image: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Patches with ids in [start, stop) as (n, d) float32 rows (a strided copy of the patch rows they
        span: much faster than gathering by id)."""
        rows, cols = self.shape
        r0, r1 = start // cols, (stop - 1) // cols + 1
        s, p = self.stride, self.patch_size
        part = image.float()[:, r0 * s:(r1 - 1) * s + p, :(cols - 1) * s + p]
        view = part.unfold(1, p, s).unfold(2, p, s)                 # (C, r1 - r0, cols, p, p)
        flat = view.permute(1, 2, 0, 3, 4).reshape((r1 - r0) * cols, self.dim)
        return flat[start - r0 * cols:stop - r0 * cols]


class PatchReader:
    """Reads reference patches by id without copying the image: the flat image is viewed (no copy) as the
    overlapping rows of k consecutive floats that start at every pixel, and a patch is the C*k such rows
    starting at its own rows, taken with one `index_select` (faster than gathering C*k*k scattered floats,
    and no k-times row store in memory).

    With `window=(offset, size)` it also reads just the centred size x size window of each patch (the
    part the fold keeps).
    """

    def __init__(self, image: torch.Tensor, grid: PatchGrid, window: tuple[int, int] | None = None) -> None:
        c, h, w = grid.channels, grid.height, grid.width
        if tuple(image.shape) != (c, h, w):
            raise ValueError(f"image shape {tuple(image.shape)} does not match the grid {(c, h, w)}")
        self.grid = grid
        self.image = image.float().contiguous()
        self._full = self._plan(grid.patch_size, 0)
        self._window = self._plan(window[1], window[0]) if window else None

    def _plan(self, size: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        c, h, w = self.image.shape
        flat = self.image.reshape(-1)
        runs = flat.as_strided((flat.numel() - size + 1, size), (1, 1))
        dev = self.image.device
        starts = (torch.arange(c, device=dev)[:, None] * (h * w)
                  + (torch.arange(size, device=dev)[None, :] + offset) * w + offset).reshape(-1)
        return runs, starts

    def read(self, ids: torch.Tensor, window: bool = False) -> torch.Tensor:
        """(...,) ids -> (..., d) float32 patches (channel-major like `unfold`), or their windows."""
        runs, starts = self._window if window else self._full
        _, cols = self.grid.shape
        s = self.grid.stride
        top_left = (ids // cols) * (s * self.grid.width) + (ids % cols) * s
        out = runs.index_select(0, (top_left[..., None] + starts).reshape(-1))
        return out.reshape(*ids.shape, -1)

    def mean_patch(self) -> torch.Tensor:
        """(d,) mean of every patch of the grid, from a float64 summed-area table of the image (exact to
        float32 rounding, same bits whatever the thread count, memory ~2x the image in float64)."""
        g = self.grid
        rows, cols = g.shape
        s, p = g.stride, g.patch_size
        img = self.image.cpu().numpy().astype(np.float64)
        out = np.empty((g.channels, p, p))
        dy, dx = np.arange(p)[:, None], np.arange(p)[None, :]
        for ch in range(g.channels):
            for oy in range(min(s, p)):      # patches at stride s start on the pixels ≡ (oy, ox) mod s
                for ox in range(min(s, p)):
                    sub = img[ch, oy::s, ox::s]
                    sat = np.zeros((sub.shape[0] + 1, sub.shape[1] + 1))
                    sat[1:, 1:] = sub.cumsum(0).cumsum(1)
                    ys, xs = dy[oy::s] // s, dx[:, ox::s] // s  # window offsets of this residue class
                    out[ch, oy::s, ox::s] = (sat[ys + rows, xs + cols] - sat[ys, xs + cols]
                                             - sat[ys + rows, xs] + sat[ys, xs])
        return torch.from_numpy(out.reshape(-1) / (rows * cols)).float().to(self.image.device)


def gather_patches(image: torch.Tensor, grid: PatchGrid, ids: torch.Tensor,
                   columns: torch.Tensor | None = None) -> torch.Tensor:
    """Reference patches by id: (..., d) (or (..., len(columns)) when only those patch entries are wanted)."""
    off = grid.pixel_offsets(image.device)
    if columns is not None:
        off = off[columns]
    flat = image.reshape(-1)
    return flat[grid.top_left(ids)[..., None] + off]
