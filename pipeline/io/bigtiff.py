"""Stream huge images out of core: reduced-resolution levels, tiled pyramidal (Big)TIFF, OME-Zarr.

Everything here works on *region sources*: objects with ``.shape`` (C, H, W) and
``.read(y0, y1, x0, x1)`` returning (C, h, w) float32 in [-1, 1] (see `RegionSource`).
`sidpipe.io.lazy.LazyImage` is one, `ZarrSource` wraps a zarr array as another. Nothing holds a
whole image (or a whole level) in memory: levels are built chunk by chunk into zarr, and the
writers pull one tile or chunk at a time from their sources.

A pyramid is a list of sources ``[level 0, level 1, ...]`` in which level k + 1 is level k halved,
rounding odd sizes up (as `build_levels` makes them).
"""

from __future__ import annotations

import base64
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

from ..errors import ImageError
from .color import Conversion
from .write import _quantise

COMPRESSIONS: tuple[str, ...] = ("zlib", "zstd", "lzw", "jpeg", "none")
BIGTIFF_MODES: tuple[str, ...] = ("auto", "always", "never")

_WORKERS = min(4, os.cpu_count() or 1)  # threads reading/quantising tiles, and encoding them

# tifffile compression, and its codec arguments: fast levels (zlib-1 and zstd-1 lose ~2% of size
# against their defaults at a fraction of the time on photos); JPEG quality as save_image's.
_CODECS: dict[str, tuple[str | None, dict[str, int]]] = {
    "zlib": ("zlib", {"level": 1}),
    "zstd": ("zstd", {"level": 1}),
    "lzw": ("lzw", {}),
    "jpeg": ("jpeg", {"level": 95}),
    "none": (None, {}),
}
# Worst-case size of a compressed tile over its raw size: deflate/zstd store incompressible blocks
# with a few bytes of framing; LZW's codes are at most 12 bits per 8-bit byte; JPEG at quality 95 on
# noise stays well under 1.5 bytes per sample.
_EXPANSION = {"zlib": 1.01, "zstd": 1.01, "lzw": 1.5, "jpeg": 1.5, "none": 1.0}
_CLASSIC_LIMIT = 2**32  # a classic TIFF's 32-bit offsets
_INKSET = 332  # TIFF tag InkSet


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
    icc: bytes | None = None,
    conversion: Conversion | None = None,
    bigtiff: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Stream a pyramid into a tiled TIFF: level 0 first, the other levels as its SubIFDs.

    Pixels are quantised exactly as `save_image` does (round((x + 1) / 2 * maxval)
    after clipping to [-1, 1]), one tile at a time. With a `conversion` they are
    quantised to 16 bits instead and converted tile by tile to the output profile
    (LittleCMS), at `bit_depth`: a CMYK profile gives a CMYK file (photometric
    separated, InkSet CMYK), and the output profile is embedded instead of `icc`.
    Edge tiles are padded to full size (TIFF stores whole tiles) by replicating the
    last row/column, so JPEG does not ring at the image border. zlib, zstd and LZW
    use the horizontal differencing predictor; JPEG is quality 95, YCbCr 4:2:0 for
    RGB. Tiles are written row by row, left to right. Sub-level k is marked as a
    reduced image and its DPI is dpi / 2^k. The file is a classic TIFF or a BigTIFF
    as `bigtiff` and `tiff_size_bound` decide. It appears atomically: it is written
    to a hidden ``.<stem>.<random>.part<ext>`` file in the same folder and renamed
    over `path` at the end; on any failure, including KeyboardInterrupt or an
    exception from a source, the partial file is removed. Tiles are read,
    quantised, converted and encoded by a few threads (sources must allow
    concurrent `read` calls, as LazyImage and ZarrSource do); memory holds at most
    about two tile rows (tile x W x C) of 8/16-bit pixels.

    Args:
        path: Output file (conventionally .tif/.tiff).
        levels: Level 0, then its reduced levels (each the previous one halved,
            rounding up), all with the same channel count C = 1 or 3. One level: no pyramid.
        tile: Tile side in pixels, a multiple of 16.
        compression: One of "zlib", "zstd", "lzw", "jpeg" (8-bit gray/RGB only), "none".
        bit_depth: 8 or 16.
        dpi: Resolution of level 0 in pixels per inch, or None to leave it unset.
        icc: ICC profile to embed (the working space), or None for none.
        conversion: Convert to this output profile while writing, or None to keep the working space.
        bigtiff: "auto" (BigTIFF only if a classic TIFF might exceed 4 GiB), "always" or "never".
        progress: Called as progress(done_tiles, total_tiles) after each tile is
            prepared, counting the tiles of all levels.

    Raises:
        ImageError: Bad bit depth, compression or compression/bit-depth combination,
            bigtiff="never" for a file that may not fit a classic TIFF, non-finite
            pixel values, or the file cannot be written.
        ValueError: Bad tile size, or `levels` is empty or not a halving pyramid
            with one channel count.
    """
    path = Path(path)
    channels = _check_pyramid(levels)
    samples = conversion.channels if conversion is not None else channels
    if bit_depth not in (8, 16):
        raise ImageError(f"bit depth must be 8 or 16, got {bit_depth}")
    check_tiff_options(compression, bit_depth, samples)
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    sizes = [src.shape[1:] for src in levels]
    big = use_bigtiff(bigtiff, tiff_size_bound(sizes, samples, bit_depth, tile, compression), path)
    if conversion is not None:
        icc = conversion.target.data

    def read(k: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        block = levels[k].read(y0, y1, x0, x1)
        if conversion is None:
            return _quantise(block, bit_depth)
        return conversion.apply(_quantise(block, 16), bit_depth)

    stream_tiff(path, sizes, read, samples=samples, bit_depth=bit_depth, tile=tile, compression=compression,
                dpi=dpi, icc=icc, bigtiff=big, progress=progress)


def check_tiff_options(compression: str, bit_depth: int, samples: int) -> None:
    """Refuse a compression sidpipe does not write, or JPEG where it cannot go (16-bit, CMYK).

    Raises:
        ImageError: Naming the problem.
    """
    if compression not in _CODECS:
        raise ImageError(f"unsupported compression {compression!r}; supported: {', '.join(COMPRESSIONS)}")
    if compression == "jpeg" and bit_depth != 8:
        raise ImageError(f"JPEG compression is 8-bit only (bit depth {bit_depth} requested)")
    if compression == "jpeg" and samples == 4:
        raise ImageError("JPEG compression is for gray and RGB output, not CMYK")


def tiff_size_bound(sizes: Sequence[tuple[int, int]], samples: int, bit_depth: int, tile: int,
                    compression: str) -> int:
    """An upper bound on the bytes of a tiled TIFF of levels `sizes` ((H, W) each): whole tiles,
    times the codec's worst-case expansion (`_EXPANSION`), plus 16 bytes of offsets and counts per
    tile and 64 KiB for the headers, tags and profile."""
    tiles = sum(-(-h // tile) * -(-w // tile) for h, w in sizes)
    raw = tiles * tile * tile * samples * (bit_depth // 8)
    return int(raw * _EXPANSION[compression]) + 16 * tiles + (1 << 16)


def use_bigtiff(mode: str, bound: int, path: str | os.PathLike = "") -> bool:
    """Decide between classic TIFF and BigTIFF for a file of at most `bound` bytes.

    Raises:
        ImageError: Unknown mode, or mode "never" for a file that may exceed a classic TIFF's 4 GiB.
    """
    if mode not in BIGTIFF_MODES:
        raise ImageError(f"--bigtiff must be one of {', '.join(BIGTIFF_MODES)}, got {mode!r}")
    fits = bound < _CLASSIC_LIMIT
    if mode == "never" and not fits:
        raise ImageError(f"--bigtiff never: the file may reach {bound / 2**30:.1f} GiB (worst case for its "
                         f"compression), more than a classic TIFF's 4 GiB; use --bigtiff auto, another "
                         f"compression, --no-pyramid or a smaller size{f': {path}' if path else ''}")
    return mode == "always" or (mode == "auto" and not fits)


def stream_tiff(
    path: str | os.PathLike,
    sizes: Sequence[tuple[int, int]],
    read: Callable[[int, int, int, int, int], np.ndarray],
    *,
    samples: int,
    bit_depth: int,
    tile: int,
    compression: str,
    dpi: float | None,
    icc: bytes | None,
    bigtiff: bool,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write integer tiles into a tiled TIFF, level 0 first and the others as its SubIFDs, atomically.

    The common part of `write_bigtiff` and `sidpipe.io.panels`: options already checked.

    Args:
        sizes: (H, W) of every level, level 0 first.
        read: read(k, y0, y1, x0, x1) returns level k's region as (h, w) or (h, w, samples)
            uint8/uint16 (called from a few threads at once).
        samples: 1 (gray), 3 (RGB) or 4 (CMYK).
        bigtiff: Write a BigTIFF (else a classic TIFF).
    """
    path = Path(path)
    codec, codec_args = _CODECS[compression]
    dtype = np.dtype(np.uint8 if bit_depth == 8 else np.uint16)
    options = {
        "dtype": dtype,
        "tile": (tile, tile),
        "photometric": {1: "minisblack", 3: "rgb", 4: "separated"}[samples],
        "compression": codec,
        "compressionargs": dict(codec_args),  # tifffile adds keys to this dict: never share it
        "predictor": compression in ("zlib", "zstd", "lzw"),
        "iccprofile": icc,
        "extratags": [(_INKSET, "H", 1, 1, True)] if samples == 4 else [],  # InkSet = 1: CMYK
        "metadata": None,  # no tifffile JSON description: a plain image
        "maxworkers": _WORKERS,
        # tifffile collects this many bytes of tiles, then encodes them in parallel: one tile row
        "buffersize": tile * sizes[0][1] * samples * dtype.itemsize,
    }
    total = sum(-(-h // tile) * -(-w // tile) for h, w in sizes)
    done = 0

    def prepare(k: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        block = read(k, y0, y1, x0, x1)
        if block.shape[:2] != (tile, tile):  # replicate the edge: no JPEG ringing at the border
            pad = [(0, tile - block.shape[0]), (0, tile - block.shape[1])]
            block = np.pad(block, pad + [(0, 0)] * (block.ndim - 2), mode="edge")
        return block

    def tiles(k: int, pool: ThreadPoolExecutor) -> Iterator[np.ndarray]:
        nonlocal done
        h, w = sizes[k]
        for y0 in range(0, h, tile):  # one tile row in flight at a time
            row = [(y0, min(y0 + tile, h), x0, min(x0 + tile, w)) for x0 in range(0, w, tile)]
            for block in pool.map(lambda cell: prepare(k, *cell), row):
                done += 1
                if progress is not None:
                    progress(done, total)
                yield block

    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.part{path.suffix}")
    try:
        with ThreadPoolExecutor(_WORKERS) as pool, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
            for k, (h, w) in enumerate(sizes):
                tw.write(
                    tiles(k, pool),
                    shape=(h, w, samples) if samples > 1 else (h, w),
                    subifds=len(sizes) - 1 if k == 0 else None,
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
    icc: bytes | None = None,
) -> None:
    """Stream a pyramid into an OME-Zarr 0.5 image (zarr v3), chunk by chunk.

    The root group's attributes hold ``{"ome": {"version": "0.5", "multiscales":
    [...]}}`` with axes c (channel), y, x (space) and one dataset per level, path
    ``str(k)``, whose scale transformation is [1, 2^k, 2^k]. Each level is a
    uint8/uint16 array with dimension names (c, y, x), chunks (C, chunk, chunk)
    and zarr's default (zstd) compression; values are quantised as `save_image`
    does. OME-Zarr has no field for a colour profile: `icc` (the working space) is
    stored base64-encoded in the root attributes as ``{"sidpipe": {"icc_profile": ...}}``. The store is written to a hidden ``.<name>.<random>.part`` folder next to
    `path` and renamed to `path` at the end (an existing `path` is replaced); on
    any failure the partial folder is removed.

    Args:
        path: Output folder (conventionally ``*.ome.zarr``).
        levels: Level 0, then its reduced levels (each the previous one halved,
            rounding up), all with the same channel count C = 1 or 3.
        chunk: Chunk side in pixels.
        bit_depth: 8 (uint8) or 16 (uint16).
        icc: ICC profile of the pixels, or None.

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
        attributes: dict = {"ome": {"version": "0.5", "multiscales": [multiscale]}}
        if icc is not None:
            attributes["sidpipe"] = {"icc_profile": base64.b64encode(icc).decode("ascii")}
        root = zarr.create_group(tmp, zarr_format=3, attributes=attributes)
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
