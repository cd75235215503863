"""Masks and known regions shared by the mask-driven applications (inpaint, outpaint, harmonize, edit)."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import zarr

from ..errors import ImageError
from ..io.read import load_image
from ..noise import noise_region
from ..pyramid import resize
from ..sample.hooks import Box, Hooks
from ..sample.schedule import alpha_sigma

# Known-region noise is keyed apart from the sampler's own fresh noise (steps 0..T): step -1 - t.
KNOWN_NOISE_STEP = -1


def read_mask(path: Path, size: tuple[int, int] | None = None, *, what: str = "mask") -> torch.Tensor:
    """A mask file as bool (H, W): True where the mean of its channels is at least half of full scale
    (white, >= 128 of 255, = the region to generate); gray levels are thresholded, not blended.
    size: (H, W) the mask must have. An empty or a full mask is refused."""
    if not Path(path).is_file():
        raise ImageError(f"{what} not found: {path}")
    m = torch.from_numpy(load_image(path)).mean(0) >= 0.0
    if size is not None and tuple(m.shape) != tuple(size):
        raise ImageError(f"{what} {path} is {m.shape[1]}x{m.shape[0]} but the image is {size[1]}x{size[0]}")
    if not bool(m.any()):
        raise ImageError(f"{what} {path} is empty (no pixel >= 128): nothing to generate")
    if bool(m.all()):
        raise ImageError(f"{what} {path} covers the whole image (every pixel >= 128): nothing is known")
    return m


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


class Planes:
    """An application's images and masks, read by rectangle: torch tensors in memory, or, once `stored` in a
    run directory, zarr arrays read region by region. Stored planes pickle as their path, not their data, so
    a task sent to a worker process (`--scheduler processes|distributed`, Slurm) carries a few hundred bytes
    instead of every scale's known image and mask (measured: 77 MB per task for a 2048 x 2048 inpaint)."""

    CHUNK = 1024

    def __init__(self, arrays: dict[str, torch.Tensor | None]) -> None:
        self.arrays: dict[str, torch.Tensor] | None = {k: v for k, v in arrays.items() if v is not None}
        self.path: str | None = None
        self._group = None
        self._lock = threading.Lock()

    def region(self, name: str, box: Box) -> torch.Tensor:
        """Rectangle `box` of plane `name` ((..., H, W)), as a tensor."""
        y0, y1, x0, x1 = box
        if self.arrays is not None:
            return self.arrays[name][..., y0:y1, x0:x1]
        return torch.from_numpy(np.ascontiguousarray(self._open()[name][..., y0:y1, x0:x1]))

    def whole(self, name: str) -> torch.Tensor:
        if self.arrays is not None:
            return self.arrays[name]
        return torch.from_numpy(np.ascontiguousarray(self._open()[name][...]))

    def stored(self, path: Path, write: bool) -> Planes:
        """These planes read from the zarr group at `path` (written there first if `write`)."""
        if write:
            if self.arrays is None:
                raise RuntimeError("planes already stored elsewhere cannot be written again")
            group = zarr.open_group(str(path), mode="w")
            for name, a in self.arrays.items():
                data = a.numpy()
                chunks = (*data.shape[:-2], *(min(self.CHUNK, n) for n in data.shape[-2:]))
                group.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype,
                                   fill_value=False if data.dtype == np.bool_ else 0)[...] = data
        out = Planes({})
        out.arrays, out.path = None, str(path)
        return out

    def _open(self):
        with self._lock:
            if self._group is None:
                self._group = zarr.open_group(self.path, mode="r")
            return self._group

    def __getstate__(self) -> dict:
        return {"arrays": self.arrays, "path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.arrays, self.path = state["arrays"], state["path"]
        self._group, self._lock = None, threading.Lock()


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

    known: (C, H, W) the known image on the output canvas (any values inside the hole); hole: bool (H, W)
    True where pixels are generated; sizes: the output sizes per scale (finest first); steps: T.
    exclude_from: optional bool (H, W) mask over the *reference* (same size as it): reference patches
    touching it are dropped from every scale's dataset (inpainting: the reference is the damaged image).
    """

    def __init__(self, known: torch.Tensor, hole: torch.Tensor, sizes: list[tuple[int, int]], steps: int,
                 exclude_from: torch.Tensor | None = None) -> None:
        self.steps = steps
        fill = known[:, ~hole].mean(1)  # the hole's pixels only reach y_s inside m_s; keep them tame
        filled = torch.where(hole[None], fill[:, None, None], known)
        # y_0 is the filled known image itself (also what the finest result takes outside the hole)
        levels = {f"level{s}": resize(filled, size) for s, size in enumerate(sizes)
                  if s > 0 or tuple(size) != tuple(filled.shape[-2:])}
        self.planes = Planes({"level0": filled, **levels, "hole": hole, "exclude": exclude_from,
                              **{f"mask{s}": support_mask(hole, size) for s, size in enumerate(sizes)}})
        self.has_exclude = exclude_from is not None
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
        return patches_touching(support_mask(self.planes.whole("exclude"), size), patch_size)

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


def check_excludable(region, sizes: list[tuple[int, int]], patch_size: int) -> None:
    """Refuse a mask that leaves some scale of the reference without a single whole patch."""
    from ..errors import ConfigError

    for s, size in enumerate(sizes):
        if bool(region.exclude(s, size, patch_size).all()):
            raise ConfigError(f"the mask leaves no whole {patch_size}x{patch_size} patch of the reference at scale {s} "
                              f"({size[1]}x{size[0]}); use a smaller mask, fewer scales or a smaller patch size")
