"""The streamed reference pyramid: bit-identical to reference_pyramid(load_image(path)) level by level,
read in bounded regions, written as OME-Zarr 0.5 multiscales; an out-of-core `run` still equals the
in-memory result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from PIL import Image

from sidpipe.config import load_config
from sidpipe.errors import ImageError
from sidpipe.io.lazy import open_image
from sidpipe.io.read import load_image
from sidpipe.io.write import _quantise
from sidpipe.plan import make_plan
from sidpipe.pyramid import reference_pyramid, scale_sizes
from sidpipe.refstream import write_reference_pyramid
from sidpipe.runner import RunOptions, generate, run

from conftest import BALLOONS, DATA

AURORA = DATA / "aurora.png"  # 298 x 167 RGB: odd height, not square

# (h, w) lists for aurora's 167 x 298: a factor-2 pyramid with odd sizes, a level at 1/8 and a tiny one,
# sizes that shrink one axis only, and a level just one pixel smaller than the image.
SIZES = {
    "factor2": scale_sizes(167, 298, 4, 2.0),
    "eighth": [(167, 298), (21, 37), (3, 5)],
    "one_axis": [(167, 298), (167, 101), (40, 298)],
    "almost": [(167, 298), (166, 297), (83, 149)],
}


def _memory_group() -> zarr.Group:
    return zarr.open_group(zarr.storage.MemoryStore(), mode="w")


def _assert_equal_pyramid(group: zarr.Group, image: np.ndarray, sizes: list[tuple[int, int]]) -> None:
    expected = reference_pyramid(torch.from_numpy(image), sizes)
    for s, level in enumerate(expected):
        np.testing.assert_array_equal(group[str(s)][...], level.numpy(), err_msg=f"level {s} {sizes[s]}")


class CountingRegions:
    """Wraps a region source and records every region read."""

    def __init__(self, source) -> None:
        self.source, self.reads = source, []

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.source.shape

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        self.reads.append((y0, y1, x0, x1))
        return self.source.read(y0, y1, x0, x1)


# --- equal to the in-memory pyramid -----------------------------------------------------------------


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("chunk,max_read,read_pixels", [(16, 40, 1 << 20), (16, 40, 200), (64, None, 1 << 20),
                                                        (100, None, 5000)])
def test_png_levels_equal_reference_pyramid(sizes, chunk, max_read, read_pixels):
    group = _memory_group()
    with open_image(AURORA) as image:
        arrays = write_reference_pyramid(image, sizes, group, chunk=chunk, max_read=max_read, read_pixels=read_pixels)
    assert [a.shape for a in arrays] == [(3, h, w) for h, w in sizes]
    assert all(a.chunks == (3, chunk, chunk) and a.dtype == np.float32 for a in arrays)
    _assert_equal_pyramid(group, load_image(AURORA), sizes)


def test_bigtiff_zstd_levels_equal_reference_pyramid(tmp_path):
    """A tiled BigTIFF (zstd) of a real photo, read tile by tile through tifffile's zarr store."""
    path = tmp_path / "night.tif"
    tifffile.imwrite(path, _quantise(load_image(DATA / "night_sky.png"), 8), bigtiff=True,
                     tile=(32, 32), compression="zstd", photometric="rgb")
    sizes = scale_sizes(169, 294, 3, 2.0) + [(169 // 8, 294 // 8), (7, 13)]
    group = zarr.open_group(tmp_path / "ref.zarr", mode="w")
    with open_image(path) as image:
        write_reference_pyramid(image, sizes, group, chunk=32, max_read=48)
    _assert_equal_pyramid(zarr.open_group(tmp_path / "ref.zarr", mode="r"), load_image(path), sizes)


def test_gray_jpeg_and_array_sources(tmp_path):
    """One channel (gray JPEG through libvips), and a (C, H, W) array in place of a region source."""
    path = tmp_path / "gray.jpg"
    Image.open(BALLOONS).convert("L").save(path, quality=90)
    sizes = scale_sizes(186, 248, 3, 1.7)
    reference = load_image(path)
    assert reference.shape[0] == 1
    with open_image(path) as image:
        write_reference_pyramid(image, sizes, streamed := _memory_group(), chunk=24, max_read=50)
    write_reference_pyramid(reference, sizes, in_memory := _memory_group(), chunk=24, max_read=50)
    _assert_equal_pyramid(streamed, reference, sizes)
    _assert_equal_pyramid(in_memory, reference, sizes)


# --- bounded reads, chunk-aligned writes, metadata, errors ------------------------------------------


def test_reads_are_bounded_and_chunks_written_whole():
    sizes = SIZES["eighth"][:2]  # not (3, 5): one of its outputs reads more than 40 rows (the whole height)
    source = CountingRegions(open_image(AURORA))
    group = _memory_group()
    write_reference_pyramid(source, sizes, group, chunk=16, max_read=40, read_pixels=300)
    source.source.close()
    # Level 0 is copied chunk by chunk; the 1/8 level's 16-row chunks need ~136 input rows, so they are
    # computed in pieces (one output's antialiased taps span 33 rows, under max_read = 40), each read in
    # bands of whole rows of at most 300 pixels.
    assert max(x1 - x0 for _, _, x0, x1 in source.reads) <= 40
    assert max((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in source.reads) <= 300
    assert (0, 167, 0, 298) not in source.reads
    n_chunks = sum(-(-h // 16) * -(-w // 16) for h, w in sizes)
    assert len(source.reads) > n_chunks  # more reads than chunks: strong shrinking split the chunks
    for s, (h, w) in enumerate(sizes):
        assert group[str(s)].nchunks_initialized == -(-h // 16) * -(-w // 16)


def test_ome_multiscales_metadata(tmp_path):
    sizes = SIZES["factor2"]
    with open_image(AURORA) as image:
        write_reference_pyramid(image, sizes, zarr.open_group(tmp_path / "ref.zarr", mode="w"), chunk=64)
    ome = zarr.open_group(tmp_path / "ref.zarr", mode="r").attrs["ome"]
    assert ome["version"] == "0.5"
    (multiscale,) = ome["multiscales"]
    assert [a["name"] for a in multiscale["axes"]] == ["c", "y", "x"]
    assert [d["path"] for d in multiscale["datasets"]] == ["0", "1", "2", "3"]
    for (h, w), dataset in zip(sizes, multiscale["datasets"]):
        assert dataset["coordinateTransformations"] == [{"type": "scale", "scale": [1.0, 167 / h, 298 / w]}]


def test_rewrite_replaces_existing_levels():
    """A resume without the "reference" marker rewrites the levels over whatever was there."""
    group = _memory_group()
    group.create_array("0", data=np.full((3, 167, 298), 7.0, np.float32), chunks=(3, 64, 64))
    group.create_array("1", data=np.full((3, 5, 5), 7.0, np.float32))
    with open_image(AURORA) as image:
        write_reference_pyramid(image, SIZES["eighth"], group, chunk=64)
    _assert_equal_pyramid(group, load_image(AURORA), SIZES["eighth"])


def test_corrupt_image_raises_image_error(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.open(AURORA).convert("RGB").save(tmp_path / "whole.jpg", quality=90)
    data = (tmp_path / "whole.jpg").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with open_image(path) as image, pytest.raises(ImageError, match="cannot decode"):
        write_reference_pyramid(image, SIZES["factor2"], _memory_group(), chunk=64)


@pytest.mark.parametrize("kwargs", [{"sizes": []}, {"chunk": 0}, {"max_read": 0}, {"read_pixels": 0},
                                    {"sizes": [(0, 5)]}])
def test_bad_arguments_raise_value_error(kwargs):
    sizes = kwargs.pop("sizes", SIZES["factor2"])
    with open_image(AURORA) as image, pytest.raises(ValueError):
        write_reference_pyramid(image, sizes, _memory_group(), **kwargs)


# --- the runner ------------------------------------------------------------------------------------

OVERRIDES = {"patch_size": 7, "steps": 2, "eta": 1.0, "num_scales": 3, "ivf_threshold": 1000,
             "width": 101, "height": 77, "seed": 3}


def test_out_of_core_run_streams_reference_and_equals_in_memory(tmp_path):
    reference = tmp_path / "ref.png"
    Image.open(BALLOONS).convert("RGB").resize((124, 93), Image.Resampling.LANCZOS).save(reference)
    cfg = load_config("default", OVERRIDES)
    image = load_image(reference)
    plan = make_plan(cfg, image.shape[-2:])
    expected = generate(image, cfg, plan=plan)[0]

    out = tmp_path / "out.tif"
    run(reference, out, cfg, options=RunOptions(out_of_core=True, keep_workdir=True, tile_size=64))
    run_dir = Path(str(out) + ".sidpipe")
    ref = zarr.open_group(run_dir / "ref.zarr", mode="r")
    _assert_equal_pyramid(ref, image, plan.ref_sizes)
    assert ref.attrs["ome"]["multiscales"][0]["name"] == "reference"
    state = zarr.open_group(run_dir / "state.zarr", mode="r")
    np.testing.assert_array_equal(np.clip(state["s0/x0"][...], -1.0, 1.0), expected)


def test_run_with_missing_input_raises_image_error(tmp_path):
    with pytest.raises(ImageError):
        run(tmp_path / "nope.png", tmp_path / "out.tif", load_config("default", OVERRIDES),
            options=RunOptions(out_of_core=True))
    assert not (tmp_path / "out.tif.sidpipe").exists()
