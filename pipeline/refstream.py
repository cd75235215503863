"""Write the reference pyramid into a zarr group region by region, never holding the whole image.

`write_reference_pyramid(source, sizes, group)` gives, in arrays "0" (finest), "1", ..., exactly
``reference_pyramid(torch.from_numpy(load_image(path)), sizes)``, bit for bit, while reading the
image only through ``source.read(y0, y1, x0, x1)`` (a `sidpipe.io.lazy.LazyImage`, or any region
source). This works because `resize_region` computes any output rectangle from the input rectangle
`resize_support` names with the same arithmetic as the whole-image `resize`.

Each level is written one zarr chunk at a time (so every write covers whole chunks). An output chunk
of a strongly shrunk level reads an input rectangle `factor` times its size; such a chunk is computed
in sub-rectangles whose input support is at most `max_read` rows and columns, and assembled in a
chunk-sized buffer before it is written. An input rectangle is read in bands of at most `read_pixels`
pixels, because `LazyImage.read` converts in float64 (about three temporaries of 8 x C bytes a pixel).
Peak memory is therefore bounded by `chunk`, `max_read` and `read_pixels`, not by the image: about
C x (4 x max_read**2 for the input rectangle + 12 x chunk x max_read for the row pass (result, tap and
product) + 16 x chunk**2 for the column pass and the chunk buffer + 24 x read_pixels for a band's
conversion) bytes, plus what the decoder keeps (see `sidpipe.io.lazy`) and zarr's encoding of one
chunk. With C = 3 and the defaults (chunk = 1024, max_read = 2 x chunk + 64, read_pixels = 2**20) that
is at most about 0.25 GiB.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import zarr

from .io.bigtiff import RegionSource
from .pyramid import Taps, resize_plan, resize_region

Progress = Callable[[dict], None]


READ_PIXELS = 1 << 20  # most pixels read from a source at once (whole rows), by default


class ArrayRegions:
    """A region source over an in-memory (C, H, W) float32 array (for callers that already hold the image)."""

    def __init__(self, image: np.ndarray) -> None:
        if image.ndim != 3:
            raise ValueError(f"expected a (C, H, W) array, got shape {image.shape}")
        self.image = image

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.image.shape
        return c, h, w

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.ascontiguousarray(self.image[:, y0:y1, x0:x1], dtype=np.float32)


def ome_multiscales(sizes: list[tuple[int, int]], name: str) -> dict:
    """OME-Zarr 0.5 multiscales metadata for arrays "0", "1", ... of the given sizes (finest first)."""
    h0, w0 = sizes[0]
    return {"version": "0.5", "multiscales": [{
        "name": name,
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": str(s), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, h0 / h, w0 / w]}]} for s, (h, w) in enumerate(sizes)],
    }]}


def write_reference_pyramid(
    source: RegionSource | np.ndarray,
    sizes: list[tuple[int, int]],
    group: zarr.Group,
    *,
    chunk: int = 1024,
    max_read: int | None = None,
    read_pixels: int = READ_PIXELS,
    progress: Progress | None = None,
) -> list[zarr.Array]:
    """Write the reference at every size of `sizes` into arrays "0", "1", ... of `group`, streaming.

    Level s equals ``reference_pyramid(torch.from_numpy(image), sizes)[s]`` bit for bit, where `image`
    is what `source` holds: a level of the image's own size is a copy, any other is resized directly
    from the full-resolution image. Existing arrays of the same names are replaced; the group gets
    OME-Zarr 0.5 multiscales metadata in ``attrs["ome"]`` once every level is written.

    Parameters:
        source: The full-resolution image: a region source (``.shape`` (C, H, W) and
            ``.read(y0, y1, x0, x1)`` -> float32 (C, h, w)), e.g. a `LazyImage`, or a (C, H, W) array.
        sizes: (h, w) of each level, finest first.
        group: Where to write (e.g. the run directory's ref.zarr).
        chunk: Chunk side of every array; arrays are chunked (C, chunk, chunk) and written one whole
            chunk at a time.
        max_read: Longest side (rows or columns) of an input region read at once (default
            2 * chunk + 64). A region is larger only where a single output pixel's taps need more.
        read_pixels: Most pixels asked of ``source.read`` at once (whole rows of the region are read,
            at least one).
        progress: Called with {"event": "reference", "scale", "done", "total"} after each chunk.

    Returns:
        The written arrays, finest first.

    Raises:
        ValueError: `sizes` is empty, or a size, `chunk`, `max_read` or `read_pixels` is not positive.
        ImageError: The source cannot decode a region (a `LazyImage` over a corrupt file).
    """
    if isinstance(source, np.ndarray):
        source = ArrayRegions(source)
    if not sizes:
        raise ValueError("sizes is empty")
    if chunk < 1 or any(h < 1 or w < 1 for h, w in sizes):
        raise ValueError(f"chunk and every size must be positive, got chunk={chunk}, sizes={sizes}")
    max_read = 2 * chunk + 64 if max_read is None else max_read
    if max_read < 1 or read_pixels < 1:
        raise ValueError(f"max_read and read_pixels must be >= 1, got {max_read} and {read_pixels}")
    channels, height, width = source.shape
    arrays = []
    for s, (h, w) in enumerate(sizes):
        array = group.create_array(str(s), shape=(channels, h, w), chunks=(channels, chunk, chunk),
                                   dtype="float32", overwrite=True)
        _write_level(source, array, s, chunk, max_read, read_pixels, progress)
        arrays.append(array)
    group.attrs["ome"] = ome_multiscales([tuple(size) for size in sizes], "reference")
    return arrays


def write_level(source: RegionSource, array, *, chunk: int = 1024, max_read: int | None = None,
                read_pixels: int = READ_PIXELS, post: Callable[[np.ndarray], np.ndarray] | None = None,
                skip_zero: bool = False) -> None:
    """Fill `array` (a zarr or numpy array whose last two dimensions are (h, w)) with `source` resized to
    (h, w) (copied if it has that size), one `chunk` x `chunk` block at a time, as `write_reference_pyramid`
    writes a level: bit for bit ``resize(image, (h, w))`` of the image `source` holds, in bounded memory.

    post: maps each computed float32 (C, bh, bw) block to what `array` stores there (e.g. a mask's
    threshold to a bool (bh, bw) block); default: the block itself. skip_zero: a resized rectangle whose
    input rectangle is all zero is taken as +0.0 without computing it (a sum of products with zeros is
    zero, but -0.0 where the first tap's weight is negative: use it where `post` cannot tell, e.g. a
    mask's threshold of |x|; it makes a sparse mask's levels cheap)."""
    max_read = 2 * chunk + 64 if max_read is None else max_read
    _write_level(source, array, None, chunk, max_read, read_pixels, None, post, skip_zero)


def _write_level(source: RegionSource, array: zarr.Array, scale: int | None, chunk: int, max_read: int,
                 read_pixels: int, progress: Progress | None,
                 post: Callable[[np.ndarray], np.ndarray] | None = None, skip_zero: bool = False) -> None:
    """Fill `array` (..., h, w), one whole chunk at a time, with `source` resized to (h, w) (copied if same
    size), each block mapped by `post` (if given) before it is stored."""
    channels, height, width = source.shape
    h, w = array.shape[-2:]
    copy = (h, w) == (height, width)
    if copy:
        row_parts = [[(y0, min(y0 + chunk, h))] for y0 in range(0, h, chunk)]
        col_parts = [[(x0, min(x0 + chunk, w))] for x0 in range(0, w, chunk)]
    else:
        rows, cols = resize_plan((height, width), (h, w))
        row_parts = _split(rows, chunk, max_read)
        col_parts = _split(cols, chunk, max_read)
    total, done = len(row_parts) * len(col_parts), 0
    for rparts in row_parts:
        cy0, cy1 = rparts[0][0], rparts[-1][1]
        for cparts in col_parts:
            cx0, cx1 = cparts[0][0], cparts[-1][1]
            if copy:
                block = read_region(source, (cy0, cy1, cx0, cx1), read_pixels)
            else:
                block = np.empty((channels, cy1 - cy0, cx1 - cx0), np.float32)
                for y0, y1 in rparts:
                    for x0, x1 in cparts:
                        block[:, y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0] = _resized(
                            source, (height, width), (h, w), (y0, y1, x0, x1), rows, cols, read_pixels, skip_zero)
            array[..., cy0:cy1, cx0:cx1] = block if post is None else post(block)
            done += 1
            if progress is not None:
                progress({"event": "reference", "scale": scale, "done": done, "total": total})


@torch.no_grad()
def _resized(source: RegionSource, in_size: tuple[int, int], out_size: tuple[int, int],
             box: tuple[int, int, int, int], rows: Taps, cols: Taps, read_pixels: int,
             skip_zero: bool = False) -> np.ndarray:
    """Output rectangle `box` of the resized image, from the input rectangle it reads (zeros without
    computing them if `skip_zero` and that rectangle is all zero)."""
    iy0, iy1 = rows.support(box[0], box[1])
    ix0, ix1 = cols.support(box[2], box[3])
    x = torch.from_numpy(read_region(source, (iy0, iy1, ix0, ix1), read_pixels))
    if skip_zero and not bool(x.any()):
        return np.zeros((x.shape[0], box[1] - box[0], box[3] - box[2]), np.float32)
    return resize_region(x, (iy0, ix0), in_size, out_size, box).numpy()


def row_bands(y0: int, y1: int, width: int, read_pixels: int = READ_PIXELS):
    """Row ranges [b0, b1) covering rows y0:y1, each at most `read_pixels` pixels of `width` (at least one row)."""
    band = max(1, read_pixels // width)
    for b0 in range(y0, y1, band):
        yield b0, min(b0 + band, y1)


def read_region(source: RegionSource, box: tuple[int, int, int, int], read_pixels: int = READ_PIXELS) -> np.ndarray:
    """Region `box` (y0, y1, x0, x1) of the source, read in bands of whole rows of at most `read_pixels`."""
    y0, y1, x0, x1 = box
    if y1 - y0 <= max(1, read_pixels // (x1 - x0)):
        return source.read(y0, y1, x0, x1)
    out = np.empty((source.shape[0], y1 - y0, x1 - x0), np.float32)
    for b0, b1 in row_bands(y0, y1, x1 - x0, read_pixels):
        out[:, b0 - y0:b1 - y0] = source.read(b0, b1, x0, x1)
    return out


def _split(taps: Taps, chunk: int, max_read: int) -> list[list[tuple[int, int]]]:
    """Along one axis: for each chunk [c0, c1) of the output, consecutive ranges [o0, o1) covering it, each
    reading at most `max_read` input samples (a range of one output may read more, if its taps need it)."""
    idx = taps.idx.numpy()
    lo, hi = idx.min(1), idx.max(1) + 1
    parts = []
    for c0 in range(0, taps.n_out, chunk):
        c1 = min(c0 + chunk, taps.n_out)
        ranges, a = [], c0
        while a < c1:
            b, first, last = a + 1, int(lo[a]), int(hi[a])
            while b < c1 and max(last, hi[b]) - min(first, lo[b]) <= max_read:
                first, last, b = min(first, int(lo[b])), max(last, int(hi[b])), b + 1
            ranges.append((a, b))
            a = b
        parts.append(ranges)
    return parts
