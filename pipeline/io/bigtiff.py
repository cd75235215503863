"""Stream huge images out of core: reduced-resolution levels, tiled pyramidal BigTIFF, OME-Zarr.

Everything here works on *region sources*: objects with ``.shape`` (C, H, W) and
``.read(y0, y1, x0, x1)`` returning (C, h, w) float32 in [-1, 1] (see `RegionSource`).
`sidpipe.io.lazy.LazyImage` is one, `ZarrSource` wraps a zarr array as another. Nothing holds a
whole image (or a whole level) in memory: levels are built chunk by chunk into zarr, and the
writers pull one tile or chunk at a time from their sources.

A pyramid is a list of sources ``[level 0, level 1, ...]`` in which level k + 1 is level k halved,
rounding odd sizes up (as `build_levels` makes them).
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import tifffile
import zarr
from PIL import ImageCms

from ..errors import ImageError
from .write import _quantise

COMPRESSIONS: tuple[str, ...] = ("zlib", "zstd", "jpeg", "none")

_WORKERS = min(4, os.cpu_count() or 1)  # threads reading/quantising tiles, and encoding them

# tifffile compression, and its codec arguments: fast levels (zlib-1 and zstd-1 lose ~2% of size
# against their defaults at a fraction of the time on photos); JPEG quality as save_image's.
_CODECS: dict[str, tuple[str | None, dict[str, int]]] = {
    "zlib": ("zlib", {"level": 1}),
    "zstd": ("zstd", {"level": 1}),
    "jpeg": ("jpeg", {"level": 95}),
    "none": (None, {}),
}


@runtime_checkable
class RegionSource(Protocol):
    """Anything that serves regions of a (C, H, W) float32 [-1, 1] image."""

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the image."""
        ...

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Return rows y0:y1, columns x0:x1 as a (C, y1 - y0, x1 - x0) float32 array."""
        ...


class ZarrSource:
    """A region source over a zarr array of shape (C, H, W) holding float32 values in [-1, 1].

    Attributes:
        array: The wrapped zarr array.
    """

    def __init__(self, array: zarr.Array) -> None:
        """Wrap `array`.

        Args:
            array: zarr array of shape (C, H, W), C = 1 or 3.

        Raises:
            ValueError: The array is not 3-dimensional with 1 or 3 channels.
        """
        if array.ndim != 3 or array.shape[0] not in (1, 3):
            raise ValueError(f"expected a (C, H, W) array with C = 1 or 3, got shape {array.shape}")
        self.array = array

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the array."""
        c, h, w = self.array.shape
        return c, h, w

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Return rows y0:y1, columns x0:x1 as a (C, y1 - y0, x1 - x0) float32 array.

        Raises:
            ValueError: The region is empty or outside the array.
        """
        _, h, w = self.shape
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ValueError(f"region [{y0}:{y1}, {x0}:{x1}] is empty or outside the image {h}x{w}")
        return np.asarray(self.array[:, y0:y1, x0:x1], dtype=np.float32)


def build_levels(
    source: RegionSource, group: zarr.Group, *, min_size: int = 512, chunk: int = 512
) -> list[ZarrSource]:
    """Build the reduced-resolution levels of `source` in a zarr group, chunk by chunk.

    Level k + 1 is the 2x2 mean of level k (level 0 is `source`), of size
    ceil(H / 2) x ceil(W / 2). At an odd edge the last row/column is replicated,
    which is the same as averaging the pixels that exist (2 or 1 instead of 4).
    Levels are added while the previous one's long side exceeds `min_size`, so the
    smallest level is the first that fits in a `min_size` square; a source that
    already fits gets no levels. Level k is stored as float32 array ``str(k)`` of
    `group` (replacing any array of that name) with chunks (C, chunk, chunk), and
    computed from level k - 1 one output chunk at a time (reads of at most
    C x 2·chunk x 2·chunk values, whole-chunk writes).

    Args:
        source: Level 0.
        group: zarr (v3) group that receives arrays "1", "2", ...
        min_size: Stop once the long side is at most this many pixels (>= 1).
        chunk: Chunk side of the level arrays, in pixels.

    Returns:
        The levels 1, 2, ... as sources, largest first (empty if none are needed).

    Raises:
        ValueError: `min_size` or `chunk` is less than 1.
    """
    if min_size < 1 or chunk < 1:
        raise ValueError(f"min_size and chunk must be at least 1, got {min_size} and {chunk}")
    levels: list[ZarrSource] = []
    prev: RegionSource = source
    while max(prev.shape[1:]) > min_size:
        c, h, w = prev.shape
        hh, ww = -(-h // 2), -(-w // 2)
        array = group.create_array(
            str(len(levels) + 1),
            shape=(c, hh, ww),
            dtype="float32",
            chunks=(c, chunk, chunk),
            dimension_names=("c", "y", "x"),
            overwrite=True,
        )
        for y0, y1, x0, x1 in _grid(hh, ww, chunk):
            block = prev.read(2 * y0, min(2 * y1, h), 2 * x0, min(2 * x1, w))
            array[:, y0:y1, x0:x1] = _halve(block)
        prev = ZarrSource(array)
        levels.append(prev)
    return levels


def write_bigtiff(
    path: str | os.PathLike,
    levels: Sequence[RegionSource],
    *,
    tile: int = 512,
    compression: str = "zlib",
    bit_depth: int = 8,
    dpi: float | None = None,
    icc: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Stream a pyramid into a tiled BigTIFF: level 0 first, the other levels as its SubIFDs.

    Pixels are quantised exactly as `save_image` does (round((x + 1) / 2 * maxval)
    after clipping to [-1, 1]), one tile at a time; edge tiles are padded to full
    size (TIFF stores whole tiles) by replicating the last row/column, so JPEG does
    not ring at the image border. zlib and zstd (level 1) use the horizontal
    differencing predictor; JPEG is quality 95, YCbCr 4:2:0 for RGB. Tiles are
    written row by row, left to right. Sub-level k is marked as a reduced image
    and its DPI is dpi / 2^k. RGB files get an sRGB ICC profile (if `icc`). The
    file appears atomically: it is written to a hidden ``.<stem>.<random>.part<ext>``
    file in the same folder and renamed over `path` at the end; on any failure,
    including KeyboardInterrupt or an exception from a source, the partial file is
    removed. Tiles are read, quantised and encoded by a few threads (sources must
    allow concurrent `read` calls, as LazyImage and ZarrSource do); memory holds
    at most about two tile rows (tile x W x C) of 8/16-bit pixels.

    Args:
        path: Output file (conventionally .tif/.tiff).
        levels: Level 0, then its reduced levels (each the previous one halved,
            rounding up), all with the same channel count C = 1 or 3.
        tile: Tile side in pixels, a multiple of 16.
        compression: One of "zlib", "zstd", "jpeg" (8-bit only), "none".
        bit_depth: 8 or 16.
        dpi: Resolution of level 0 in pixels per inch, or None to leave it unset.
        icc: Embed an sRGB ICC profile in RGB images.
        progress: Called as progress(done_tiles, total_tiles) after each tile is
            prepared, counting the tiles of all levels.

    Raises:
        ImageError: Bad bit depth, compression or compression/bit-depth combination,
            non-finite pixel values, or the file cannot be written.
        ValueError: Bad tile size, or `levels` is empty or not a halving pyramid
            with one channel count.
    """
    path = Path(path)
    channels = _check_pyramid(levels)
    if bit_depth not in (8, 16):
        raise ImageError(f"bit depth must be 8 or 16, got {bit_depth}")
    if compression not in _CODECS:
        raise ImageError(f"unsupported compression {compression!r}; supported: {', '.join(COMPRESSIONS)}")
    if compression == "jpeg" and bit_depth != 8:
        raise ImageError(f"JPEG compression is 8-bit only (bit depth {bit_depth} requested): {path}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")

    codec, codec_args = _CODECS[compression]
    dtype = np.dtype(np.uint8 if bit_depth == 8 else np.uint16)
    options = {
        "dtype": dtype,
        "tile": (tile, tile),
        "photometric": "rgb" if channels == 3 else "minisblack",
        "compression": codec,
        "compressionargs": dict(codec_args),  # tifffile adds keys to this dict: never share it
        "predictor": compression in ("zlib", "zstd"),
        "iccprofile": _srgb_icc() if icc and channels == 3 else None,
        "metadata": None,  # no tifffile JSON description: a plain image
        "maxworkers": _WORKERS,
        # tifffile collects this many bytes of tiles, then encodes them in parallel: one tile row
        "buffersize": tile * levels[0].shape[2] * channels * dtype.itemsize,
    }
    total = sum(-(-src.shape[1] // tile) * -(-src.shape[2] // tile) for src in levels)
    done = 0

    def prepare(source: RegionSource, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        block = _quantise(source.read(y0, y1, x0, x1), bit_depth)
        if block.shape[:2] != (tile, tile):  # replicate the edge: no JPEG ringing at the border
            pad = [(0, tile - block.shape[0]), (0, tile - block.shape[1])]
            block = np.pad(block, pad + [(0, 0)] * (block.ndim - 2), mode="edge")
        return block

    def tiles(source: RegionSource, pool: ThreadPoolExecutor) -> Iterator[np.ndarray]:
        nonlocal done
        _, h, w = source.shape
        for y0 in range(0, h, tile):  # one tile row in flight at a time
            row = [(y0, min(y0 + tile, h), x0, min(x0 + tile, w)) for x0 in range(0, w, tile)]
            for block in pool.map(lambda cell: prepare(source, *cell), row):
                done += 1
                if progress is not None:
                    progress(done, total)
                yield block

    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.part{path.suffix}")
    try:
        with ThreadPoolExecutor(_WORKERS) as pool, tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            for k, source in enumerate(levels):
                _, h, w = source.shape
                tw.write(
                    tiles(source, pool),
                    shape=(h, w, 3) if channels == 3 else (h, w),
                    subifds=len(levels) - 1 if k == 0 else None,
                    subfiletype=1 if k else 0,  # 1: reduced-resolution image
                    resolution=None if dpi is None else (dpi / 2**k, dpi / 2**k),
                    resolutionunit=None if dpi is None else "INCH",
                    **options,
                )
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ImageError(f"cannot write output: {path} ({e.strerror or e})") from e
    except BaseException:  # a source or codec failure, KeyboardInterrupt, ...
        tmp.unlink(missing_ok=True)
        raise


def write_ome_zarr(
    path: str | os.PathLike,
    levels: Sequence[RegionSource],
    *,
    chunk: int = 512,
    bit_depth: int = 8,
) -> None:
    """Stream a pyramid into an OME-Zarr 0.5 image (zarr v3), chunk by chunk.

    The root group's attributes hold ``{"ome": {"version": "0.5", "multiscales":
    [...]}}`` with axes c (channel), y, x (space) and one dataset per level, path
    ``str(k)``, whose scale transformation is [1, 2^k, 2^k]. Each level is a
    uint8/uint16 array with dimension names (c, y, x), chunks (C, chunk, chunk)
    and zarr's default (zstd) compression; values are quantised as `save_image`
    does. The store is written to a hidden ``.<name>.<random>.part`` folder next to
    `path` and renamed to `path` at the end (an existing `path` is replaced); on
    any failure the partial folder is removed.

    Args:
        path: Output folder (conventionally ``*.ome.zarr``).
        levels: Level 0, then its reduced levels (each the previous one halved,
            rounding up), all with the same channel count C = 1 or 3.
        chunk: Chunk side in pixels.
        bit_depth: 8 (uint8) or 16 (uint16).

    Raises:
        ImageError: Bad bit depth, non-finite pixel values, or the store cannot be written.
        ValueError: Bad chunk size, or `levels` is empty or not a halving pyramid
            with one channel count.
    """
    path = Path(path)
    channels = _check_pyramid(levels)
    if bit_depth not in (8, 16):
        raise ImageError(f"bit depth must be 8 or 16, got {bit_depth}")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    multiscale = {
        "name": path.name,
        "axes": [
            {"name": "c", "type": "channel"},
            {"name": "y", "type": "space"},
            {"name": "x", "type": "space"},
        ],
        "datasets": [
            {
                "path": str(k),
                "coordinateTransformations": [{"type": "scale", "scale": [1.0, 2.0**k, 2.0**k]}],
            }
            for k in range(len(levels))
        ],
    }
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        root = zarr.create_group(
            tmp, zarr_format=3, attributes={"ome": {"version": "0.5", "multiscales": [multiscale]}}
        )
        for k, source in enumerate(levels):
            _, h, w = source.shape
            array = root.create_array(
                str(k),
                shape=(channels, h, w),
                dtype=dtype,
                chunks=(channels, chunk, chunk),
                dimension_names=("c", "y", "x"),
            )
            for y0, y1, x0, x1 in _grid(h, w, chunk):
                q = _quantise(source.read(y0, y1, x0, x1), bit_depth)
                array[:, y0:y1, x0:x1] = q[None] if q.ndim == 2 else q.transpose(2, 0, 1)
        _replace_tree(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ImageError(f"cannot write output: {path} ({e.strerror or e})") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _grid(h: int, w: int, step: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (y0, y1, x0, x1) of the step x step cells covering h x w, row by row."""
    for y0 in range(0, h, step):
        for x0 in range(0, w, step):
            yield y0, min(y0 + step, h), x0, min(x0 + step, w)


def _halve(block: np.ndarray) -> np.ndarray:
    """2x2 mean of a (C, h, w) block; an odd last row/column is replicated (mean of what exists)."""
    if block.shape[1] % 2 or block.shape[2] % 2:
        block = np.pad(block, ((0, 0), (0, block.shape[1] % 2), (0, block.shape[2] % 2)), mode="edge")
    s = block[:, 0::2, 0::2] + block[:, 0::2, 1::2] + block[:, 1::2, 0::2] + block[:, 1::2, 1::2]
    return s * np.float32(0.25)


def _check_pyramid(levels: Sequence[RegionSource]) -> int:
    """Check that `levels` is a non-empty halving pyramid (sizes rounded up); return its C."""
    if not levels:
        raise ValueError("no levels to write")
    channels, h, w = levels[0].shape
    if channels not in (1, 3):
        raise ValueError(f"level 0 has {channels} channels; expected 1 or 3")
    for k, source in enumerate(levels[1:], start=1):
        expected = (channels, -(-h // 2), -(-w // 2))
        if tuple(source.shape) != expected:
            raise ValueError(f"level {k} has shape {tuple(source.shape)}; expected {expected}")
        _, h, w = expected
    return channels


@functools.cache
def _srgb_icc() -> bytes:
    """The bytes of LittleCMS's built-in sRGB ICC profile."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _replace_tree(tmp: Path, path: Path) -> None:
    """Rename folder `tmp` to `path`, replacing whatever `path` is (file or folder)."""
    if not path.exists() and not path.is_symlink():
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
    os.replace(path, old)
    os.replace(tmp, path)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()
