"""Local operators computed on rectangles equal the whole-image result bit for bit (the basis of tiling)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from sidpipe.denoise import KNNDenoiser, PatchDenoiser
from sidpipe.index import IVFIndex, IVFParams, PatchGrid
from sidpipe.pyramid import circular, resize, resize_region, resize_support, resize_wrap


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


@pytest.mark.parametrize("in_size,out_size", [((47, 62), (23, 31)), ((23, 31), (47, 62)), ((37, 49), (19, 25))])
@pytest.mark.parametrize("wrap", [(True, True), (False, True), (True, False)])
def test_periodic_resize_of_rectangles_across_the_wrap_equals_the_whole(in_size, out_size, wrap):
    """Tileable: a rectangle of the output's periodic extension (a tile's halo, reaching past the edges),
    resampled from the input read modulo its size, equals the whole periodic resize repeated, bit for bit."""
    x = torch.randn(3, *in_size, generator=torch.Generator().manual_seed(0))
    whole = resize_wrap(x, out_size, wrap)
    h, w = out_size
    reps = (3 if wrap[0] else 1, 3 if wrap[1] else 1)
    tiled_whole = whole.repeat(1, *reps)  # the periodic extension, origin at (-h, -w) along wrapped dims
    oy, ox = (-h if wrap[0] else 0), (-w if wrap[1] else 0)
    for box in [(0, h, 0, w), (-4, 9, -5, 7), (h - 6, h + 5, w - 3, w + 8), (-h // 2, 3, 2, w),
                (5, h - 5, -w // 3, w + w // 3)]:
        box = (box[0] if wrap[0] else max(box[0], 0), box[1] if wrap[0] else min(box[1], h),
               box[2] if wrap[1] else max(box[2], 0), box[3] if wrap[1] else min(box[3], w))
        rect = resize_support(in_size, out_size, box, wrap)
        part = circular(lambda r: x[:, r[0]:r[1], r[2]:r[3]], rect, in_size, wrap)
        got = resize_region(part, (rect[0], rect[2]), in_size, out_size, box, wrap)
        expected = tiled_whole[:, box[0] - oy:box[1] - oy, box[2] - ox:box[3] - ox]
        assert torch.equal(got, expected), (box, wrap)


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
