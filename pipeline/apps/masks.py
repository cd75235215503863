"""Masks and known regions shared by the mask-driven applications (inpaint, outpaint, harmonize, edit)."""

from __future__ import annotations

import copy
import math
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import zarr

from ..errors import ImageError
from ..io.lazy import open_image
from ..noise import noise_region
from ..pyramid import resize, resize_plan, resize_region
from ..refstream import READ_PIXELS, ArrayRegions, read_region, row_bands, write_level
from ..sample.hooks import Box, Hooks
from ..sample.schedule import alpha_sigma

# Known-region noise is keyed apart from the sampler's own fresh noise (steps 0..T): step -1 - t.
KNOWN_NOISE_STEP = -1


def read_mask(path: Path, size: tuple[int, int] | None = None, *, what: str = "mask") -> torch.Tensor:
    """A mask file as bool (H, W): True where the mean of its channels is at least half of full scale
    (white, >= 128 of 255, = the region to generate); gray levels are thresholded, not blended.
    size: (H, W) the mask must have. An empty or a full mask is refused. (Whole in memory: `MaskFile`
    reads the same mask by region.)"""
    mask = MaskFile(path, size, what=what)
    try:
        check_mask(mask)
        return torch.from_numpy(read_region(mask, (0, mask.shape[1], 0, mask.shape[2]))[0] > 0.5)
    finally:
        mask.close()


def support_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bool `size`: pixels of the resized image whose resampling taps read any True pixel of `mask`
    (the mask's pyramid level, m_s = maxpool-like: a known pixel there depends on known pixels only)."""
    if tuple(mask.shape) == tuple(size):
        return mask.clone()
    return resize(mask.float()[None], size)[0].abs() > 1e-6


def patches_touching(mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Bool (H - p + 1, W - p + 1): True at the top-left corner of every p x p window with a True pixel."""
    return F.max_pool2d(mask.float()[None, None], patch_size, stride=1)[0, 0] > 0


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Bool mask grown by a disk of `radius` px."""
    if radius <= 0:
        return mask.clone()
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).float()
    grown = F.conv2d(mask.float()[None, None], disk[None, None], padding=radius)[0, 0]
    return grown > 0.5


# --- region sources: what the planes are computed from, read rectangle by rectangle --------------------------
#
# A source has `.shape` (C, H, W) and `.read(y0, y1, x0, x1)` -> float32 (C, y1 - y0, x1 - x0), as the
# reference's sources (`io.lazy.LazyImage`, `refstream.ArrayRegions`) do, so the reference pyramid's writer
# (`refstream.write_level`) computes every plane and its levels chunk by chunk. A mask source reads 1 (True)
# or 0 (False) in one channel.

class ImageFile:
    """An image file read by region (`io.lazy.open_image`: exactly `load_image`'s values), opened on the first
    read and closed by `close` (or when planes made from it are written)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open_image(self.path) as image:  # header only: shape and a clear error for a bad file
            self.shape: tuple[int, int, int] = image.shape
        self._image = None
        self._lock = threading.Lock()

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        with self._lock:
            if self._image is None:
                self._image = open_image(self.path)
            image = self._image
        return image.read(y0, y1, x0, x1)

    def close(self) -> None:
        with self._lock:
            if self._image is not None:
                self._image.close()
                self._image = None


class MaskFile:
    """A mask file read by region as (1, h, w) float32 0/1: 1 where the mean of its channels is >= 0 in [-1, 1]
    (>= 128 of 255; see `read_mask`). size: (H, W) the mask must have (checked from the header)."""

    def __init__(self, path: Path, size: tuple[int, int] | None = None, *, what: str = "mask") -> None:
        if not Path(path).is_file():
            raise ImageError(f"{what} not found: {path}")
        self.path, self.what = Path(path), what
        self.image = ImageFile(path)
        _, h, w = self.image.shape
        if size is not None and (h, w) != tuple(size):
            raise ImageError(f"{what} {path} is {w}x{h} but the image is {size[1]}x{size[0]}")
        self.shape = (1, h, w)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        m = torch.from_numpy(self.image.read(y0, y1, x0, x1)).mean(0) >= 0.0
        return m.numpy().astype(np.float32)[None]

    def close(self) -> None:
        self.image.close()


class BoxMask:
    """A (1, H, W) mask source: 0 inside the rectangle `box` (y0, y1, x0, x1), 1 outside (outpainting's hole)."""

    def __init__(self, size: tuple[int, int], box: Box) -> None:
        self.shape, self.box = (1, *size), box

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        out = np.ones((1, y1 - y0, x1 - x0), np.float32)
        by0, by1, bx0, bx1 = self.box
        a, b, c, d = max(y0, by0), min(y1, by1), max(x0, bx0), min(x1, bx1)
        if a < b and c < d:
            out[:, a - y0:b - y0, c - x0:d - x0] = 0.0
        return out


class Placed:
    """A (C, H, W) canvas source: zeros, with `source` (C, h, w) at (x, y) (outpainting's known image)."""

    def __init__(self, source, size: tuple[int, int], offset: tuple[int, int]) -> None:
        self.source, self.offset = source, offset
        self.shape = (source.shape[0], *size)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        out = np.zeros((self.shape[0], y1 - y0, x1 - x0), np.float32)
        ox, oy = self.offset
        _, h, w = self.source.shape
        a, b, c, d = max(y0, oy), min(y1, oy + h), max(x0, ox), min(x1, ox + w)
        if a < b and c < d:
            out[:, a - y0:b - y0, c - x0:d - x0] = self.source.read(a - oy, b - oy, c - ox, d - ox)
        return out

    def close(self) -> None:
        close(self.source)


class Filled:
    """The known image with its hole filled by the mean of its known pixels (per channel), so the hole's
    values, which only reach a level inside the hole's support, stay tame. The mean is a float64 sum per
    image row, the rows' sums added exactly (`math.fsum`), divided by the count and rounded to float32:
    the same value however the image is read (computed once, on the first read: one pass over the image)."""

    def __init__(self, known, hole) -> None:
        if tuple(known.shape[-2:]) != tuple(hole.shape[-2:]):
            raise ValueError(f"known image {known.shape} and hole {hole.shape} differ in size")
        self.known, self.hole, self.shape = known, hole, known.shape
        self._fill: np.ndarray | None = None
        self._lock = threading.Lock()

    def fill(self) -> np.ndarray:
        with self._lock:
            if self._fill is None:
                channels = self.shape[0]
                sums: list[list[float]] = [[] for _ in range(channels)]
                count = 0
                for y0, y1 in row_bands(0, self.shape[1], self.shape[2]):
                    known = self.hole.read(y0, y1, 0, self.shape[2])[0] < 0.5
                    x = np.where(known[None], self.known.read(y0, y1, 0, self.shape[2]), 0.0)
                    for c in range(channels):
                        sums[c].extend(x[c].astype(np.float64).sum(-1).tolist())
                    count += int(known.sum())
                if count == 0:
                    raise ImageError("the mask covers the whole image: nothing is known")
                self._fill = np.array([math.fsum(s) / count for s in sums], np.float32)
            return self._fill

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        fill = self.fill()
        hole = self.hole.read(y0, y1, x0, x1) > 0.5
        return np.where(hole, fill[:, None, None], self.known.read(y0, y1, x0, x1))

    def close(self) -> None:
        close(self.known)
        close(self.hole)


def close(source) -> None:
    """Release a source's open files, if it has any."""
    if hasattr(source, "close"):
        source.close()


def as_image_source(image):
    """A tensor / array (C, H, W) as a region source; a source as itself."""
    if isinstance(image, (torch.Tensor, np.ndarray)):
        return ArrayRegions(np.asarray(image, dtype=np.float32))
    return image


def as_mask_source(mask):
    """A bool tensor / array (H, W) as a (1, H, W) 0/1 mask source; a source as itself."""
    if isinstance(mask, (torch.Tensor, np.ndarray)):
        return ArrayRegions(np.asarray(mask, dtype=np.float32)[None])
    return mask


def check_mask(mask) -> None:
    """Refuse an empty or a full mask source, scanning it band by band until it has seen both a True and a
    False pixel (an ordinary mask stops at its first band holding both)."""
    seen_true = seen_false = False
    for y0, y1 in row_bands(0, mask.shape[1], mask.shape[2]):
        m = mask.read(y0, y1, 0, mask.shape[2]) > 0.5
        seen_true, seen_false = seen_true or bool(m.any()), seen_false or not bool(m.all())
        if seen_true and seen_false:
            return
    what, path = getattr(mask, "what", "mask"), getattr(mask, "path", "")
    if not seen_true:
        raise ImageError(f"{what} {path} is empty (no pixel >= 128): nothing to generate")
    raise ImageError(f"{what} {path} covers the whole image (every pixel >= 128): nothing is known")


def support_chunk(mask, size: tuple[int, int], box: Box) -> torch.Tensor:
    """Rectangle `box` of `support_mask(mask, size)` for a mask source, read from the input rectangle it needs."""
    in_size = tuple(mask.shape[-2:])
    if in_size == tuple(size):
        return torch.from_numpy(read_region(mask, box)[0] > 0.5)
    rows, cols = resize_plan(in_size, tuple(size))
    iy0, iy1 = rows.support(box[0], box[1])
    ix0, ix1 = cols.support(box[2], box[3])
    x = torch.from_numpy(read_region(mask, (iy0, iy1, ix0, ix1)))
    return resize_region(x, (iy0, ix0), in_size, tuple(size), box)[0].abs() > 1e-6


def check_excludable(mask, sizes: list[tuple[int, int]], patch_size: int, chunk: int | None = None) -> None:
    """Refuse a mask (a source, or a bool (H, W) tensor) over the reference that leaves some scale of it without
    a single whole patch: at each size, the mask's support is computed chunk by chunk (with the p - 1 rows and
    columns a chunk's patches reach) until a patch clear of it is found."""
    from ..errors import ConfigError

    mask = as_mask_source(mask)
    p, chunk = patch_size, chunk or Planes.CHUNK
    full_h, full_w = mask.shape[-2:]
    for s, (h, w) in enumerate(sizes):
        # a chunk of a shrunk scale reads about `chunk` rows and columns of the mask, not chunk x the shrink
        ch, cw = max(1, chunk * h // max(full_h, h)), max(1, chunk * w // max(full_w, w))
        clear = False
        for cy0 in range(0, max(h - p + 1, 0), ch):
            for cx0 in range(0, max(w - p + 1, 0), cw):
                box = (cy0, min(cy0 + ch, h - p + 1) + p - 1, cx0, min(cx0 + cw, w - p + 1) + p - 1)
                if not bool(patches_touching(support_chunk(mask, (h, w), box), p).all()):
                    clear = True
                    break
            if clear:
                break
        if not clear:
            raise ConfigError(f"the mask leaves no whole {p}x{p} patch of the reference at scale {s} "
                              f"({w}x{h}); use a smaller mask, fewer scales or a smaller patch size")


def touching_by_chunk(planes: Planes, name: str, patch_size: int, chunk: int) -> torch.Tensor:
    """`patches_touching(planes.whole(name), patch_size)`, computed chunk by chunk (each chunk's patch corners
    read with the p - 1 rows and columns their patches reach): only the bool result is whole."""
    h, w = planes.shape(name)
    p = patch_size
    out = torch.empty(h - p + 1, w - p + 1, dtype=torch.bool)
    for y0 in range(0, h - p + 1, chunk):
        for x0 in range(0, w - p + 1, chunk):
            y1, x1 = min(y0 + chunk, h - p + 1), min(x0 + chunk, w - p + 1)
            out[y0:y1, x0:x1] = patches_touching(planes.region(name, (y0, y1 + p - 1, x0, x1 + p - 1)), p)
    return out


class StoredPlane:
    """A stored plane (numpy or zarr, (C, H, W) or a bool (H, W) mask) as a float32 (C, h, w) region source."""

    def __init__(self, array) -> None:
        self.array = array
        self.shape = tuple(array.shape) if array.ndim == 3 else (1, *array.shape)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        part = np.asarray(self.array[..., y0:y1, x0:x1])
        return np.ascontiguousarray(part if part.ndim == 3 else part[None], dtype=np.float32)


def _as_mask(block: np.ndarray) -> np.ndarray:
    return block[0] > 0.5


def _as_support(block: np.ndarray) -> np.ndarray:
    return (torch.from_numpy(block[0]).abs() > 1e-6).numpy()  # support_mask's threshold, on float32


class Planes:
    """An application's images and masks, read by rectangle: in memory, or, once `stored` in a run directory,
    zarr arrays read region by region. Stored planes pickle as their path, not their data, so a task sent to
    a worker process (`--scheduler processes|distributed`, Slurm) carries a few hundred bytes instead of
    every scale's known image and mask (measured: 77 MB per task for a 2048 x 2048 inpaint).

    Planes are given as tensors (`Planes({name: tensor})`), or as recipes (`Planes.recipes`), computed by
    `refstream.write_level` one chunk at a time from region sources and from planes written before them:
    the same code fills numpy arrays (in memory, on first use) or the zarr arrays of a run directory
    (`stored`), so both hold the same values bit for bit and storing never holds a whole plane. Recipes:

    - (name, "image", source): the (C, H, W) float32 source, copied;
    - (name, "resize", plane, (h, w)): an earlier float plane resized to (h, w) (`pyramid.resize`);
    - (name, "mask", source): a (1, H, W) 0/1 mask source as a bool (H, W) plane;
    - (name, "support", plane, (h, w)): `support_mask` of an earlier mask plane at (h, w);
    - (name, "alias", plane): the same array as an earlier plane (nothing written twice).
    """

    CHUNK = 1024

    def __init__(self, arrays: dict[str, torch.Tensor | None]) -> None:
        self.arrays: dict[str, torch.Tensor] | None = {k: v for k, v in arrays.items() if v is not None}
        self.recipes: list[tuple] | None = None
        self.aliases: dict[str, str] = {}
        self.path: str | None = None
        self._group = None
        self._lock = threading.Lock()

    @classmethod
    def from_recipes(cls, recipes: list[tuple]) -> Planes:
        out = cls({})
        out.arrays, out.recipes = None, list(recipes)
        out.aliases = {r[0]: r[2] for r in recipes if r[1] == "alias"}
        return out

    def _name(self, name: str) -> str:
        while name in self.aliases:
            name = self.aliases[name]
        return name

    def region(self, name: str, box: Box) -> torch.Tensor:
        """Rectangle `box` of plane `name` ((..., H, W)), as a tensor."""
        y0, y1, x0, x1 = box
        if self.path is None:
            return self._memory()[self._name(name)][..., y0:y1, x0:x1]
        return torch.from_numpy(np.ascontiguousarray(self._open()[self._name(name)][..., y0:y1, x0:x1]))

    def whole(self, name: str) -> torch.Tensor:
        if self.path is None:
            return self._memory()[self._name(name)]
        return torch.from_numpy(np.ascontiguousarray(self._open()[self._name(name)][...]))

    def shape(self, name: str) -> tuple[int, ...]:
        if self.path is None:
            return tuple(self._memory()[self._name(name)].shape)
        return tuple(self._open()[self._name(name)].shape)

    def _memory(self) -> dict[str, torch.Tensor]:
        """The planes in memory (computed from the recipes on the first call)."""
        with self._lock:
            if self.arrays is None:
                arrays: dict[str, np.ndarray] = {}
                self._write(lambda name, shape, dtype: arrays.setdefault(name, np.empty(shape, dtype)))
                self.arrays = {name: torch.from_numpy(a) for name, a in arrays.items()}
            return self.arrays

    def _write(self, create) -> None:
        """Compute every recipe into the arrays `create(name, shape, dtype)` returns, chunk by chunk."""
        made: dict[str, object] = {}
        try:
            for recipe in self.recipes:
                name, kind = recipe[0], recipe[1]
                if kind == "alias":
                    continue
                if kind in ("image", "mask"):
                    source = recipe[2]
                    size = tuple(source.shape[-2:])
                else:
                    source = StoredPlane(made[self._name(recipe[2])])
                    size = tuple(recipe[3])
                if kind in ("image", "resize"):
                    shape, dtype, post = (source.shape[0], *size), np.float32, None
                else:
                    shape, dtype, post = size, np.bool_, _as_support if kind == "support" else _as_mask
                made[name] = create(name, shape, dtype)
                write_level(source, made[name], chunk=self.CHUNK, read_pixels=READ_PIXELS, post=post,
                            skip_zero=kind == "support")
        finally:
            for recipe in self.recipes:
                if recipe[1] in ("image", "mask"):
                    close(recipe[2])

    def stored(self, path: Path, write: bool) -> Planes:
        """These planes read from the zarr group at `path` (written there first if `write`, or if the group
        there lacks one of them: a run directory whose planes were stored in another layout)."""
        if not write and self.recipes is not None:
            write = not self._complete(path)
        if write:
            if self.path is not None:
                raise RuntimeError("planes already stored elsewhere cannot be written again")
            group = zarr.open_group(str(path), mode="w")

            def create(name: str, shape: tuple[int, ...], dtype) -> zarr.Array:
                chunks = (*shape[:-2], *(min(self.CHUNK, n) for n in shape[-2:]))
                return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype,
                                          fill_value=False if dtype == np.bool_ else 0)

            if self.recipes is not None and self.arrays is None:
                self._write(create)
            else:
                for name, a in self.arrays.items():
                    data = a.numpy()
                    create(name, data.shape, data.dtype)[...] = data
            group.attrs["aliases"] = self.aliases
        elif self.recipes is not None:
            for recipe in self.recipes:  # already stored (a resumed run): only release the sources' files
                if recipe[1] in ("image", "mask"):
                    close(recipe[2])
        out = Planes({})
        out.arrays, out.path, out.aliases = None, str(path), dict(self.aliases)
        return out

    def _complete(self, path: Path) -> bool:
        """Whether the zarr group at `path` holds every plane of the recipes, under the same aliases."""
        try:
            group = zarr.open_group(str(path), mode="r")
            names = set(group.array_keys())
            aliases = dict(group.attrs.get("aliases", {}))
        except Exception:  # missing or unreadable: written again
            return False
        return aliases == self.aliases and all(r[0] in names for r in self.recipes if r[1] != "alias")

    def _open(self):
        with self._lock:
            if self._group is None:
                self._group = zarr.open_group(self.path, mode="r")
            return self._group

    def __getstate__(self) -> dict:
        if self.path is None:
            self._memory()  # sources hold open files: a pickled in-memory plane set carries its arrays
        return {"arrays": self.arrays, "path": self.path, "aliases": self.aliases}

    def __setstate__(self, state: dict) -> None:
        self.arrays, self.path, self.aliases = state["arrays"], state["path"], state["aliases"]
        self.recipes, self._group, self._lock = None, None, threading.Lock()


class PlaneHooks:
    """Hooks over `Planes`: `hooks(identity)` makes them; `store` makes the same hooks reading the planes
    from zarr at a path (see `Hooks.store`)."""

    planes: Planes
    identity: dict

    def hooks(self, identity: dict) -> Hooks:
        raise NotImplementedError

    def store(self, path: Path, write: bool) -> Hooks:
        """The same hooks reading their planes from zarr at `path` (see `Hooks.store`)."""
        lazy = copy.copy(self)
        lazy.planes = self.planes.stored(path, write)
        return lazy.hooks(self.identity)


class KnownRegion(PlaneHooks):
    """Hooks that keep a known image outside a hole (RePaint-style, SinDiffusion Eq. 6):

    after every step x_{t-1} <- x_{t-1} in the hole m_s, alpha_{t-1} y_s + sigma_{t-1} eps elsewhere
    (eps keyed by seed, scale and global position), and the finest result takes y exactly outside the
    hole. y_s is the known image resized to each output scale, m_s the hole's support at that scale.

    known: (C, H, W) the known image on the output canvas (any values inside the hole), a tensor or a region
    source (e.g. `ImageFile`); hole: bool (H, W) True where pixels are generated, a tensor or a mask source
    (`MaskFile`, `BoxMask`); sizes: the output sizes per scale (finest first, the first = (H, W)); steps: T.
    exclude_from: optional mask over the *reference* (a tensor or a mask source; `hole` itself for
    inpainting): reference patches touching it are dropped from the dataset of every scale, whose sizes are
    `exclude_sizes` (default `sizes`). Nothing is computed here: the planes (y_s, m_s, the exclusion's
    support per scale) are written chunk by chunk when first used or stored (`Planes`).
    """

    def __init__(self, known, hole, sizes: list[tuple[int, int]], steps: int, exclude_from=None,
                 exclude_sizes: list[tuple[int, int]] | None = None) -> None:
        self.steps = steps
        same_exclude = exclude_from is hole
        known, hole = as_image_source(known), as_mask_source(hole)
        sizes = [tuple(size) for size in sizes]
        if tuple(known.shape[-2:]) != sizes[0]:
            raise ValueError(f"known image {known.shape} is not the finest output size {sizes[0]}")
        # y_0 is the filled known image itself (also what the finest result takes outside the hole)
        recipes = [("level0", "image", Filled(known, hole))]
        recipes += [(f"level{s}", "resize", "level0", size) for s, size in enumerate(sizes) if s > 0]
        recipes += [("hole", "mask", hole), ("mask0", "alias", "hole")]
        recipes += [(f"mask{s}", "support", "hole", size) for s, size in enumerate(sizes) if s > 0]
        self.has_exclude = exclude_from is not None
        if self.has_exclude:
            base = "hole"
            if not same_exclude:
                base = "exclude"
                recipes.append(("exclude", "mask", as_mask_source(exclude_from)))
            full = tuple(as_mask_source(exclude_from).shape[-2:])
            for s, size in enumerate(exclude_sizes or sizes):
                size = tuple(size)
                if size == full:
                    recipes.append((f"exclude{s}", "alias", base))
                elif same_exclude and s < len(sizes) and size == sizes[s]:
                    recipes.append((f"exclude{s}", "alias", f"mask{s}"))
                else:
                    recipes.append((f"exclude{s}", "support", base, size))
        self.planes = Planes.from_recipes(recipes)
        self.identity: dict = {}

    def replace(self, scale: int, t_prev: int, box: Box, x: torch.Tensor, seed: int) -> torch.Tensor:
        y0, y1, x0, x1 = box
        a, s = alpha_sigma(t_prev, self.steps)
        y = self.planes.region(f"level{scale}", box)
        if s > 0.0:
            eps = noise_region(x.shape[0], y0, y1, x0, x1, seed=seed, scale=scale, step=KNOWN_NOISE_STEP - t_prev)
            y = a * y + s * eps
        return torch.where(self.planes.region(f"mask{scale}", box)[None], x, y)

    def paste(self, box: Box, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.planes.region("hole", box)[None], x, self.planes.region("level0", box))

    def active(self, scale: int, box: Box) -> bool:
        return bool(self.planes.region(f"mask{scale}", box).any())

    def exclude(self, scale: int, size: tuple[int, int], patch_size: int) -> torch.Tensor | None:
        if not self.has_exclude:
            return None
        name = f"exclude{scale}"
        if self.planes.shape(name) != tuple(size):
            raise ValueError(f"exclude hook of scale {scale} asked for {size}, its plane is {self.planes.shape(name)}")
        return touching_by_chunk(self.planes, name, patch_size, Planes.CHUNK)

    def hooks(self, identity: dict) -> Hooks:
        self.identity = identity
        return Hooks(replace=self.replace, paste=self.paste, active=self.active,
                     exclude=self.exclude if self.has_exclude else None, identity=identity, store=self.store)


def file_digest(path: Path) -> str:
    """A short content hash of an input file, for a run directory's identity."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))


def gaussian_blur(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """(H, W) float blurred by a Gaussian of std `sigma` cut to a disk of radius 4 sigma (zero outside the
    image), so a pixel farther than 4 sigma from every nonzero pixel stays exactly 0."""
    radius = int(4 * sigma)
    if radius <= 0:
        return mask.float().clone()
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    d2 = r[:, None] ** 2 + r[None, :] ** 2
    g = torch.exp(-0.5 * d2 / sigma**2) * (d2 <= radius**2)
    g = (g / g.sum()).float()
    return F.conv2d(mask.float()[None, None], g[None, None], padding=radius)[0, 0].clamp_min(0.0)


def soft_mask(mask: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """SinDDM's paste-back weight: the mask dilated by a disk of `radius`, blurred (std `sigma`, cut at 4
    sigma), min-max normalised to [0, 1]; exactly 0 beyond radius + 4 sigma from the mask."""
    w = gaussian_blur(dilate(mask, radius), sigma)
    w = w * (w > 1e-6)  # the blur's far tail is float dust: make "untouched" exact
    return (w - w.min()) / (w.max() - w.min()).clamp_min(1e-12)


class Steered(PlaneHooks):
    """Hooks of the jobs that fix or seed scales with a given image and paste a result back softly.

    steps: T. fixed: {scale: image at that scale's output size} — the scale is never denoised (its result is
    the image). sdedit: {scale: (t0, image)} — the scale starts at step t0 from alpha_t0 image + sigma_t0 eps
    (SDEdit; eps keyed by seed, scale, t0). weight, base: optional paste-back, out = w x + (1 - w) base where
    w > 0, exactly base elsewhere. exclude_from: optional bool mask over the reference; its patches are
    dropped from every scale's dataset.
    """

    def __init__(self, steps: int, fixed: dict[int, torch.Tensor] | None = None,
                 sdedit: dict[int, tuple[int, torch.Tensor]] | None = None, weight: torch.Tensor | None = None,
                 base: torch.Tensor | None = None, exclude_from: torch.Tensor | None = None) -> None:
        self.steps = steps
        self.fixed = sorted((fixed or {}).keys())
        self.sdedit = {s: t0 for s, (t0, _) in (sdedit or {}).items()}
        self.has_weight, self.has_exclude = weight is not None, exclude_from is not None
        self.planes = Planes({**{f"fixed{s}": image for s, image in (fixed or {}).items()},
                              **{f"sdedit{s}": image for s, (_, image) in (sdedit or {}).items()},
                              "weight": weight, "base": base, "exclude": exclude_from})
        self.identity: dict = {}

    def start(self, scale: int) -> int:
        if scale in self.fixed:
            return 0
        return self.sdedit[scale] if scale in self.sdedit else self.steps

    def init(self, scale: int, t0: int, box: Box, seed: int) -> torch.Tensor | None:
        y0, y1, x0, x1 = box
        if scale in self.fixed:
            return self.planes.region(f"fixed{scale}", box).clone()
        if scale not in self.sdedit:
            return None
        t0 = self.sdedit[scale]
        image = self.planes.region(f"sdedit{scale}", box)
        a, s = alpha_sigma(t0, self.steps)
        eps = noise_region(image.shape[0], y0, y1, x0, x1, seed=seed, scale=scale, step=t0)
        return a * image + s * eps

    def paste(self, box: Box, x: torch.Tensor) -> torch.Tensor:
        w, base = self.planes.region("weight", box)[None], self.planes.region("base", box)
        return torch.where(w > 0, w * x + (1 - w) * base, base)

    def exclude(self, scale: int, size: tuple[int, int], patch_size: int) -> torch.Tensor | None:
        return patches_touching(support_mask(self.planes.whole("exclude"), size), patch_size)

    def hooks(self, identity: dict) -> Hooks:
        self.identity = identity
        return Hooks(start=self.start, init=self.init,
                     paste=self.paste if self.has_weight else None,
                     exclude=self.exclude if self.has_exclude else None, identity=identity, store=self.store)
