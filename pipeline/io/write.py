"""Write (C, H, W) [-1, 1] images to PNG/TIFF/JPEG atomically, and name per-sample outputs."""

from __future__ import annotations

import io
import os
import struct
import uuid
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from ..errors import ConfigError, ImageError

SUPPORTED_OUTPUT_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def save_image(path: str | os.PathLike, image: np.ndarray, /, *, bit_depth: int = 8, icc: bytes | None = None,
               dpi: float | None = None) -> None:
    """Write an image, choosing the format from the file extension.

    Values are clipped to [-1, 1] and quantised as round((x + 1) / 2 * maxval),
    maxval = 255 or 65535, so `load_image` returns an 8-bit-representable image
    (x = v / 127.5 - 1) exactly. The file appears atomically: the data goes to a
    hidden ``.<stem>.<random>.part<ext>`` file in the same folder, which is then
    renamed over `path`; on failure no partial file is left behind.

    Args:
        path: Output file; extension .png (8/16-bit), .tif/.tiff (8/16-bit, zlib)
            or .jpg/.jpeg (8-bit, quality 95). Case-insensitive.
        image: Array of shape (C, H, W), C = 1 (gray) or 3 (RGB), values in [-1, 1].
        bit_depth: 8 or 16.
        icc: ICC profile to embed (PNG iCCP, JPEG APP2, TIFF tag 34675), or None.
        dpi: Resolution to record (PNG pHYs, JPEG JFIF density, TIFF resolution tags), or None.

    Raises:
        ImageError: Unsupported extension or bit depth for the format, bad image
            shape, non-finite values, or the file cannot be written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_OUTPUT_SUFFIXES:
        raise ImageError(
            f"unsupported output format {suffix or '(no extension)'!r}: {path}; "
            f"supported: {', '.join(SUPPORTED_OUTPUT_SUFFIXES)}"
        )
    if bit_depth not in (8, 16):
        raise ImageError(f"bit depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and suffix in (".jpg", ".jpeg"):
        raise ImageError(f"JPEG output is 8-bit only (bit depth 16 requested): {path}")
    data = encode(_quantise(image, bit_depth), suffix, icc=icc, dpi=dpi)

    write_bytes_atomic(path, data)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, /) -> None:
    """Write `data` to `path` so that the file appears only when complete.

    The data goes to a hidden ``.<stem>.<random>.part<ext>`` file in the same folder (flushed and
    fsynced), which is then renamed over `path`; on any failure, including KeyboardInterrupt, the
    temporary file is removed.

    Raises:
        ImageError: The file cannot be written.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.part{path.suffix}")
    try:
        with open(tmp, "xb") as f:  # not mkstemp: that would make the output mode 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ImageError(f"cannot write output: {path} ({e.strerror or e})") from e
    except BaseException:  # e.g. KeyboardInterrupt mid-write
        tmp.unlink(missing_ok=True)
        raise


def output_paths(out: str | os.PathLike, /, samples: int) -> list[Path]:
    """Return the file paths for `samples` outputs requested as `out`.

    Args:
        out: Requested output file, e.g. ``out.png``.
        samples: Number of samples K >= 1.

    Returns:
        ``[out]`` if K == 1, else ``[out_000.png, out_001.png, ...]`` (K paths in the
        same folder; the index is zero-padded to at least 3 digits).

    Raises:
        ConfigError: `samples` is less than 1.
    """
    out = Path(out)
    if samples < 1:
        raise ConfigError(f"samples must be at least 1, got {samples}")
    if samples == 1:
        return [out]
    width = max(3, len(str(samples - 1)))
    return [out.with_name(f"{out.stem}_{i:0{width}d}{out.suffix}") for i in range(samples)]


def _quantise(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """Map (C, H, W) [-1, 1] floats to (H, W) or (H, W, 3) uint8/uint16."""
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ImageError(f"image has shape {x.shape}; expected (C, H, W) with C = 1 or 3")
    if not np.isfinite(x).all():
        raise ImageError("image to save contains NaN or infinite values")
    maxval, dtype = (255, np.uint8) if bit_depth == 8 else (65535, np.uint16)
    q = np.round((np.clip(x, -1.0, 1.0) + 1) / 2 * maxval).astype(dtype)
    return q[0] if q.shape[0] == 1 else np.ascontiguousarray(q.transpose(1, 2, 0))


def encode(arr: np.ndarray, suffix: str, *, icc: bytes | None = None, dpi: float | None = None) -> bytes:
    """Encode an (H, W) or (H, W, 3) uint8/uint16 array in the format of `suffix`, with a profile and DPI."""
    if suffix == ".png":
        # gray/RGB, 8/16-bit (PIL cannot write 16-bit RGB); imagecodecs writes no iCCP/pHYs: added here
        return _png_with_chunks(imagecodecs.png_encode(arr), icc, dpi)
    buf = io.BytesIO()
    if suffix in (".tif", ".tiff"):
        photometric = "minisblack" if arr.ndim == 2 else "rgb"
        tifffile.imwrite(buf, arr, photometric=photometric, compression="zlib", iccprofile=icc,
                         resolution=None if dpi is None else (dpi, dpi), resolutionunit=None if dpi is None else "INCH")
    else:
        extra = {"icc_profile": icc} if icc else {}
        Image.fromarray(arr).save(buf, format="JPEG", quality=95, dpi=(dpi, dpi) if dpi else (72, 72), **extra)
    return buf.getvalue()


def _png_with_chunks(png: bytes, icc: bytes | None, dpi: float | None) -> bytes:
    """Insert an iCCP (profile) and a pHYs (pixels per metre) chunk right after a PNG's IHDR."""
    chunks = b""
    if icc:
        chunks += _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if dpi:
        ppm = round(dpi / 0.0254)
        chunks += _png_chunk(b"pHYs", struct.pack(">IIB", ppm, ppm, 1))
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length + type, IHDR data, CRC
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
