"""Tests for sidpipe.io.lazy (region reads) and sidpipe.io.bigtiff (levels, BigTIFF, OME-Zarr)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import pyvips
import tifffile
import zarr
from PIL import Image

from sidpipe.errors import ImageError
from sidpipe.io.bigtiff import (
    RegionSource,
    ZarrSource,
    build_levels,
    write_bigtiff,
    write_ome_zarr,
)
from sidpipe.io.color import srgb
from sidpipe.io.lazy import LazyImage, open_image
from sidpipe.io.read import load_image
from sidpipe.io.write import _quantise

DATA = Path(__file__).resolve().parent / "data"
PNGS = sorted(DATA.glob("*.png"))
AURORA = DATA / "aurora.png"  # 298 x 167 RGB: odd height, not square


@pytest.fixture(scope="module")
def aurora_u8() -> np.ndarray:
    """aurora.png as (H, W, 3) uint8."""
    return _quantise(load_image(AURORA), 8)


class ArraySource:
    """A region source over an in-memory (C, H, W) array (a real implementation, for small tests)."""

    def __init__(self, image: np.ndarray, fail_after: int | None = None, error: type = RuntimeError):
        self.image, self.reads, self.fail_after, self.error = image, 0, fail_after, error

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.image.shape
        return c, h, w

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise self.error("source failed mid-write")
        return self.image[:, y0:y1, x0:x1]


def _full(image: LazyImage) -> np.ndarray:
    _, h, w = image.shape
    return image.read(0, h, 0, w)


def _assert_reads_like_load_image(path: Path) -> LazyImage:
    """open_image(path) reads exactly load_image(path), whole and by region."""
    expected = load_image(path)
    with open_image(path) as image:
        assert image.shape == expected.shape
        got = _full(image)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
        _, h, w = image.shape
        y0, y1, x0, x1 = h // 5, h - h // 7, w // 3, w - 1
        np.testing.assert_array_equal(image.read(y0, y1, x0, x1), expected[:, y0:y1, x0:x1])
        np.testing.assert_array_equal(image.read(h - 1, h, 0, 1), expected[:, -1:, :1])
    return image


def _ramp16() -> np.ndarray:
    """(150, 210) uint16 gray with values finer than 8 bits."""
    return (np.arange(150 * 210, dtype=np.uint32).reshape(150, 210) * 2 + 1000).astype(np.uint16)


# --- open_image == load_image --------------------------------------------------------


@pytest.mark.parametrize("path", PNGS, ids=[p.name for p in PNGS])
def test_png_reads_like_load_image(path):
    _assert_reads_like_load_image(path)


def _tiff_rgb8_tiled_zlib(path, u8):
    tifffile.imwrite(path, u8, tile=(64, 64), compression="zlib", photometric="rgb")


def _tiff_gray16_striped_lzw(path, u8):
    tifffile.imwrite(path, _ramp16(), rowsperstrip=16, compression="lzw", photometric="minisblack")


def _tiff_rgb_zstd_bigtiff(path, u8):  # libvips reads this as all zeros without an error
    tifffile.imwrite(path, u8, bigtiff=True, tile=(64, 64), compression="zstd", photometric="rgb")


def _tiff_pyramidal(path, u8):
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(u8, tile=(64, 64), subifds=2, photometric="rgb", compression="zlib")
        for k in (2, 4):
            tw.write(u8[::k, ::k], tile=(64, 64), subfiletype=1, photometric="rgb", compression="zlib")


def _tiff_jpeg_ycbcr(path, u8):  # load_image decodes this with PIL/libtiff, open_image with tifffile
    tifffile.imwrite(path, u8, tile=(64, 64), compression="jpeg", photometric="rgb")


def _tiff_planar_rgba_transparent(path, u8):
    alpha = np.full(u8.shape[:2], 255, np.uint8)
    alpha[40:60, 100:200] = 90
    rgba = np.dstack([u8, alpha]).transpose(2, 0, 1)
    tifffile.imwrite(path, rgba, photometric="rgb", planarconfig="separate", extrasamples=["unassalpha"])


def _tiff_palette(path, u8):  # PIL converts palettes: decoded whole (small), not by region
    colormap = np.stack([np.arange(256) * 257, np.arange(256)[::-1] * 257, np.full(256, 30000)])
    tifffile.imwrite(path, u8[..., 1], photometric="palette", colormap=colormap.astype(np.uint16))


TIFF_WRITERS = [
    _tiff_rgb8_tiled_zlib,
    _tiff_gray16_striped_lzw,
    _tiff_rgb_zstd_bigtiff,
    _tiff_pyramidal,
    _tiff_jpeg_ycbcr,
    _tiff_planar_rgba_transparent,
    _tiff_palette,
]


@pytest.mark.parametrize("make", TIFF_WRITERS, ids=[f.__name__[6:] for f in TIFF_WRITERS])
def test_tiff_reads_like_load_image(tmp_path, aurora_u8, make):
    path = tmp_path / "in.tif"
    make(path, aurora_u8)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*has transparent pixels")
        image = _assert_reads_like_load_image(path)
    assert image.shape[0] == (1 if make is _tiff_gray16_striped_lzw else 3)
    if make is _tiff_rgb_zstd_bigtiff:
        assert np.unique(aurora_u8).size > 100  # the data really is there, not zeros


def test_transparent_region_warns_and_composites_over_white(tmp_path, aurora_u8):
    path = tmp_path / "rgba.tif"
    _tiff_planar_rgba_transparent(path, aurora_u8)
    with open_image(path) as image:
        assert image.shape == (3, 167, 298)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            image.read(0, 40, 0, 298)  # opaque rows: alpha dropped silently
        with pytest.warns(UserWarning, match="composited over white"):
            image.read(40, 60, 100, 200)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_reads_like_load_image_with_exif_orientation(tmp_path, aurora_u8, orientation):
    # PIL and libvips both decode with libjpeg(-turbo), islow DCT and fancy upsampling: the pixels
    # agree exactly, so the tolerance is 0.
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    Image.fromarray(aurora_u8).save(path, quality=90, exif=exif.tobytes())
    image = _assert_reads_like_load_image(path)
    assert image.shape[1:] == ((298, 167) if orientation >= 5 else (167, 298))


@pytest.mark.parametrize(
    "mode,suffix", [("L", ".jpg"), ("CMYK", ".jpg"), ("LA", ".png"), ("P", ".png"), ("RGB", ".bmp")]
)
def test_other_modes_and_formats_read_like_load_image(tmp_path, aurora_u8, mode, suffix):
    path = tmp_path / f"img{suffix}"
    Image.fromarray(aurora_u8).convert(mode).save(path)
    _assert_reads_like_load_image(path)


def test_region_read_decodes_only_the_tiles_it_needs(tmp_path):
    # A 303-MP tiled RGB BigTIFF with one corrupt tile in its last row: a 512 x 512 region elsewhere
    # reads fine (so the file is not decoded whole), the region over the bad tile raises.
    side, tile = 17408, 512
    path = tmp_path / "huge.tif"
    blank = np.full((tile, tile, 3), 77, np.uint8)
    n = (side // tile) ** 2
    tifffile.imwrite(
        path, (blank for _ in range(n)), shape=(side, side, 3), dtype=np.uint8,
        tile=(tile, tile), compression="zstd", photometric="rgb", bigtiff=True,
    )
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[n - 1]  # bottom-right tile
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xde\xad\xbe\xef" * 4)
    with open_image(path) as image:
        assert image.shape == (3, side, side)
        region = image.read(5000, 5512, 7000, 7512)
        np.testing.assert_array_equal(region, np.float32(77 / 127.5 - 1))
        with pytest.raises(ImageError, match="cannot decode region"):
            image.read(side - 10, side, side - 10, side)


# --- errors ---------------------------------------------------------------------------


def test_truncated_jpeg_raises_instead_of_giving_zeros(tmp_path, aurora_u8):
    good = tmp_path / "good.jpg"
    Image.fromarray(aurora_u8).save(good, quality=90)
    data = good.read_bytes()
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated.jpg"):
        with open_image(bad) as image:
            _full(image)


def test_corrupt_jpeg_raises(tmp_path, aurora_u8):
    good = tmp_path / "good.jpg"
    Image.fromarray(aurora_u8).save(good, quality=90)
    data = bytearray(good.read_bytes())
    data[700:900] = bytes(200)
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="corrupt.jpg"):
        with open_image(bad) as image:
            _full(image)


def test_corrupt_tiff_tile_raises(tmp_path, aurora_u8):
    path = tmp_path / "bad.tif"
    _tiff_rgb8_tiled_zlib(path, aurora_u8)
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[0]
    with open(path, "r+b") as f:
        f.seek(offset + 4)
        f.write(b"\xff" * 64)
    with open_image(path) as image:
        np.testing.assert_array_equal(image.read(100, 167, 200, 298), load_image(AURORA)[:, 100:, 200:])
        with pytest.raises(ImageError, match="cannot decode region"):
            image.read(0, 10, 0, 10)


def test_missing_non_image_closed_and_bad_region(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        open_image(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageError, match="not an image"):
        open_image(tmp_path / "text.png")
    (tmp_path / "text.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ImageError, match="not an image"):
        open_image(tmp_path / "text.tif")
    image = open_image(AURORA)
    with pytest.raises(ValueError, match="outside"):
        image.read(0, 168, 0, 10)
    image.close()
    with pytest.raises(ImageError, match="closed"):
        image.read(0, 1, 0, 1)


# --- build_levels ---------------------------------------------------------------------


def _reference_halve(x: np.ndarray) -> np.ndarray:
    x = np.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2)), mode="edge")
    return (x[:, 0::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 0::2] + x[:, 1::2, 1::2]) * np.float32(0.25)


def test_build_levels_halves_with_edge_replication_chunk_by_chunk(tmp_path):
    source = open_image(AURORA)  # 167 x 298
    group = zarr.open_group(tmp_path / "levels.zarr", mode="w")
    levels = build_levels(source, group, min_size=40, chunk=32)
    assert [lv.shape for lv in levels] == [(3, 84, 149), (3, 42, 75), (3, 21, 38)]
    assert all(isinstance(lv, RegionSource) for lv in [source, *levels])
    expected = load_image(AURORA)
    for k, level in enumerate(levels, start=1):
        expected = _reference_halve(expected)
        array = group[str(k)]
        assert array.chunks == (3, 32, 32) and array.dtype == np.float32
        np.testing.assert_allclose(level.read(0, level.shape[1], 0, level.shape[2]), expected, atol=1e-6)
    assert build_levels(source, group, min_size=298) == []


# --- write_bigtiff --------------------------------------------------------------------


def _pyramid(tmp_path: Path, image: np.ndarray, min_size: int = 40) -> list:
    group = zarr.open_group(tmp_path / "levels.zarr", mode="w")
    source = ArraySource(image)
    return [source, *build_levels(source, group, min_size=min_size, chunk=64)]


def _all(source) -> np.ndarray:
    _, h, w = source.shape
    return source.read(0, h, 0, w)


@pytest.mark.parametrize("compression,tag", [("zlib", 8), ("zstd", 50000), ("lzw", 5), ("jpeg", 7), ("none", 1)])
def test_write_bigtiff_round_trip_with_tifffile(tmp_path, compression, tag):
    levels = _pyramid(tmp_path, load_image(AURORA))
    out = tmp_path / "out.tif"
    calls = []
    write_bigtiff(out, levels, tile=64, compression=compression, dpi=300, icc=srgb().data, bigtiff="always",
                  progress=lambda done, total: calls.append((done, total)))
    total = sum(-(-lv.shape[1] // 64) * -(-lv.shape[2] // 64) for lv in levels)
    assert calls[-1] == (total, total) and len(calls) == total
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff and len(tif.pages) == 1
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (64, 64)
        assert page.compression == tag
        assert page.tags["XResolution"].value == (300, 1) and page.tags["YResolution"].value == (300, 1)
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.INCH
        assert page.tags["InterColorProfile"].value == srgb().data
        subs = page.pages
        assert [p.shape for p in subs] == [(lv.shape[1], lv.shape[2], 3) for lv in levels[1:]]
        assert [p.subfiletype for p in subs] == [1] * len(subs)
        assert subs[0].tags["XResolution"].value == (150, 1)
        stored = [page.asarray(), *(p.asarray() for p in subs)]
        assert [s.shape for s in tif.series[0].levels] == [s.shape for s in stored]
    for k, (array, level) in enumerate(zip(stored, levels)):
        assert array.dtype == np.uint8
        expected = _quantise(_all(level), 8)
        if compression == "jpeg":  # lossy: quality 95 but 4:2:0 chroma, and small levels are all detail
            assert np.abs(array.astype(int) - expected).mean() < (2.5 if k == 0 else 6)
        else:
            np.testing.assert_array_equal(array, expected)
    assert {p.name for p in tmp_path.iterdir()} == {"levels.zarr", "out.tif"}


@pytest.mark.parametrize("compression", ["zlib", "jpeg"])  # libvips cannot read zstd TIFF
def test_write_bigtiff_reads_back_with_pyvips(tmp_path, compression):
    levels = _pyramid(tmp_path, load_image(AURORA))
    out = tmp_path / "out.tif"
    write_bigtiff(out, levels, tile=64, compression=compression, dpi=254, icc=srgb().data)
    image = pyvips.Image.new_from_file(str(out), fail_on="warning")
    assert (image.width, image.height, image.bands) == (298, 167, 3)
    assert image.xres == pytest.approx(10.0) and image.yres == pytest.approx(10.0)  # pixels/mm
    assert image.get("n-subifds") == len(levels) - 1
    assert image.get("icc-profile-data") == srgb().data
    if compression == "zlib":
        np.testing.assert_array_equal(image.numpy(), _quantise(_all(levels[0]), 8))
    last = pyvips.Image.new_from_file(str(out), subifd=len(levels) - 2, fail_on="warning")
    assert (last.width, last.height) == levels[-1].shape[:0:-1]


def test_write_bigtiff_16bit_gray(tmp_path):
    gray = (_ramp16() / 32767.5 - 1).astype(np.float32)[None]
    levels = _pyramid(tmp_path, gray, min_size=60)
    out = tmp_path / "gray16.tif"
    write_bigtiff(out, levels, tile=32, compression="zstd", bit_depth=16)
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK and "InterColorProfile" not in page.tags
        assert "XResolution" not in page.tags or page.tags["ResolutionUnit"].value == tifffile.RESUNIT.NONE
        data = page.asarray()
        assert data.dtype == np.uint16 and data.shape == (150, 210)
        np.testing.assert_array_equal(data, _ramp16())
        assert [p.shape for p in page.pages] == [(75, 105), (38, 53)]
        np.testing.assert_array_equal(page.pages[0].asarray(), _quantise(_all(levels[1]), 16))
    np.testing.assert_array_equal(_full(open_image(out)), gray)


def test_write_bigtiff_rejects_bad_options(tmp_path):
    levels = _pyramid(tmp_path, load_image(AURORA))
    with pytest.raises(ImageError, match="8-bit only"):
        write_bigtiff(tmp_path / "a.tif", levels, compression="jpeg", bit_depth=16)
    with pytest.raises(ImageError, match="unsupported compression"):
        write_bigtiff(tmp_path / "a.tif", levels, compression="lzma")
    with pytest.raises(ValueError, match="level 1"):
        write_bigtiff(tmp_path / "a.tif", [levels[0], levels[2]])
    with pytest.raises(ValueError, match="multiple of 16"):
        write_bigtiff(tmp_path / "a.tif", levels, tile=100)
    assert not (tmp_path / "a.tif").exists()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_write_bigtiff_failure_mid_write_leaves_nothing(tmp_path, error):
    folder = tmp_path / "out"
    folder.mkdir()
    source = ArraySource(load_image(AURORA), fail_after=5, error=error)
    with pytest.raises(error, match="mid-write"):
        write_bigtiff(folder / "out.tif", [source], tile=32)
    assert source.reads < 50 and list(folder.iterdir()) == []  # stopped early (49 tiles in all)


def test_write_bigtiff_replaces_existing_file(tmp_path):
    out = tmp_path / "out.tif"
    out.write_bytes(b"old")
    write_bigtiff(out, [ArraySource(load_image(AURORA))], compression="none")
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].shape == (167, 298, 3) and "InterColorProfile" not in tif.pages[0].tags
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


# --- write_ome_zarr -------------------------------------------------------------------


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_write_ome_zarr_round_trip(tmp_path, bit_depth):
    levels = _pyramid(tmp_path, load_image(AURORA))
    out = tmp_path / "out.ome.zarr"
    (out / "stale").mkdir(parents=True)  # an existing store is replaced
    write_ome_zarr(out, levels, chunk=64, bit_depth=bit_depth)
    root = zarr.open_group(out, mode="r")
    assert root.metadata.zarr_format == 3
    ome = root.attrs["ome"]
    assert ome["version"] == "0.5"
    (ms,) = ome["multiscales"]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert [a["type"] for a in ms["axes"]] == ["channel", "space", "space"]
    assert [d["path"] for d in ms["datasets"]] == [str(k) for k in range(len(levels))]
    for k, (dataset, level) in enumerate(zip(ms["datasets"], levels)):
        assert dataset["coordinateTransformations"] == [{"type": "scale", "scale": [1.0, 2.0**k, 2.0**k]}]
        array = root[dataset["path"]]
        assert array.metadata.dimension_names == ("c", "y", "x")
        assert array.dtype == (np.uint8 if bit_depth == 8 else np.uint16)
        assert array.chunks == (3, 64, 64)
        np.testing.assert_array_equal(array[:].transpose(1, 2, 0), _quantise(_all(level), bit_depth))
    assert "stale" not in {p.name for p in out.iterdir()}
    assert {p.name for p in tmp_path.iterdir()} == {"levels.zarr", "out.ome.zarr"}


def test_write_ome_zarr_failure_leaves_nothing(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    source = ArraySource(load_image(AURORA), fail_after=3)
    with pytest.raises(RuntimeError, match="mid-write"):
        write_ome_zarr(folder / "x.ome.zarr", [source], chunk=32)
    assert list(folder.iterdir()) == []


def test_zarr_source_reads_float32_regions(tmp_path):
    array = zarr.create_array(tmp_path / "a.zarr", shape=(1, 30, 40), chunks=(1, 16, 16), dtype="float32")
    values = np.linspace(-1, 1, 1200, dtype=np.float32).reshape(1, 30, 40)
    array[:] = values
    source = ZarrSource(array)
    assert source.shape == (1, 30, 40)
    np.testing.assert_array_equal(source.read(3, 20, 5, 39), values[:, 3:20, 5:39])
    with pytest.raises(ValueError):
        ZarrSource(zarr.create_array(tmp_path / "b.zarr", shape=(30, 40), dtype="float32"))
