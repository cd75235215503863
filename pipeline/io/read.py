"""Read image files into sidpipe's (C, H, W) float32 [-1, 1] convention."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from PIL import Image, ImageOps

from ..errors import ImageError

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_EXIF_ORIENTATION = 0x0112
_INT_MAXVAL = {"u1": 255.0, "u2": 65535.0, "b1": 1.0}  # dtype kind + itemsize -> full scale


def load_image(path: str | os.PathLike, /) -> np.ndarray:
    """Load an image file as a float32 array in [-1, 1].

    The format is detected from the file contents, not the extension. PNG, JPEG,
    BMP, GIF, WebP, ... are read with PIL (EXIF orientation applied); 16-bit PNGs
    with imagecodecs (PIL would truncate 16-bit RGB to 8 bits); TIFFs with
    tifffile (first series, full-resolution level). Integer data is scaled by its
    bit depth (8-bit v -> v / 127.5 - 1, 16-bit v -> v / 32767.5 - 1); float data
    is assumed in [0, 1]. Palette images become RGB, gray + alpha becomes gray.
    An alpha channel is dropped if fully opaque, otherwise composited over white
    with a warning.

    Args:
        path: Image file to read.

    Returns:
        Array of shape (C, H, W), C = 1 (gray) or 3 (RGB), dtype float32.

    Raises:
        ImageError: The file is missing, unreadable, not a decodable image, or has
            an unsupported shape (e.g. a stack, > 4 channels) or pixel type.
    """
    path = Path(path)
    arr, premultiplied = _decode_file(path)
    return _to_chw(arr, path, premultiplied)


def image_size(path: str | os.PathLike, /) -> tuple[int, int]:
    """Return the (width, height) of an image file without decoding its pixels.

    The size is the one `load_image` returns (EXIF orientation applied for
    formats that carry it in the header, e.g. JPEG).

    Args:
        path: Image file to inspect.

    Returns:
        (width, height) in pixels.

    Raises:
        ImageError: The file is missing, unreadable or not a recognisable image.
    """
    path = Path(path)
    head = _read_head(path)
    try:
        if head.startswith(_TIFF_MAGICS):
            with tifffile.TiffFile(path) as tif:
                level = tif.series[0].levels[0]
                return level.shape[level.axes.index("X")], level.shape[level.axes.index("Y")]
        with Image.open(path) as im:
            w, h = im.size
            if "exif" in im.info:  # header EXIF only: getexif() may decode PNG pixels
                exif = Image.Exif()
                exif.load(im.info["exif"])
                if exif.get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                    w, h = h, w
            return w, h
    except Exception as e:
        raise ImageError(f"not an image file (cannot decode): {path}") from e


def _read_head(path: Path) -> bytes:
    """Return the first 32 bytes of `path`, turning OS errors into ImageError."""
    try:
        with open(path, "rb") as f:
            return f.read(32)
    except FileNotFoundError:
        raise ImageError(f"input not found: {path}") from None
    except OSError as e:
        raise ImageError(f"cannot read input: {path} ({e.strerror or e})") from None


def _decode_file(path: Path) -> tuple[np.ndarray, bool]:
    """Decode a whole file with `_decode`, turning any decoder failure into ImageError."""
    head = _read_head(path)
    try:
        return _decode(path, head)
    except ImageError:
        raise
    except Exception as e:  # decoders raise many types (OSError, ValueError, RuntimeError, ...)
        raise ImageError(f"not an image file (cannot decode): {path}") from e


def _decode(path: Path, head: bytes) -> tuple[np.ndarray, bool]:
    """Decode to (H, W) or (H, W, S) in the file's dtype; also say if alpha is premultiplied."""
    if head.startswith(_PNG_MAGIC) and head[12:16] == b"IHDR" and head[24] == 16:
        return imagecodecs.png_decode(path.read_bytes()), False
    if head.startswith(_TIFF_MAGICS):
        with tifffile.TiffFile(path) as tif:
            level = tif.series[0].levels[0]
            page = level.keyframe
            if page.photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB):
                return _tiff_to_hwc(level.asarray(), level.axes, path), _tiff_premultiplied(page)
        # palette, min-is-white, CMYK, YCbCr, ...: PIL converts these to RGB/L below
    return _decode_pil(path), False


def _tiff_premultiplied(page: tifffile.TiffPage) -> bool:
    """Say whether the first extra sample of a TIFF page is associated (premultiplied) alpha."""
    extra = page.extrasamples
    return bool(extra) and extra[0] == tifffile.EXTRASAMPLE.ASSOCALPHA


def _tiff_to_hwc(arr: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """Reorder a tifffile array with `axes` (e.g. "YX", "YXS", "SYX") to (H, W) or (H, W, S)."""
    keep = [i for i, (a, n) in enumerate(zip(axes, arr.shape)) if n > 1 or a in "YX"]
    squeezed = arr.reshape([arr.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if axes in ("YX", "YXS"):
        return squeezed
    if axes == "SYX":  # planar configuration
        return np.moveaxis(squeezed, 0, -1)
    raise ImageError(
        f"image has shape {arr.shape} (axes {axes}); expected 2D gray or RGB: {path}"
    )


def _decode_pil(path: Path) -> np.ndarray:
    """Decode with PIL to uint8 L/LA/RGB/RGBA, uint16 gray, or float32 gray."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        mode = im.mode
        if mode.startswith("I;16"):
            return np.asarray(im).astype(np.uint16)  # also makes big-endian native
        if mode == "I":
            return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
        if mode == "F":
            return np.asarray(im, dtype=np.float32)
        alpha = im.has_transparency_data  # alpha band, or palette/tRNS transparency
        gray = mode in ("1", "L", "LA", "La")
        target = ("LA" if alpha else "L") if gray else ("RGBA" if alpha else "RGB")
        return np.asarray(im if mode == target else im.convert(target))


def _to_chw(arr: np.ndarray, path: Path, premultiplied: bool) -> np.ndarray:
    """Map (H, W) or (H, W, S) integer/float pixels to (C, H, W) float32 in [-1, 1]."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise ImageError(
            f"image has shape {arr.shape}; expected 2D gray or RGB (optionally with alpha): {path}"
        )
    code = f"{arr.dtype.kind}{arr.dtype.itemsize}"
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ImageError(f"image contains NaN or infinite values: {path}")
        maxval, x = 1.0, np.clip(arr.astype(np.float64), 0.0, 1.0)  # float data: assumed in [0, 1]
    elif code in _INT_MAXVAL:
        maxval, x = _INT_MAXVAL[code], arr.astype(np.float64)
    else:
        raise ImageError(f"unsupported pixel type {arr.dtype} (expected 8/16-bit or float): {path}")
    if x.shape[-1] in (2, 4):
        color, alpha = x[..., :-1], x[..., -1:]
        if (alpha < maxval).any():
            msg = f"{path}: has transparent pixels; alpha was composited over white"
            warnings.warn(msg, stacklevel=3)
            if premultiplied:
                color = color + (maxval - alpha)
            else:
                color = color * (alpha / maxval) + (maxval - alpha)
        x = color
    x = np.clip(x / (maxval / 2) - 1, -1.0, 1.0)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)
