"""Structural analogy (seed paper Fig. 7; GPNN): the layout of one image drawn with the patches of another.

As the official code does it: the output has the structure image's aspect at the style image's short
side (or `--short-side`); at the coarsest scale the structure, resized to the coarsest output size, is
inverted (`sample.invert`) with a denoiser over its *own* patches up to noise level l, then the
sampler walks it back down (deterministic at eta = 0: the official RECON) with the *style*
reference's denoiser; the finer scales start from noise with the style's denoisers and blend with the
scale below, as in unconditional sampling. So only the coarsest scale, which is small at any output
size, is inverted; the tiled sampler takes the finer scales unchanged.

Deviation, said in docs/method.md: the official pixel config uses T = 50 at the coarsest scale and
T = 10 above; sidpipe has one T for every scale (the preset's 10), so the inversion has 10 steps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..config import Config
from ..errors import ConfigError, ImageError
from ..io.read import image_size, load_image
from ..plan import Plan, make_denoiser
from ..pyramid import resize
from ..sample.hooks import Box, Hooks
from ..sample.invert import invert
from ..sample.schedule import noise_level_step
from .masks import as_tensor, file_digest


def output_size(structure: Path, style: Path, short_side: int | None) -> tuple[int, int]:
    """(width, height): the structure's aspect with the short side of the style image (or `short_side`)."""
    for path, what in ((structure, "structure"), (style, "style")):
        if not Path(path).is_file():
            raise ImageError(f"{what} image not found: {path}")
    sw, sh = image_size(structure)
    if short_side is None:
        short_side = min(image_size(style))
    if short_side < 1:
        raise ConfigError(f"--short-side must be a positive number of pixels, got {short_side}")
    if sw <= sh:
        return short_side, max(1, round(sh * short_side / sw))
    return max(1, round(sw * short_side / sh)), short_side


def match_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """A gray structure drawn in an RGB style is repeated to 3 channels; an RGB one in a gray style averaged."""
    if image.shape[0] == channels:
        return image
    if image.shape[0] == 1:
        return image.expand(channels, -1, -1).clone()
    return image.mean(0, keepdim=True)


class Analogy:
    """The coarsest scale's start: the structure inverted to step k with its own denoiser (cached per seed)."""

    def __init__(self, structure: torch.Tensor, cfg: Config, plan: Plan, level: float) -> None:
        self.coarsest = plan.num_scales - 1
        self.structure = structure  # (C, h, w) at the coarsest output size
        self.cfg, self.plan, self.level = cfg, plan, level
        self.k = noise_level_step(level, cfg.steps)
        self._inverted: dict[int, torch.Tensor] = {}

    def start(self, scale: int) -> int:
        return self.k if scale == self.coarsest else self.cfg.steps

    def init(self, scale: int, t0: int, box: Box, seed: int) -> torch.Tensor | None:
        if scale != self.coarsest:
            return None
        if seed not in self._inverted:
            own = make_denoiser(self.structure, "exact", self.cfg, self.plan, scale=scale)
            x, k = invert(self.structure.to(self.plan.device), own, level=self.level, steps=self.cfg.steps,
                          seed=seed, scale=scale)
            assert k == self.k
            self._inverted[seed] = x.cpu()
        y0, y1, x0, x1 = box
        return self._inverted[seed][:, y0:y1, x0:x1].clone()

    def __getstate__(self) -> dict:  # workers of another process invert again (deterministic) rather than ship it
        return {**self.__dict__, "_inverted": {}}


def make(structure_path: Path, channels: int, cfg: Config, level: float) -> Callable[..., Hooks]:
    """Hooks of `sidpipe analogy STRUCTURE STYLE` for a plan whose reference is STYLE (with `channels`).

    In latent mode (`--codec vae`) the runner passes `encode` (`runner.Latent.encode_image`): the structure,
    resized to the output's pixel size, is encoded like the reference, and its latent resized to the
    coarsest scale is what is inverted (the latent pyramid, like the reference's, is built on the encoded
    latent)."""
    noise_level_step(level, cfg.steps)  # the range check, before any compute

    def build(plan: Plan, encode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Hooks:
        coarsest = plan.num_scales - 1
        image = as_tensor(load_image(structure_path))
        image = match_channels(image, channels) if encode is None else encode(image)
        structure = resize(image, plan.out_sizes[coarsest])
        h, w = structure.shape[-2:]
        if min(h, w) < cfg.patch_size:
            raise ConfigError(f"the coarsest scale ({w}x{h}) is smaller than a {cfg.patch_size}-px patch")
        a = Analogy(structure, cfg, plan, level)
        return Hooks(start=a.start, init=a.init,
                     identity={"app": "analogy", "structure": file_digest(structure_path), "level": level})

    return build
