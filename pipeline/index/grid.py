"""Which patches of a reference scale an index holds, and reading them back by id."""

from __future__ import annotations

from dataclasses import dataclass

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
        """Patches with ids in [start, stop) as (n, d) float32 rows."""
        ids = torch.arange(start, stop, device=image.device)
        return gather_patches(image, self, ids)


class PatchReader:
    """Reads reference patches by id fast: the image is kept as its p-wide rows, (C*H*(W-p+1), p), so a
    patch is C*p row copies instead of C*p*p scattered reads (memory: p times the image).

    With `window=(offset, size)` it also reads just the centred size x size window of each patch (the
    part the fold keeps) from its own size-wide rows.
    """

    def __init__(self, image: torch.Tensor, grid: PatchGrid, window: tuple[int, int] | None = None) -> None:
        c, h, w = grid.channels, grid.height, grid.width
        if tuple(image.shape) != (c, h, w):
            raise ValueError(f"image shape {tuple(image.shape)} does not match the grid {(c, h, w)}")
        self.grid = grid
        self._full = self._store(image, grid.patch_size, 0)
        self._window = self._store(image, window[1], window[0]) if window else None

    @staticmethod
    def _store(image: torch.Tensor, size: int, offset: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        c, h, w = image.shape
        wq = w - size + 1
        rows = image.float().unfold(2, size, 1).contiguous().reshape(c * h * wq, size)
        ch, dy = torch.arange(c), torch.arange(size)
        offsets = (ch[:, None] * (h * wq) + dy[None, :] * wq).reshape(-1).to(image.device)
        return rows, offsets, wq, offset * wq + offset

    def read(self, ids: torch.Tensor, window: bool = False) -> torch.Tensor:
        """(...,) ids -> (..., d) float32 patches (channel-major like `unfold`), or their windows."""
        rows, offsets, wq, shift = self._window if window else self._full
        _, cols = self.grid.shape
        s = self.grid.stride
        base = (ids // cols) * s * wq + (ids % cols) * s + shift
        out = rows[(base[..., None] + offsets).reshape(-1)]
        return out.reshape(*ids.shape, offsets.numel() * rows.shape[1])


def gather_patches(image: torch.Tensor, grid: PatchGrid, ids: torch.Tensor,
                   columns: torch.Tensor | None = None) -> torch.Tensor:
    """Reference patches by id: (..., d) (or (..., len(columns)) when only those patch entries are wanted)."""
    off = grid.pixel_offsets(image.device)
    if columns is not None:
        off = off[columns]
    flat = image.reshape(-1)
    return flat[grid.top_left(ids)[..., None] + off]
