"""Cut a finished TIFF into wallpaper panels: exact crops, left to right, overlapping by a fixed width, streamed."""

from __future__ import annotations

import math
import os
from pathlib import Path

import tifffile
import zarr

from ..errors import ConfigError, ImageError
from .bigtiff import stream_tiff, tiff_size_bound, use_bigtiff
from .units import parse_length

_COMPRESSIONS = {  # tifffile COMPRESSION -> the name sidpipe writes it with
    tifffile.COMPRESSION.NONE: "none",
    tifffile.COMPRESSION.ADOBE_DEFLATE: "zlib",
    tifffile.COMPRESSION.DEFLATE: "zlib",
    tifffile.COMPRESSION.ZSTD: "zstd",
    tifffile.COMPRESSION.LZW: "lzw",
    tifffile.COMPRESSION.JPEG: "jpeg",
}
_SAMPLES = {tifffile.PHOTOMETRIC.MINISBLACK: 1, tifffile.PHOTOMETRIC.RGB: 3, tifffile.PHOTOMETRIC.SEPARATED: 4}
_TILE = 512


def panel_columns(width: int, *, count: int | None = None, panel: int | None = None,
                  overlap: int = 0) -> list[tuple[int, int]]:
    """Column ranges (x0, x1) of panels covering `width` px, left to right, neighbours sharing `overlap` px.

    With `count`, the panels are as equal as whole pixels allow (widths differ by at most 1); with
    `panel`, every panel is `panel` px wide but the last, which ends at the image's edge. Either way
    the widths sum to width + (panels - 1) x overlap.

    Raises:
        ConfigError: Neither or both of count and panel, count < 1, overlap < 0, or panels that
            would be no wider than the overlap.
    """
    if (count is None) == (panel is None):
        raise ConfigError("give exactly one of --count and --width")
    if overlap < 0:
        raise ConfigError(f"--overlap must be >= 0, got {overlap} px")
    if count is not None:
        if count < 1:
            raise ConfigError(f"--count must be at least 1, got {count}")
        total = width + (count - 1) * overlap
        widths = [total // count + (i < total % count) for i in range(count)]
    else:
        if panel < 1:
            raise ConfigError(f"--width must be at least 1 px, got {panel}")
        n = 1 if panel >= width else math.ceil((width - overlap) / (panel - overlap)) if panel > overlap else 0
        widths = [panel] * (n - 1) + [width - (n - 1) * (panel - overlap)] if n else []
    if not widths or (len(widths) > 1 and min(widths) <= overlap):
        raise ConfigError(f"panels of {min(widths) if widths else panel} px cannot overlap by {overlap} px")
    columns, x0 = [], 0
    for w in widths:
        columns.append((x0, x0 + w))
        x0 += w - overlap
    return columns


def write_panels(path: str | os.PathLike, out_dir: str | os.PathLike, *, count: int | None = None,
                 width: str | None = None, overlap: str = "0") -> list[Path]:
    """Write the panels of a finished TIFF as ``OUT_DIR/<stem>_panel_01.tif``, ``_02``, ... (left to right).

    Each panel is an exact crop of the TIFF's full-resolution image (CMYK, RGB or gray, 8 or 16
    bit), read and written one tile row at a time, with the same ICC profile, DPI and compression
    (JPEG-compressed images are re-encoded, so only their lossless cousins are exact). Panels
    have no reduced levels; each is a classic TIFF unless it may exceed 4 GiB.

    Args:
        path: A TIFF written by `sidpipe run` (or any tiled/striped gray, RGB or CMYK TIFF).
        out_dir: Folder for the panels (created if missing).
        count: Number of panels, or
        width: Panel width: pixels, or a length in mm/cm/in (needs the TIFF's resolution).
        overlap: Width shared by neighbouring panels, in the same units.

    Returns:
        The panel files, left to right.

    Raises:
        ImageError: The file is missing or not a TIFF sidpipe can cut.
        ConfigError: Bad count, width or overlap (nothing is written).
    """
    path, out_dir = Path(path), Path(out_dir)
    try:
        tif = tifffile.TiffFile(path)
    except FileNotFoundError:
        raise ImageError(f"input not found: {path}") from None
    except Exception as e:
        raise ImageError(f"not a TIFF file: {path}") from e
    with tif:
        page = tif.series[0].levels[0].keyframe
        samples = _SAMPLES.get(page.photometric)
        if samples is None or page.samplesperpixel != samples or page.dtype.char not in "BH":
            raise ImageError(f"panels cut 8/16-bit gray, RGB or CMYK TIFFs; {path} is {page.photometric.name} "
                             f"with {page.samplesperpixel} samples of {page.dtype}")
        compression = _COMPRESSIONS.get(page.compression, "zlib")
        dpi = _dpi(page)
        h, w = page.imagelength, page.imagewidth
        ov = parse_length(overlap, dpi, "--overlap")
        columns = panel_columns(w, count=count, panel=None if width is None else parse_length(width, dpi, "--width"),
                                overlap=ov)
        bit_depth = 8 * page.dtype.itemsize
        out_dir.mkdir(parents=True, exist_ok=True)
        digits = max(2, len(str(len(columns))))
        store = tif.series[0].aszarr(level=0)
        try:
            image = zarr.open_array(store, mode="r")
            paths = []
            for i, (x0, x1) in enumerate(columns, start=1):
                target = out_dir / f"{path.stem}_panel_{i:0{digits}d}.tif"
                bound = tiff_size_bound([(h, x1 - x0)], samples, bit_depth, _TILE, compression)
                stream_tiff(target, [(h, x1 - x0)],
                            lambda k, ya, yb, xa, xb, x0=x0: image[ya:yb, x0 + xa:x0 + xb],
                            samples=samples, bit_depth=bit_depth, tile=_TILE, compression=compression, dpi=dpi,
                            icc=page.iccprofile, bigtiff=use_bigtiff("auto", bound))
                paths.append(target)
        finally:
            store.close()
    return paths


def _dpi(page: tifffile.TiffPage) -> float | None:
    """The page's horizontal resolution in pixels per inch, or None if it has none."""
    if "XResolution" not in page.tags:
        return None
    num, den = page.tags["XResolution"].value
    unit = page.tags["ResolutionUnit"].value if "ResolutionUnit" in page.tags else tifffile.RESUNIT.INCH
    if not den or unit == tifffile.RESUNIT.NONE:
        return None
    return num / den * (2.54 if unit == tifffile.RESUNIT.CENTIMETER else 1.0)
