"""Masks and known regions shared by the mask-driven applications (inpaint, outpaint, harmonize, edit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

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


class KnownRegion:
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
        self.hole = hole
        fill = known[:, ~hole].mean(1)  # the hole's pixels only reach y_s inside m_s; keep them tame
        filled = torch.where(hole[None], fill[:, None, None], known)
        self.known = filled
        self.levels = [filled.clone() if tuple(s) == tuple(filled.shape[-2:]) else resize(filled, s) for s in sizes]
        self.masks = [support_mask(hole, s) for s in sizes]
        self.exclude_from = exclude_from

    def replace(self, scale: int, t_prev: int, box: Box, x: torch.Tensor, seed: int) -> torch.Tensor:
        y0, y1, x0, x1 = box
        a, s = alpha_sigma(t_prev, self.steps)
        y = self.levels[scale][:, y0:y1, x0:x1]
        if s > 0.0:
            eps = noise_region(x.shape[0], y0, y1, x0, x1, seed=seed, scale=scale, step=KNOWN_NOISE_STEP - t_prev)
            y = a * y + s * eps
        return torch.where(self.masks[scale][y0:y1, x0:x1][None], x, y)

    def paste(self, box: Box, x: torch.Tensor) -> torch.Tensor:
        y0, y1, x0, x1 = box
        return torch.where(self.hole[y0:y1, x0:x1][None], x, self.known[:, y0:y1, x0:x1])

    def active(self, scale: int, box: Box) -> bool:
        y0, y1, x0, x1 = box
        return bool(self.masks[scale][y0:y1, x0:x1].any())

    def exclude(self, scale: int, size: tuple[int, int], patch_size: int) -> torch.Tensor | None:
        if self.exclude_from is None:
            return None
        return patches_touching(support_mask(self.exclude_from, size), patch_size)

    def hooks(self, identity: dict) -> Hooks:
        return Hooks(replace=self.replace, paste=self.paste, active=self.active,
                     exclude=self.exclude if self.exclude_from is not None else None, identity=identity)


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


class Steered:
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
        self.steps, self.fixed, self.sdedit = steps, fixed or {}, sdedit or {}
        self.weight, self.base, self.exclude_from = weight, base, exclude_from

    def start(self, scale: int) -> int:
        if scale in self.fixed:
            return 0
        return self.sdedit[scale][0] if scale in self.sdedit else self.steps

    def init(self, scale: int, t0: int, box: Box, seed: int) -> torch.Tensor | None:
        y0, y1, x0, x1 = box
        if scale in self.fixed:
            return self.fixed[scale][:, y0:y1, x0:x1].clone()
        if scale not in self.sdedit:
            return None
        t0, image = self.sdedit[scale]
        a, s = alpha_sigma(t0, self.steps)
        eps = noise_region(image.shape[0], y0, y1, x0, x1, seed=seed, scale=scale, step=t0)
        return a * image[:, y0:y1, x0:x1] + s * eps

    def paste(self, box: Box, x: torch.Tensor) -> torch.Tensor:
        y0, y1, x0, x1 = box
        w, base = self.weight[y0:y1, x0:x1][None], self.base[:, y0:y1, x0:x1]
        return torch.where(w > 0, w * x + (1 - w) * base, base)

    def exclude(self, scale: int, size: tuple[int, int], patch_size: int) -> torch.Tensor | None:
        return patches_touching(support_mask(self.exclude_from, size), patch_size)

    def hooks(self, identity: dict) -> Hooks:
        return Hooks(start=self.start, init=self.init,
                     paste=self.paste if self.weight is not None else None,
                     exclude=self.exclude if self.exclude_from is not None else None, identity=identity)


def check_excludable(region, sizes: list[tuple[int, int]], patch_size: int) -> None:
    """Refuse a mask that leaves some scale of the reference without a single whole patch."""
    from ..errors import ConfigError

    for s, size in enumerate(sizes):
        if bool(region.exclude(s, size, patch_size).all()):
            raise ConfigError(f"the mask leaves no whole {patch_size}x{patch_size} patch of the reference at scale {s} "
                              f"({size[1]}x{size[0]}); use a smaller mask, fewer scales or a smaller patch size")
