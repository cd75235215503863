"""Tests for sidpipe.io.read / sidpipe.io.write on real files."""

from __future__ import annotations

import warnings
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from sidpipe.errors import ImageError
from sidpipe.io.read import image_size, load_image
from sidpipe.io.write import SUPPORTED_OUTPUT_SUFFIXES, output_paths, save_image

BALLOONS = Path(__file__).resolve().parents[1] / "examples" / "balloons.png"
RNG = np.random.default_rng(0)


def _u8(shape: tuple[int, ...]) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def _from_u8(u: np.ndarray) -> np.ndarray:
    """(C, H, W) uint8 -> sidpipe floats, v / 127.5 - 1."""
    return (u / 127.5 - 1).astype(np.float32)


def _ramp16(channels: int, levels: int = 1000) -> np.ndarray:
    """(C, 20, 50) image with `levels` distinct 16-bit values, spaced finer than 8 bits."""
    v = np.arange(levels, dtype=np.float64) * 7 + 20000  # 16-bit codes 20000 .. 26993
    img = (v / 32767.5 - 1).reshape(20, 50)
    return np.stack([img, img[::-1], -img][:channels]).astype(np.float32)


def _no_stray_files(folder: Path, expected: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == expected


# --- round trips -----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".tif", ".TIFF"])
@pytest.mark.parametrize("channels", [1, 3])
def test_8bit_round_trip_is_exact(tmp_path, suffix, channels):
    x = _from_u8(_u8((channels, 17, 23)))
    out = tmp_path / f"img{suffix}"
    save_image(out, x)
    y = load_image(out)
    assert y.dtype == np.float32 and y.shape == (channels, 17, 23)
    np.testing.assert_array_equal(y, x)
    assert image_size(out) == (23, 17)
    _no_stray_files(tmp_path, {out.name})


def test_values_are_clipped_and_quantised(tmp_path):
    x = np.array([[[-3.0, -1.0, 0.0, 1.0, 5.0]]], dtype=np.float32)
    save_image(tmp_path / "c.png", x)
    with Image.open(tmp_path / "c.png") as im:
        np.testing.assert_array_equal(np.asarray(im), [[0, 0, 128, 255, 255]])


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_round_trip_keeps_fine_levels(tmp_path, suffix, channels):
    x = _ramp16(channels)
    out = tmp_path / f"ramp{suffix}"
    save_image(out, x, bit_depth=16)
    y = load_image(out)
    assert y.shape == x.shape
    assert len(np.unique(y[0])) == 1000  # 8 bits would collapse these to ~28 levels
    np.testing.assert_allclose(y, x, atol=1e-6)


def test_16bit_rgb_png_is_not_truncated_to_8_bits(tmp_path):
    # PIL opens 16-bit RGB PNGs as 8-bit "RGB"; the loader must not go through that path.
    codes = (np.arange(3 * 10 * 10, dtype=np.uint16) * 211).reshape(10, 10, 3)
    (tmp_path / "rgb16.png").write_bytes(imagecodecs.png_encode(codes))
    with Image.open(tmp_path / "rgb16.png") as im:
        assert im.mode == "RGB"
    y = load_image(tmp_path / "rgb16.png")
    np.testing.assert_allclose(y, (codes.transpose(2, 0, 1) / 32767.5 - 1), atol=1e-6)


def test_float_tiff_is_mapped_from_unit_range(tmp_path):
    data = np.linspace(-0.5, 1.5, 40, dtype=np.float32).reshape(5, 8)  # outside [0, 1] is clipped
    tifffile.imwrite(tmp_path / "f.tif", data)
    y = load_image(tmp_path / "f.tif")
    np.testing.assert_allclose(y[0], np.clip(data, 0, 1) * 2 - 1, atol=1e-6)


def test_planar_rgb_tiff(tmp_path):
    u = _u8((3, 6, 7))
    tifffile.imwrite(tmp_path / "p.tif", u, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(load_image(tmp_path / "p.tif"), _from_u8(u))


# --- alpha, palette, JPEG, real photo -------------------------------------------------


def _write_rgba(path: Path, rgba: np.ndarray) -> None:
    if path.suffix == ".tif":
        tifffile.imwrite(path, rgba, photometric="rgb")
    else:
        Image.fromarray(rgba).save(path)


@pytest.mark.parametrize("name", ["a.png", "a.tif"])
def test_transparent_rgba_is_composited_over_white_with_warning(tmp_path, name):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # fully transparent -> white
    rgba[1, 1, 3] = 51  # 20% red over white -> (255, 204, 204)
    _write_rgba(tmp_path / name, rgba)
    with pytest.warns(UserWarning, match="composited over white"):
        y = load_image(tmp_path / name)
    assert y.shape == (3, 4, 5)
    np.testing.assert_allclose(y[:, 0, 0], [1, 1, 1])
    np.testing.assert_allclose(y[:, 1, 1], np.array([255, 204, 204]) / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(y[:, 2, 2], [1, -1, -1])


def test_opaque_rgba_drops_alpha_silently(tmp_path):
    rgb = _u8((6, 5, 3))
    Image.fromarray(np.dstack([rgb, np.full((6, 5), 255, np.uint8)])).save(tmp_path / "o.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = load_image(tmp_path / "o.png")
    np.testing.assert_array_equal(y, _from_u8(rgb.transpose(2, 0, 1)))


def test_gray_alpha_becomes_gray(tmp_path):
    la = np.stack([_u8((4, 4)), np.full((4, 4), 255, np.uint8)], axis=-1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").shape == (1, 4, 4)
    la[0, 0, 1] = 0
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    with pytest.warns(UserWarning, match="alpha"):
        y = load_image(tmp_path / "la.png")
    assert y.shape == (1, 4, 4) and y[0, 0, 0] == 1.0


def test_16bit_rgba_png_composited(tmp_path):
    rgba = np.zeros((3, 3, 4), np.uint16)
    rgba[..., 3] = 65535
    rgba[0, 0, 3] = 0
    (tmp_path / "a16.png").write_bytes(imagecodecs.png_encode(rgba))
    with pytest.warns(UserWarning):
        y = load_image(tmp_path / "a16.png")
    assert y.shape == (3, 3, 3) and (y[:, 0, 0] == 1).all() and (y[:, 1:, 1:] == -1).all()


def test_palette_png_becomes_rgb(tmp_path):
    im = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    im.save(tmp_path / "p.png")
    y = load_image(tmp_path / "p.png")
    assert y.shape == (3, 2, 2)
    np.testing.assert_array_equal(y[:, 0, 0], [1, -1, -1])
    np.testing.assert_array_equal(y[:, 1, 0], [-1, -1, 1])


def test_palette_png_with_transparency_is_composited(tmp_path):
    im = Image.fromarray(np.array([[0, 1]], np.uint8), mode="P")
    im.putpalette([0, 0, 0, 0, 255, 0])
    im.save(tmp_path / "pt.png", transparency=0)
    with pytest.warns(UserWarning):
        y = load_image(tmp_path / "pt.png")
    np.testing.assert_array_equal(y[:, 0, :].T, [[1, 1, 1], [-1, 1, -1]])


def test_jpeg_round_trip(tmp_path):
    yy, xx = np.mgrid[0:32, 0:48] / 64.0
    x = np.stack([xx, yy, xx * yy]).astype(np.float32) * 2 - 1  # smooth, so JPEG is near lossless
    save_image(tmp_path / "s.jpg", x)
    y = load_image(tmp_path / "s.jpg")
    assert y.shape == (3, 32, 48)
    assert np.abs(y - x).max() < 0.05
    assert image_size(tmp_path / "s.jpg") == (48, 32)


def test_jpeg_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(_u8((10, 20, 3))).save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").shape == (3, 20, 10)
    assert image_size(tmp_path / "r.jpg") == (10, 20)


def test_real_photo_loads():
    y = load_image(BALLOONS)
    assert y.shape == (3, 186, 248) and y.dtype == np.float32
    assert y.min() >= -1 and y.max() <= 1 and y.std() > 0.1
    assert image_size(BALLOONS) == (248, 186)


# --- errors -----------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="input not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="input not found"):
        image_size(tmp_path / "nope.png")


@pytest.mark.parametrize("name", ["notes.png", "notes.tif", "empty.jpg"])
def test_not_an_image(tmp_path, name):
    (tmp_path / name).write_text("" if name.startswith("empty") else "hello, I am text\n")
    with pytest.raises(ImageError, match="not an image file"):
        load_image(tmp_path / name)
    with pytest.raises(ImageError, match="not an image file"):
        image_size(tmp_path / name)


def test_truncated_png(tmp_path):
    save_image(tmp_path / "t.png", _from_u8(_u8((3, 64, 64))))
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(tmp_path / "t.png")


@pytest.mark.parametrize(
    "data, kwargs",
    [
        # 5 samples per pixel in one page
        (np.zeros((6, 7, 5), np.uint8), {"photometric": "minisblack", "planarconfig": "contig"}),
        (np.zeros((2, 3, 6, 7), np.uint8), {"photometric": "minisblack"}),  # 4D stack
        (np.zeros((4, 6, 7), np.uint16), {"photometric": "minisblack"}),  # stack of 4 gray pages
        (np.zeros((2, 6, 7, 3), np.uint8), {"photometric": "rgb"}),  # stack of 2 RGB pages
    ],
)
def test_odd_tiff_shapes_rejected(tmp_path, data, kwargs):
    tifffile.imwrite(tmp_path / "odd.tif", data, **kwargs)
    with pytest.raises(ImageError, match="image has shape"):
        load_image(tmp_path / "odd.tif")


def test_unsupported_tiff_dtype(tmp_path):
    tifffile.imwrite(tmp_path / "i32.tif", np.zeros((4, 4), np.int32))
    with pytest.raises(ImageError, match="unsupported pixel type"):
        load_image(tmp_path / "i32.tif")


# --- writing ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["out.bmp", "out.webp", "out"])
def test_save_unknown_extension(tmp_path, name):
    with pytest.raises(ImageError, match=r"supported: \.png"):
        save_image(tmp_path / name, np.zeros((3, 4, 4), np.float32))
    _no_stray_files(tmp_path, set())


@pytest.mark.parametrize(
    "name, image, kwargs, match",
    [
        ("a.jpg", np.zeros((3, 4, 4)), {"bit_depth": 16}, "8-bit only"),
        ("a.png", np.zeros((3, 4, 4)), {"bit_depth": 12}, "8 or 16"),
        ("a.png", np.zeros((4, 4)), {}, "expected \\(C, H, W\\)"),
        ("a.png", np.zeros((2, 4, 4)), {}, "expected \\(C, H, W\\)"),
        ("a.png", np.full((1, 4, 4), np.nan), {}, "NaN"),
    ],
)
def test_save_rejects_bad_requests(tmp_path, name, image, kwargs, match):
    with pytest.raises(ImageError, match=match):
        save_image(tmp_path / name, image, **kwargs)
    _no_stray_files(tmp_path, set())


def test_save_is_atomic_and_overwrites(tmp_path):
    out = tmp_path / "o.tif"
    save_image(out, np.full((3, 5, 5), -1.0, np.float32))
    save_image(out, np.full((3, 5, 5), 1.0, np.float32))
    assert (load_image(out) == 1).all()
    _no_stray_files(tmp_path, {"o.tif"})


def test_failed_write_leaves_no_temp_file(tmp_path):
    # a directory in the way: os.replace fails after the temp file was written
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(ImageError, match="cannot write output"):
        save_image(tmp_path / "taken.png", np.zeros((1, 4, 4), np.float32))
    _no_stray_files(tmp_path, {"taken.png"})
    with pytest.raises(ImageError, match="cannot write output"):
        save_image(tmp_path / "missing_dir" / "x.png", np.zeros((1, 4, 4), np.float32))


def test_output_paths(tmp_path):
    out = tmp_path / "res" / "out.png"
    assert output_paths(out, 1) == [out]
    assert output_paths(out, 3) == [out.with_name(f"out_00{i}.png") for i in range(3)]
    assert output_paths("a.b.tif", samples=2) == [Path("a.b_000.tif"), Path("a.b_001.tif")]
    assert output_paths("x.png", 1001)[-1] == Path("x_1000.png")
    assert len(output_paths(out, 12)) == 12


def test_supported_suffixes():
    assert set(SUPPORTED_OUTPUT_SUFFIXES) == {".png", ".tif", ".tiff", ".jpg", ".jpeg"}
