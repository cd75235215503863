"""Local operators computed on rectangles equal the whole-image result bit for bit (the basis of tiling)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from sidpipe.denoise import KNNDenoiser, PatchDenoiser
from sidpipe.index import IVFIndex, IVFParams, PatchGrid
from sidpipe.pyramid import resize, resize_region, resize_support


def boxes(h: int, w: int, tile: int):
    for y0, x0 in itertools.product(range(0, h, tile), range(0, w, tile)):
        yield y0, min(h, y0 + tile), x0, min(w, x0 + tile)


@pytest.mark.parametrize("in_size,out_size", [((93, 124), (47, 62)), ((47, 62), (93, 124)), ((101, 57), (50, 29)),
                                              ((186, 248), (23, 31)), ((30, 30), (30, 61))])
def test_resize_matches_torch_and_tiles(in_size, out_size):
    x = torch.randn(3, *in_size, generator=torch.Generator().manual_seed(0))
    shrink = out_size[0] < in_size[0] or out_size[1] < in_size[1]
    ref = F.interpolate(x[None], size=out_size, mode="bicubic", align_corners=False, antialias=shrink)[0]
    whole = resize(x, out_size)
    assert (whole - ref).abs().max() < 2e-5
    for box in boxes(*out_size, 13):
        y0, y1, x0, x1 = resize_support(in_size, out_size, box)
        part = resize_region(x[:, y0:y1, x0:x1], (y0, x0), in_size, out_size, box)
        assert torch.equal(part, whole[:, box[0]:box[1], box[2]:box[3]])


def _check_tiles(denoiser, x, alpha, sigma, tile):
    whole = denoiser(x, alpha, sigma)
    full = tuple(x.shape[-2:])
    for box in boxes(*full, tile):
        y0, y1, x0, x1 = denoiser.support(full, box)
        part = denoiser.denoise_box(x[:, y0:y1, x0:x1], (y0, x0), full, box, alpha, sigma)
        assert torch.equal(part, whole[:, box[0]:box[1], box[2]:box[3]]), box


@pytest.mark.parametrize("precision,stride,tile", [("bf16", 1, 40), ("fp32", 2, 27)])
def test_exact_denoiser_tiles_equal_whole(small_ref, precision, stride, tile):
    x = 0.6 * small_ref.flip(-1) + 0.4 * torch.randn(small_ref.shape, generator=torch.Generator().manual_seed(1))
    x = F.pad(x[None], (0, 30, 0, 25), mode="reflect")[0]  # 62 x 79: several tiles
    d = PatchDenoiser(small_ref, patch_size=7, precision=precision, query_block=8, query_stride=stride)
    _check_tiles(d, x, 0.6, 0.4, tile)


def test_knn_denoiser_tiles_equal_whole(small_ref):
    x = 0.8 * small_ref.flip(-2) + 0.2 * torch.randn(small_ref.shape, generator=torch.Generator().manual_seed(2))
    grid = PatchGrid(3, 37, 49, 7)
    index = IVFIndex.build(small_ref, grid, IVFParams(nlist=6, nprobe=1))
    d = KNNDenoiser(small_ref, index, k=5, patch_size=7, query_block=8)
    _check_tiles(d, x, 0.8, 0.2, 16)
