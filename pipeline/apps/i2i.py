"""Image-to-image / style transfer (SinDDM Fig. 10; SinDiffusion Eq. 7): CONTENT redrawn with STYLE's patches.

Two modes, as `../notes/applications.md` F describes the sources:

- `sdedit` (SinDDM): the content, optionally histogram-matched to the style, is the result of every scale
  coarser than `at_scale` (fixed, never denoised); scale `at_scale` starts from alpha_k content + sigma_k eps
  at the step k of noise level `level` and is denoised with the style's patches; finer scales start from
  noise and blend with the scale below, as in unconditional sampling. SinDDM injects at its finest scale
  (`at_scale` 0) at a low level; the default here is the second-finest scale (1) at level 0.5: the
  content's layout and colours are kept by the fixed coarser scales, the two finest scales are redrawn
  from the style. Measured (starry night style, balloons content, 96x72, 4 scales, p = 7): low-pass
  correlation with the content / nearest-patch distance to the style (the content's own: 0.201) 0.95 /
  0.116 at scale 1; 0.75 / 0.085 at scale 2; 0.67 / 0.058 at the coarsest (level 0.5 each).
- `ilvr` (SinDiffusion's low-pass guidance): the coarsest scale starts as in `sdedit`; at every finer scale
  the guide of the two-scale blend is the content at the scale below instead of the sampled result:
  x_hat - UP(DOWN(x_hat)) + UP(DOWN(content)), so the output's low frequencies are the content's.

The output has the content's size. Noise is keyed as everywhere (seed, scale, step, position), the hooks
work on global rectangles, so the tiled sampler gives the in-memory result bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..io.read import load_image
from ..plan import Plan
from ..pyramid import resize
from ..sample.hooks import Box, Hooks
from ..sample.schedule import noise_level_step
from .analogy import match_channels
from .masks import Steered, as_tensor, file_digest

MODES = ("sdedit", "ilvr")


def match_histogram(content: np.ndarray, style: np.ndarray) -> np.ndarray:
    """Each channel of `content` mapped so that its value distribution is `style`'s (exact quantile mapping)."""
    out = np.empty_like(content)
    for c in range(content.shape[0]):
        src = content[c].ravel()
        order = np.argsort(src, kind="stable")
        ranks = np.empty_like(order)
        ranks[order] = np.arange(src.size)
        ref = np.sort(style[c].ravel())
        q = (ranks + 0.5) / src.size * ref.size - 0.5
        out[c] = np.interp(q, np.arange(ref.size), ref).reshape(content[c].shape)
    return out


class Guided(Steered):
    """`Steered` plus the ILVR guide: the content at scale s + 1 instead of the sampled result."""

    def __init__(self, steps: int, levels: dict[int, torch.Tensor], **kwargs) -> None:
        super().__init__(steps, **kwargs)
        self.levels = levels

    def guide(self, scale: int, crect: Box) -> torch.Tensor:
        y0, y1, x0, x1 = crect
        return self.levels[scale + 1][:, y0:y1, x0:x1].clone()

    def hooks(self, identity: dict) -> Hooks:
        base = super().hooks(identity)
        return Hooks(start=base.start, init=base.init, guide=self.guide, identity=identity)


def make(content_path: Path, style_path: Path, channels: int, steps: int, *, mode: str = "sdedit",
         level: float = 0.5, at_scale: int | None = None, match_hist: bool = False) -> Callable[..., Hooks]:
    """Hooks of `sidpipe i2i STYLE CONTENT` for a plan whose reference is STYLE and output CONTENT's size.

    In latent mode (`--codec vae`) the runner passes `encode` (`runner.Latent.encode_image`): the content
    (histogram-matched first, in pixels, if asked) is encoded like the reference, and its latent and the
    latent's resized levels take the content's place at every scale."""
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    k = noise_level_step(level, steps)
    if not Path(content_path).is_file():
        raise ConfigError(f"content image not found: {content_path}")

    def build(plan: Plan, encode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Hooks:
        coarsest = plan.num_scales - 1
        if mode == "ilvr" and at_scale is not None:
            raise ConfigError("--at-scale is for --mode sdedit (ilvr starts at the coarsest scale)")
        start = min(1, coarsest) if at_scale is None else at_scale
        if not 0 <= start <= coarsest:
            raise ConfigError(f"--at-scale must be in 0..{coarsest} (0 = finest) for this plan, got {at_scale}")
        content = load_image(content_path)
        if match_hist:
            content = match_histogram(content, load_image(style_path))
        content = match_channels(as_tensor(content), channels) if encode is None else encode(as_tensor(content))
        if tuple(content.shape[-2:]) != plan.out_sizes[0]:
            raise ConfigError("i2i keeps the content's size: do not give --size")
        levels = {s: resize(content, size) for s, size in enumerate(plan.out_sizes)}
        identity = {"app": "i2i", "mode": mode, "content": file_digest(content_path), "start": k,
                    "at_scale": start, "match_hist": match_hist}
        if mode == "sdedit":
            fixed = {s: levels[s] for s in range(start + 1, coarsest + 1)}
            return Steered(steps, fixed=fixed, sdedit={start: (k, levels[start])}).hooks(identity)
        return Guided(steps, levels, sdedit={coarsest: (k, levels[coarsest])}).hooks(identity)

    return build
