"""Write (C, H, W) [-1, 1] images to PNG/TIFF/JPEG atomically, and name per-sample outputs."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from ..errors import ConfigError, ImageError

SUPPORTED_OUTPUT_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def save_image(path: str | os.PathLike, image: np.ndarray, /, *, bit_depth: int = 8) -> None:
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
    data = _encode(_quantise(image, bit_depth), suffix)

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


def _encode(arr: np.ndarray, suffix: str) -> bytes:
    """Encode an (H, W) or (H, W, 3) uint8/uint16 array in the format of `suffix`."""
    if suffix == ".png":
        return imagecodecs.png_encode(arr)  # gray/RGB, 8/16-bit (PIL cannot write 16-bit RGB)
    buf = io.BytesIO()
    if suffix in (".tif", ".tiff"):
        photometric = "minisblack" if arr.ndim == 2 else "rgb"
        tifffile.imwrite(buf, arr, photometric=photometric, compression="zlib")
    else:
        Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()
