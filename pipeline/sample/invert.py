"""DDIM inversion of a real image at one scale, and its reconstruction (the official INVERT / RECON).

Applications that start from a real image rather than pure noise (structural analogy inverts the
structure image's coarsest scale; text-guided style inverts the content) walk the image *up* the
schedule with the deterministic step, then walk back down, possibly with another image's denoiser.

How far up is given as a noise level l in (0, 1], the fraction of x_t that is noise,
sigma / (alpha + sigma). Under sidpipe's flow-matching schedule alpha + sigma = 1, so l is sigma itself
and resolves to the step t in 1..T whose sigma(t) = t/T is nearest (ties to the less noisy step), which
makes l mean the same whatever T is.

INVERT(img, D, l): x_1 = alpha(1) img + sigma(1) eps, then for t = 1 .. k-1 the deterministic step
*up*: x_{t+1} = alpha(t+1) D(x_t) + sigma(t+1) eps_hat(x_t). RECON(x_k, D, k): the ordinary
deterministic reverse steps k .. 1 (`sample_scale` with eta = 0 and start_step = k). The starting
noise eps is keyed like every other noise in sidpipe: (seed, scale, INVERT_STEP) on the global grid.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..noise import noise_like
from .c2f import Denoiser, sample_scale
from .schedule import alpha_sigma, ddim_invert_step, noise_level_step

# Noise key `step` of the inversion's starting noise: no sampling step uses a negative one.
INVERT_STEP = -1


@torch.no_grad()
def invert(
    image: torch.Tensor,
    denoise: Denoiser,
    *,
    level: float,
    steps: int,
    seed: int,
    scale: int = 0,
    callback: Callable[[dict], None] | None = None,
) -> tuple[torch.Tensor, int]:
    """INVERT: the clean image (C, H, W) walked up the schedule to the step k of noise level `level`.

    Returns (x_k, k); reconstruct with `reconstruct(x_k, D, k=k, steps=steps)`.
    """
    k = noise_level_step(level, steps)
    a1, s1 = alpha_sigma(1, steps)
    x = a1 * image + s1 * noise_like(tuple(image.shape), seed=seed, scale=scale, step=INVERT_STEP)
    for t in range(1, k):
        alpha, sigma = alpha_sigma(t, steps)
        x_hat = denoise(x, alpha, sigma)
        x = ddim_invert_step(x_hat, (x - alpha * x_hat) / sigma, t, steps)
        if callback is not None:
            callback({"scale": scale, "t": t, "x": x, "x_hat": x_hat, "invert": True})
    return x, k


@torch.no_grad()
def reconstruct(
    x: torch.Tensor,
    denoise: Denoiser,
    *,
    k: int,
    steps: int,
    scale: int = 0,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """RECON: deterministic reverse steps from x_k (as `invert` returned it) down to x_0 with `denoise`,
    which may be another image's denoiser (structural analogy, style transfer)."""
    if not 1 <= k <= steps:
        raise ValueError(f"k must be in 1..{steps}, got {k}")
    return sample_scale(denoise, x, steps=steps, eta=0.0, seed=0, scale=scale, start_step=k, callback=callback)
