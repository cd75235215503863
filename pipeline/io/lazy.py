"""Open huge images lazily and read regions of them in sidpipe's (C, H, W) [-1, 1] convention.

`open_image` returns a `LazyImage` whose `read` decodes only what a region needs and converts it
exactly as `load_image` would (same helpers, applied pixel by pixel), so a region read equals the
same crop of `load_image(path)`, bit for bit.

Backends, chosen from the file contents:

- TIFF / BigTIFF (tiled, striped, pyramidal: level 0 of the first series) through tifffile's zarr
  store: a region read decodes only the tiles or strips it touches. Never through pyvips, which
  reads some TIFFs (ZSTD) as zeros without an error.
- JPEG, PNG, WebP, GIF through pyvips (``access="random"``, ``fail_on="warning"``, EXIF orientation
  applied): a decoding problem raises instead of giving zeros. These formats cannot be decoded by
  region: the first read decodes the whole image once, into memory if small, else into a libvips
  temporary file on disk (``TMPDIR``), so memory stays bounded but disk use does not.
- Anything else `load_image` accepts (BMP, CMYK JPEG, palette or CMYK TIFF, ...) is decoded whole,
  in its stored 8/16-bit form, if it has at most `EAGER_MAX_PIXELS` pixels; larger ones raise
  ImageError.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np
import pyvips
import tifffile
import zarr

from ..errors import ImageError
from .read import (
    _TIFF_MAGICS,
    _decode_file,
    _read_head,
    _tiff_premultiplied,
    _tiff_to_hwc,
    _to_chw,
    image_size,
)

EAGER_MAX_PIXELS = 1 << 26  # ~67 MP: the most a non-lazy format may have (decoded whole, 8/16-bit)

_VIPS_LOADERS = frozenset({"jpegload", "pngload", "webpload", "gifload"})  # formats PIL reads too
_VIPS_LAYOUTS = {"b-w": (1, 2), "grey16": (1, 2), "srgb": (3, 4), "rgb16": (3, 4)}  # -> bands
_VIPS_DTYPES = {"uchar": np.uint8, "ushort": np.uint16}
_TIFF_LAZY_PHOTOMETRICS = (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB)


class LazyImage:
    """An image file opened for region reads, converted like `load_image`.

    Use `open_image` to create one. Reads are thread-safe. The object holds an
    open file (TIFF) or a libvips image: close it, or use it as a context manager.

    Attributes:
        path: The image file.
        shape: (C, H, W) of the image `load_image` would return: C = 1 (gray) or
            3 (RGB), alpha excluded, EXIF orientation applied.
    """

    def __init__(self, path: Path, backend: _Backend) -> None:
        self.path = path
        self._backend = backend
        h, w = backend.size
        empty = backend.empty()  # validates the pixel type and sample count without decoding
        self.shape: tuple[int, int, int] = (_to_chw(empty, path, False).shape[0], h, w)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Decode and convert the region rows y0:y1, columns x0:x1.

        The values are exactly those of ``load_image(path)[:, y0:y1, x0:x1]``:
        8-bit v -> v / 127.5 - 1, 16-bit v -> v / 32767.5 - 1, float data clipped
        to [0, 1] first; alpha composited over white (with a warning) where a
        pixel is not opaque.

        Args:
            y0: First row, 0 <= y0 < y1.
            y1: End row (exclusive), y1 <= H.
            x0: First column, 0 <= x0 < x1.
            x1: End column (exclusive), x1 <= W.

        Returns:
            Array of shape (C, y1 - y0, x1 - x0), dtype float32, values in [-1, 1].

        Raises:
            ValueError: The region is empty or outside the image.
            ImageError: The image is closed, or its data cannot be decoded
                (corrupt or truncated file) or contains NaN/infinite values.
        """
        _, h, w = self.shape
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ValueError(f"region [{y0}:{y1}, {x0}:{x1}] is empty or outside the image {h}x{w}")
        try:
            raw = self._backend.read(y0, y1, x0, x1)
        except ImageError:
            raise
        except Exception as e:  # decoders raise many types (pyvips.Error, codec errors, OSError)
            raise ImageError(
                f"cannot decode region [{y0}:{y1}, {x0}:{x1}] of {self.path}: {' '.join(str(e).split())}"
            ) from e
        return _to_chw(raw, self.path, self._backend.premultiplied)

    def close(self) -> None:
        """Release the file handle or libvips image; later reads raise ImageError."""
        self._backend.close()

    def __enter__(self) -> LazyImage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LazyImage({str(self.path)!r}, shape={self.shape})"


def open_image(path: str | os.PathLike, /) -> LazyImage:
    """Open an image file for lazy region reads.

    The format is detected from the file contents. See the module docstring for
    which backend reads which format and what "lazy" means for each.

    Args:
        path: Image file to open.

    Returns:
        The opened image; its `read` returns what `load_image` would, region by region.

    Raises:
        ImageError: The file is missing, unreadable, not a decodable image, has an
            unsupported shape or pixel type, or is a non-lazy format larger than
            `EAGER_MAX_PIXELS`.
    """
    path = Path(path)
    head = _read_head(path)
    if head.startswith(_TIFF_MAGICS):
        backend = _TiffBackend.open(path)
    else:
        backend = _VipsBackend.open(path)
    if backend is None:
        backend = _EagerBackend.open(path)
    try:
        return LazyImage(path, backend)
    except BaseException:
        backend.close()
        raise


class _Backend(Protocol):
    """Raw region access in the file's stored form: (h, w) or (h, w, S) of its dtype."""

    size: tuple[int, int]  # (H, W)
    premultiplied: bool  # alpha is associated (premultiplied)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray: ...

    def empty(self) -> np.ndarray:
        """A (0, 0[, S]) array with the dtype and sample count of `read`'s result."""
        ...

    def close(self) -> None: ...


class _TiffBackend:
    """Level 0 of the first series of a TIFF through tifffile's zarr store (tiles/strips on demand)."""

    def __init__(self, path: Path, tif: tifffile.TiffFile, axes: str) -> None:
        self._path, self._tif, self._axes = path, tif, axes
        self._closed = False
        self._store = tif.series[0].aszarr(level=0)
        self._array = zarr.open_array(self._store, mode="r")
        self.premultiplied = _tiff_premultiplied(tif.series[0].levels[0].keyframe)
        self.size = (self._array.shape[axes.index("Y")], self._array.shape[axes.index("X")])

    @classmethod
    def open(cls, path: Path) -> _TiffBackend | None:
        """Open `path`, or return None if its colour space is one only PIL converts (palette, CMYK, ...)."""
        try:
            tif = tifffile.TiffFile(path)
        except Exception as e:
            raise ImageError(f"not an image file (cannot decode): {path}") from e
        try:
            level = tif.series[0].levels[0]
            page = level.keyframe
            jpeg_ycbcr = (
                page.photometric == tifffile.PHOTOMETRIC.YCBCR
                and page.compression in (tifffile.COMPRESSION.JPEG, tifffile.COMPRESSION.OJPEG)
            )  # decoded to RGB by the JPEG codec, as PIL/libtiff does for load_image
            if page.photometric in _TIFF_LAZY_PHOTOMETRICS or jpeg_ycbcr:
                return cls(path, tif, level.axes)
        except Exception as e:
            tif.close()
            raise ImageError(f"not an image file (cannot decode): {path}") from e
        tif.close()
        return None

    def _select(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        index = {"Y": slice(y0, y1), "X": slice(x0, x1)}
        return self._array[tuple(index.get(a, slice(None)) for a in self._axes)]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if self._closed:
            raise ImageError(f"image is closed: {self._path}")
        return _tiff_to_hwc(self._select(y0, y1, x0, x1), self._axes, self._path)

    def empty(self) -> np.ndarray:
        return _tiff_to_hwc(self._select(0, 0, 0, 0), self._axes, self._path)

    def close(self) -> None:
        self._closed = True
        self._store.close()
        self._tif.close()


class _VipsBackend:
    """JPEG/PNG/WebP/GIF through pyvips, EXIF orientation applied, failing on any decoder warning."""

    def __init__(self, path: Path, image: pyvips.Image) -> None:
        self._path, self._image = path, image
        self.premultiplied = False  # PNG, WebP and GIF store straight (unassociated) alpha
        self._dtype = _VIPS_DTYPES[image.format]
        self.size = (image.height, image.width)

    @classmethod
    def open(cls, path: Path) -> _VipsBackend | None:
        """Open `path`, or return None if pyvips cannot read it exactly as `load_image` does."""
        try:
            image = pyvips.Image.new_from_file(
                str(path), access="random", fail_on="warning", revalidate=True
            )
        except pyvips.Error:
            return None  # not a format libvips knows: let PIL decide in the eager backend
        if (
            image.get("vips-loader") not in _VIPS_LOADERS
            or image.format not in _VIPS_DTYPES
            or image.bands not in _VIPS_LAYOUTS.get(image.interpretation, ())
        ):
            return None  # e.g. CMYK JPEG: PIL's conversion to RGB is the reference
        return cls(path, image.autorot())

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if self._image is None:
            raise ImageError(f"image is closed: {self._path}")
        region = self._image.crop(x0, y0, x1 - x0, y1 - y0).write_to_memory()
        return np.frombuffer(region, self._dtype).reshape(y1 - y0, x1 - x0, self._image.bands)

    def empty(self) -> np.ndarray:
        return np.empty((0, 0, self._image.bands), self._dtype)

    def close(self) -> None:
        self._image = None


class _EagerBackend:
    """The whole image decoded by `load_image`'s decoder, kept in its stored 8/16-bit form."""

    def __init__(self, path: Path, arr: np.ndarray, premultiplied: bool) -> None:
        self._path = path
        self._arr: np.ndarray | None = arr
        self.premultiplied = premultiplied
        self.size = arr.shape[:2]

    @classmethod
    def open(cls, path: Path) -> _EagerBackend:
        """Decode `path` whole, refusing images larger than `EAGER_MAX_PIXELS`."""
        w, h = image_size(path)
        if w * h > EAGER_MAX_PIXELS:
            raise ImageError(
                f"{path}: {w}x{h} image in a format or colour space that cannot be read by "
                f"region; images over {EAGER_MAX_PIXELS / 1e6:.0f} MP must be TIFF (gray or RGB), "
                "JPEG, PNG, WebP or GIF"
            )
        return cls(path, *_decode_file(path))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if self._arr is None:
            raise ImageError(f"image is closed: {self._path}")
        return self._arr[y0:y1, x0:x1]

    def empty(self) -> np.ndarray:
        return self._arr[:0, :0]

    def close(self) -> None:
        self._arr = None
