"""Print production: physical sizes, ICC working space, conversion to press profiles, TIFF flavours,
panels and soft proofs, checked with real Debian profiles and real readers (tifffile, libtiff, ImageMagick, libvips)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import pyvips
import tifffile
import zarr
from PIL import Image
from typer.testing import CliRunner

from sidpipe.cli import app
from sidpipe.config import load_config
from sidpipe.errors import ConfigError, ImageError
from sidpipe.io.bigtiff import build_levels, tiff_size_bound, use_bigtiff, write_bigtiff
from sidpipe.io.color import GAMUT_MARK, Conversion, ciede2000, output_profile, parse_profile, srgb, to_lab
from sidpipe.io.output import OutputSpec, output_spec, write_result
from sidpipe.io.panels import panel_columns, write_panels
from sidpipe.io.read import load_image
from sidpipe.io.units import parse_length, parse_size
from sidpipe.io.write import _quantise
from sidpipe.refstream import ArrayRegions
from sidpipe.runner import RunOptions, run

from conftest import BALLOONS

# Debian packages installed by .ci/run: libgs-common (Artifex SWOP, AGPL: never copied into the repo), colord-data.
SWOP = Path("/usr/share/color/icc/ghostscript/default_cmyk.icc")
ADOBE = Path("/usr/share/color/icc/colord/AdobeRGB1998.icc")
SRGB_FILE = Path("/usr/share/color/icc/colord/sRGB.icc")
LAB = Path("/usr/share/color/icc/ghostscript/lab.icc")
GRAY = Path("/usr/share/color/icc/ghostscript/sgray.icc")
needs_swop = pytest.mark.skipif(not SWOP.exists(), reason="needs the Artifex SWOP profile (apt-get install libgs-common)")
needs_colord = pytest.mark.skipif(not ADOBE.exists(), reason="needs colord's profiles (apt-get install colord-data)")

cli = CliRunner()
QUICK = ["--steps", "2", "--patch-size", "9", "--set", "num_scales=2", "--set", "precision=fp32", "--quiet"]


def _cmyk(intent: str = "relative", bpc: bool = True) -> Conversion:
    return Conversion(None, output_profile(SWOP), SWOP, intent, bpc)


def _small_ref(tmp_path: Path, icc: bytes | None = None, name: str = "ref.png") -> Path:
    path = tmp_path / name
    extra = {"icc_profile": icc} if icc else {}
    Image.open(BALLOONS).convert("RGB").resize((80, 60)).save(path, **extra)
    return path


def _pyramid(tmp_path: Path, image: np.ndarray) -> list:
    source = ArrayRegions(image)
    return [source, *build_levels(source, zarr.open_group(tmp_path / "levels.zarr", mode="w"), min_size=64, chunk=64)]


# --- CIEDE2000 and units ---------------------------------------------------------------


def test_ciede2000_matches_sharma_reference_pairs():
    # Sharma, Wu, Dalal (2005), Table 1: pairs 1, 2, 3, 4, 7, 13 (hue wrap-around) and 16
    pairs = [((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425), ((50, 3.1571, -77.2803), (50, 0, -82.7485), 2.8615),
             ((50, 2.8361, -74.02), (50, 0, -82.7485), 3.4412), ((50, -1.3802, -84.2814), (50, 0, -82.7485), 1.0),
             ((50, 0, 0), (50, -1, 2), 2.3669), ((50, 2.49, -0.001), (50, -2.49, 0.0009), 7.1792),
             ((50, 2.5, 0), (73, 25, -18), 27.1492)]
    lab1, lab2, expected = (np.array(x, float) for x in zip(*pairs))
    np.testing.assert_allclose(ciede2000(lab1, lab2), expected, atol=1e-4)
    np.testing.assert_allclose(ciede2000(lab2, lab1), expected, atol=1e-4)  # symmetric


def test_physical_sizes_round_to_nearest_pixel():
    assert parse_size("300x200cm", 150) == ((17717, 11811), "cm")  # 300 / 2.54 * 150 = 17716.5 -> 17717
    assert parse_size("450x300mm", 300) == ((5315, 3543), "mm")
    assert parse_size("40 x 30 in", 100) == ((4000, 3000), "in")
    assert parse_size("512x384", None) == ((512, 384), None)
    assert parse_length("90cm", 150, "--width") == 5315 and parse_length("700", None, "--width") == 700
    for text, dpi, needle in [("300x200ft", 150, "unknown unit"), ("300x200cm", None, "needs a resolution"),
                              ("300x200cm", 0, "--dpi must be > 0"), ("300x200cm", -5, "--dpi must be > 0"),
                              ("3x2m", 150, "unknown unit"), ("30cmx20in", 150, "same unit"), ("big", 150, "expects")]:
        with pytest.raises(ConfigError, match=needle):
            parse_size(text, dpi)


# --- conversion to CMYK ----------------------------------------------------------------


@needs_swop
@pytest.mark.parametrize("bit_depth", [8, 16])
def test_cmyk_tiff_is_cmyk_with_its_profile_for_every_reader(tmp_path, bit_depth):
    out = tmp_path / "cmyk.tif"
    write_bigtiff(out, _pyramid(tmp_path, load_image(BALLOONS)), tile=64, compression="lzw", bit_depth=bit_depth,
                  dpi=150, conversion=_cmyk())
    swop = SWOP.read_bytes()
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.SEPARATED and page.samplesperpixel == 4
        assert page.tags["InkSet"].value == 1 and page.iccprofile == swop and not tif.is_bigtiff
        assert page.dtype == (np.uint8 if bit_depth == 8 else np.uint16) and page.compression == 5
        assert page.pages[0].photometric == tifffile.PHOTOMETRIC.SEPARATED  # the reduced levels too
    image = pyvips.Image.new_from_file(str(out), fail_on="warning")
    assert image.interpretation == "cmyk" and image.bands == 4 and image.get("icc-profile-data") == swop
    if shutil.which("tiffinfo"):
        info = subprocess.run(["tiffinfo", str(out)], capture_output=True, text=True).stdout
        assert "Photometric Interpretation: separated" in info and "InkSet: 1" in info
        assert f"ICC Profile: <present>, {len(swop)} bytes" in info and "LZW" in info
    if shutil.which("identify"):
        info = subprocess.run(["identify", "-verbose", f"{out}[0]"], capture_output=True, text=True).stdout
        assert "Colorspace: CMYK" in info and "Artifex CMYK SWOP Profile" in info


@needs_swop
def test_conversion_is_per_pixel_tiled_equals_whole(tmp_path):
    image = load_image(BALLOONS)
    whole = _cmyk().apply(_quantise(image, 16), 16)
    for tile in (32, 512):
        out = tmp_path / f"t{tile}.tif"
        write_bigtiff(out, [ArrayRegions(image)], tile=tile, compression="zstd", bit_depth=16, conversion=_cmyk())
        np.testing.assert_array_equal(tifffile.imread(out), whole)


@needs_swop
@needs_colord
def test_srgb_to_cmyk_and_back_on_a_real_photo_is_close(tmp_path):
    """sRGB -> CMYK (relative, BPC) through the TIFF writer -> sRGB: CIEDE2000 median <= 1.5, 95th percentile <= 6."""
    image = load_image(BALLOONS)  # a real 248x186 photo without a profile: sRGB
    out = tmp_path / "cmyk.tif"
    write_bigtiff(out, [ArrayRegions(image)], tile=64, compression="lzw", conversion=_cmyk())
    cmyk = tifffile.imread(out)
    back = pyvips.Image.new_from_array(cmyk, interpretation="cmyk")
    back.set_type(pyvips.GValue.blob_type, "icc-profile-data", SWOP.read_bytes())
    back = back.icc_transform(str(SRGB_FILE), embedded=True, intent="relative", black_point_compensation=True).numpy()
    de = ciede2000(to_lab(_quantise(image, 8), None), to_lab(back, None))
    assert np.median(de) <= 1.5 and np.percentile(de, 95) <= 6.0, (np.median(de), np.percentile(de, 95))
    assert np.median(de) > 0.05  # a real conversion happened


# --- working space through the runner (in memory and tiled) -----------------------------


@needs_colord
def test_adobe_rgb_reference_keeps_its_profile_in_memory_and_tiled(tmp_path):
    adobe = ADOBE.read_bytes()
    ref = _small_ref(tmp_path, adobe)
    cfg = load_config("default", {"steps": 2, "patch_size": 9, "num_scales": 2, "precision": "fp32"})
    events = []
    for name, tiled in [("mem.tif", False), ("tiled.tif", True), ("mem.png", False), ("mem.jpg", False)]:
        run(ref, tmp_path / name, cfg, options=RunOptions(out_of_core=tiled, dpi=200), progress=events.append)
    plan = [e["output"] for e in events if e["event"] == "plan"]
    assert all("Compatible with Adobe RGB (1998) (the reference's ICC profile)" in line for line in plan)
    for name in ("mem.tif", "tiled.tif"):
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert tif.pages[0].iccprofile == adobe and tif.pages[0].tags["XResolution"].value == (200, 1)
    for name in ("mem.png", "mem.jpg"):
        with Image.open(tmp_path / name) as im:
            assert im.info["icc_profile"] == adobe and round(im.info["dpi"][0]) == 200
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "mem.tif"), tifffile.imread(tmp_path / "tiled.tif"))


@needs_swop
def test_cmyk_output_in_memory_equals_tiled_and_untagged_reference_is_srgb(tmp_path):
    ref = _small_ref(tmp_path)
    cfg = load_config("default", {"steps": 2, "patch_size": 9, "num_scales": 2, "precision": "fp32"})
    events = []
    for name, tiled in [("mem.tif", False), ("tiled.tif", True)]:
        options = RunOptions(out_of_core=tiled, output_profile=SWOP, bpc=True, compression="lzw", bit_depth=16)
        run(ref, tmp_path / name, cfg, options=options, progress=events.append)
    line = next(e["output"] for e in events if e["event"] == "plan")
    assert "sRGB (the reference has no ICC profile) -> CMYK Artifex CMYK SWOP Profile (relative, BPC)" in line
    mem, tiled = tifffile.imread(tmp_path / "mem.tif"), tifffile.imread(tmp_path / "tiled.tif")
    assert mem.shape == (60, 80, 4) and mem.dtype == np.uint16
    np.testing.assert_array_equal(mem, tiled)


def test_plan_line_shows_pixels_and_physical_size(tmp_path):
    ref = _small_ref(tmp_path)
    spec, line = output_spec(ref, tmp_path / "o.tif", size=(11811, 17717), channels=3, dpi=150, size_unit="cm")
    assert line.startswith("output 17717x11811 px = 300.0x200.0 cm at 150 dpi; colour: sRGB")
    assert spec.icc == srgb().data and "classic TIFF" in line


# --- classic TIFF / BigTIFF ------------------------------------------------------------


def test_classic_tiff_when_it_fits_bigtiff_when_asked_or_needed(tmp_path):
    levels = _pyramid(tmp_path, load_image(BALLOONS))
    for mode, big in [("auto", False), ("always", True), ("never", False)]:
        write_bigtiff(tmp_path / f"{mode}.tif", levels, tile=64, bigtiff=mode)
        with tifffile.TiffFile(tmp_path / f"{mode}.tif") as tif:
            assert tif.is_bigtiff == big
    bound = tiff_size_bound([(40000, 40000)], 4, 8, 512, "lzw")  # 6.4 GB raw, LZW worst case x1.5
    assert bound > 2**32 and use_bigtiff("auto", bound) and not use_bigtiff("auto", 2**31)
    with pytest.raises(ImageError, match="more than a classic TIFF's 4 GiB"):
        use_bigtiff("never", bound)


def test_bigtiff_never_that_cannot_fit_is_refused_before_any_compute(tmp_path):
    ref = _small_ref(tmp_path)
    out = tmp_path / "huge.tif"
    res = cli.invoke(app, ["run", str(ref), "--out", str(out), "--size", "40000x40000", "--bigtiff", "never", *QUICK])
    assert res.exit_code == 1 and "classic TIFF's 4 GiB" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.png"]  # no output, no run directory


def test_no_pyramid_writes_one_image(tmp_path):
    spec = OutputSpec(pyramid=False, compression="lzw", icc=srgb().data)
    write_result(ArrayRegions(load_image(BALLOONS)), tmp_path / "flat.tif", spec, zarr.open_group(tmp_path / "s.zarr"))
    with tifffile.TiffFile(tmp_path / "flat.tif") as tif:
        assert len(tif.pages) == 1 and not tif.pages[0].subifds and tif.pages[0].compression == 5
    image = pyvips.Image.new_from_file(str(tmp_path / "flat.tif"), fail_on="warning")  # libvips reads LZW
    np.testing.assert_array_equal(image.numpy(), _quantise(load_image(BALLOONS), 8))


def test_ome_zarr_carries_the_working_profile(tmp_path):
    spec = OutputSpec(icc=srgb().data)
    write_result(ArrayRegions(load_image(BALLOONS)), tmp_path / "o.zarr", spec, zarr.open_group(tmp_path / "s.zarr"))
    import base64

    attrs = zarr.open_group(tmp_path / "o.zarr", mode="r").attrs
    assert base64.b64decode(attrs["sidpipe"]["icc_profile"]) == srgb().data


# --- panels ----------------------------------------------------------------------------


def test_panel_columns_sum_to_width_plus_overlaps():
    for width, kw in [(1000, {"count": 3, "overlap": 20}), (1000, {"panel": 300, "overlap": 20}),
                      (1001, {"count": 4, "overlap": 0}), (50, {"count": 1, "overlap": 10})]:
        cols = panel_columns(width, **kw)
        assert cols[0][0] == 0 and cols[-1][1] == width
        assert sum(b - a for a, b in cols) == width + (len(cols) - 1) * kw["overlap"]
        assert all(a2 == b1 - kw["overlap"] for (_, b1), (a2, _) in zip(cols, cols[1:]))
    assert [b - a for a, b in panel_columns(1000, panel=300, overlap=20)] == [300, 300, 300, 160]
    for kw, needle in [({}, "exactly one"), ({"count": 0}, "at least 1"), ({"panel": 10, "overlap": 10}, "cannot overlap"),
                       ({"count": 3, "overlap": -1}, ">= 0"), ({"count": 3, "overlap": 1000}, "cannot overlap")]:
        with pytest.raises(ConfigError, match=needle):
            panel_columns(1000, **kw)


@needs_swop
def test_panels_are_exact_crops_with_profile_dpi_and_compression(tmp_path):
    src = tmp_path / "wall.tif"
    write_bigtiff(src, _pyramid(tmp_path, load_image(BALLOONS)), tile=64, compression="lzw", dpi=100,
                  conversion=_cmyk())
    whole = tifffile.imread(src)
    res = cli.invoke(app, ["panels", str(src), "--out", str(tmp_path / "p"), "--width", "1.5in", "--overlap", "5mm"])
    assert res.exit_code == 0, res.output
    paths = sorted((tmp_path / "p").iterdir())
    assert [p.name for p in paths] == ["wall_panel_01.tif", "wall_panel_02.tif"]  # 150 + 118 px, 20 px overlap
    x0 = 0
    for path in paths:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            assert page.iccprofile == SWOP.read_bytes() and page.compression == 5 and page.tags["InkSet"].value == 1
            assert page.tags["XResolution"].value == (100, 1) and page.photometric == tifffile.PHOTOMETRIC.SEPARATED
            panel = page.asarray()
        np.testing.assert_array_equal(panel, whole[:, x0:x0 + panel.shape[1]])
        x0 += panel.shape[1] - 20
    assert x0 + 20 == whole.shape[1]


def test_panels_by_count_on_rgb(tmp_path):
    src = tmp_path / "w.tif"
    write_bigtiff(src, [ArrayRegions(load_image(BALLOONS))], tile=64, compression="zlib", icc=srgb().data)
    paths = write_panels(src, tmp_path / "p", count=3, overlap="8")
    crops = [tifffile.imread(p) for p in paths]
    assert [c.shape[1] for c in crops] == [88, 88, 88] and sum(c.shape[1] for c in crops) == 248 + 2 * 8
    np.testing.assert_array_equal(crops[1], tifffile.imread(src)[:, 80:168])
    with pytest.raises(ConfigError, match="needs a resolution"):  # no DPI in the file
        write_panels(src, tmp_path / "q", width="3cm")
    assert not (tmp_path / "q").exists()


# --- soft proof ------------------------------------------------------------------------


@needs_swop
def test_proof_is_small_srgb_and_marks_out_of_gamut(tmp_path):
    image = np.zeros((3, 2100, 300), np.float32)  # long side over 2048: the proof is a reduced level
    image[:, :, :100] = np.array([-1, -1, 1], np.float32)[:, None, None]  # sRGB blue: out of SWOP's gamut
    image[:, :, 100:200] = 0.0  # mid gray: printable
    image[:, :, 200:] = np.array([0.6, 0.2, -0.2], np.float32)[:, None, None]  # a skin tone: printable
    proof = tmp_path / "proof.jpg"
    spec = OutputSpec(conversion=_cmyk(), proof=proof, gamut_warning=True)
    write_result(ArrayRegions(image), tmp_path / "o.tif", spec, zarr.open_group(tmp_path / "s.zarr"))
    with Image.open(proof) as im:
        assert im.format == "JPEG" and max(im.size) <= 2048 and im.size == (150, 1050)
        assert parse_profile(im.info["icc_profile"], "proof").space == "RGB"  # libvips' sRGB
        assert "srgb" in parse_profile(im.info["icc_profile"], "proof").description.lower()
        rgb = np.asarray(im).astype(int)
    assert np.abs(rgb[500, 20] - GAMUT_MARK).max() < 30  # marked
    assert np.abs(rgb[500, 75] - rgb[500, 75].mean()).max() < 8 and np.abs(rgb[500, 75] - GAMUT_MARK).max() > 100
    assert np.abs(rgb[500, 130] - GAMUT_MARK).max() > 100
    write_result(ArrayRegions(image), tmp_path / "o2.tif", OutputSpec(conversion=_cmyk(), proof=tmp_path / "p2.jpg"),
                 zarr.open_group(tmp_path / "s2.zarr"))
    unmarked = np.asarray(Image.open(tmp_path / "p2.jpg")).astype(int)
    assert np.abs(unmarked[500, 20] - GAMUT_MARK).max() > 100  # without the warning: the printed blue


# --- bad input -------------------------------------------------------------------------


@needs_swop
@needs_colord
@pytest.mark.parametrize("extra,needle", [
    (["--output-profile", "ref.png"], "not an ICC profile"),
    (["--output-profile", str(LAB)], "RGB or CMYK profile"),
    (["--output-profile", str(GRAY)], "RGB or CMYK profile"),
    (["--output-profile", "missing.icc"], "cannot read ICC profile"),
    (["--size", "30x20ft", "--dpi", "10"], "unknown unit"),
    (["--size", "30x20cm"], "needs a resolution"),
    (["--size", "30x20cm", "--dpi", "0"], "--dpi must be > 0"),
    (["--dpi", "-3"], "--dpi must be > 0"),
    (["--output-profile", str(SWOP), "--out", "cmyk.png"], "CMYK --output-profile needs a .tif"),
    (["--output-profile", str(SWOP), "--intent", "vivid"], "--intent must be one of"),
    (["--intent", "perceptual"], "need --output-profile"),
    (["--gamut-warning"], "needs --proof"),
    (["--output-profile", str(SWOP), "--proof", "p.png"], "must be a .jpg"),
    (["--output-profile", str(SWOP), "--compression", "jpeg"], "not CMYK"),
    (["--bigtiff", "sometimes"], "--bigtiff must be one of"),
])
def test_bad_print_options_fail_cleanly_and_write_nothing(tmp_path, monkeypatch, extra, needle):
    monkeypatch.chdir(tmp_path)
    _small_ref(tmp_path)
    out = [] if "--out" in extra else ["--out", "o.tif"]
    res = cli.invoke(app, ["run", "ref.png", *out, *extra, *QUICK])
    assert res.exit_code == 1, res.output
    assert needle in res.output and res.output.count("\n") == 1 and res.output.startswith("sidpipe: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.png"]


def test_built_in_srgb_profile_bytes_do_not_depend_on_the_time():
    """LittleCMS stamps a created profile with the current time: the embedded sRGB is pinned, so outputs of
    the same job written at different times (a resumed run, a rerun) have the same bytes."""
    import sys

    mine = srgb().data  # made (and cached) before the other process makes its own, a second later
    code = "import time, sys; time.sleep(1.1); from sidpipe.io.color import srgb; sys.stdout.buffer.write(srgb().data)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    assert other == mine and mine[24:36] == bytes.fromhex("07ea00010001000000000000")
    assert parse_profile(srgb().data, "sRGB").space == "RGB"
