"""Single-scale (Alg. 1) and coarse-to-fine (Alg. 2) sampling with the closed-form denoiser."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..noise import noise_like
from ..pyramid import blur, resize
from .schedule import alpha_sigma, reverse_step

Denoiser = Callable[[torch.Tensor, float, float], torch.Tensor]


@torch.no_grad()
def sample_scale(
    denoise: Denoiser,
    x: torch.Tensor,
    *,
    steps: int,
    eta: float,
    seed: int,
    scale: int = 0,
    coarse: torch.Tensor | None = None,
    blend_last_step: bool = False,
    start_step: int | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Run the reverse process at one scale from x = x_{start_step} down to x_0 (Alg. 1 / Alg. 2 inner loop).

    Args:
        denoise: image denoiser D(x, alpha, sigma) for this scale.
        x: (C, H, W) the state at `start_step` (noise at T).
        coarse: x_{s+1,0}, the finished coarser scale; when given, x_hat is blended with it
            (TWOSCALEBLEND) after every denoiser call except the last unless blend_last_step.
        seed, scale: key of the fresh noise (used when eta > 0).
        callback: called after each step with {"scale", "t", "x", "x_hat"}.
    """
    t0 = steps if start_step is None else start_step
    up = None if coarse is None else resize(coarse, tuple(x.shape[-2:]))
    coarse_size = None if coarse is None else tuple(coarse.shape[-2:])
    for t in range(t0, 0, -1):
        alpha, sigma = alpha_sigma(t, steps)
        # Denoise (Eq. 3, IMGDENOISE).
        x_hat = denoise(x, alpha, sigma)
        # Two-scale blend: high frequencies of x_hat, low frequencies of the coarser result.
        x_tilde = x_hat
        if up is not None and (t > 1 or blend_last_step):
            x_tilde = x_hat - blur(x_hat, coarse_size) + up
        # Step to t - 1 (Eqs. 4-5), fresh noise keyed by (seed, scale, t - 1).
        need_noise = eta > 0.0 and t > 1
        noise = noise_like(tuple(x.shape), seed=seed, scale=scale, step=t - 1) if need_noise else None
        x = reverse_step(x, x_hat, x_tilde, t, steps, eta=eta, noise=noise)
        if callback is not None:
            callback({"scale": scale, "t": t, "x": x, "x_hat": x_hat})
    return x


@torch.no_grad()
def sample_coarse_to_fine(
    denoisers: Sequence[Denoiser],
    sizes: Sequence[tuple[int, int]],
    *,
    channels: int,
    steps: int,
    eta: float,
    seed: int,
    blend_last_step: bool = False,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Alg. 2: sample the coarsest scale from noise, then each finer scale guided by the one below.

    Args:
        denoisers: one image denoiser per scale, index 0 = finest.
        sizes: output size (h, w) per scale, index 0 = finest (the requested output size).
        channels: C of the output.
        seed: every scale starts from noise keyed by (seed, scale, T).

    Returns:
        x_{0,0}: (C, H, W) float32 at sizes[0].
    """
    if len(denoisers) != len(sizes):
        raise ValueError("one denoiser per scale is needed")
    coarse = None
    for s in range(len(sizes) - 1, -1, -1):
        h, w = sizes[s]
        x = noise_like((channels, h, w), seed=seed, scale=s, step=steps)
        coarse = sample_scale(
            denoisers[s], x, steps=steps, eta=eta, seed=seed, scale=s, coarse=coarse,
            blend_last_step=blend_last_step, callback=callback,
        )
    return coarse
