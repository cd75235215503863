"""Single-scale (Alg. 1) and coarse-to-fine (Alg. 2) sampling with the closed-form denoiser."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..noise import noise_like
from ..pyramid import blur, resize, resize_wrap
from .hooks import Hooks, start_step
from .schedule import alpha_sigma, reverse_step

Denoiser = Callable[[torch.Tensor, float, float], torch.Tensor]


def _periodic(denoise: Denoiser, wrap: tuple[bool, bool]) -> Denoiser:
    """The denoiser of a periodic image: x circularly padded by more than a patch along the wrapped
    dimensions, denoised, cropped back; every pixel then sees the patches across the wrap as inside."""

    def periodic(x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        h, w = x.shape[-2:]
        p = getattr(denoise, "p", 15)
        py, px = (p if wrap[0] else 0), (p if wrap[1] else 0)
        padded = torch.nn.functional.pad(x[None], (px, px, py, py), mode="circular")[0]
        return denoise(padded, alpha, sigma)[:, py:py + h, px:px + w]

    return periodic


def _wrap_blur(wrap: tuple[bool, bool]) -> Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]:
    def blur_wrap(x: torch.Tensor, coarse_size: tuple[int, int]) -> torch.Tensor:
        return resize_wrap(resize_wrap(x, coarse_size, wrap), tuple(x.shape[-2:]), wrap)

    return blur_wrap


def upsample(x: torch.Tensor, size: tuple[int, int], wrap: tuple[bool, bool]) -> torch.Tensor:
    """UP of the two-scale blend (and of a warm start): `resize`, wrap-aware along periodic dimensions."""
    return resize_wrap(x, size, wrap) if any(wrap) else resize(x, size)


def _finish(hooks: Hooks, whole: tuple[int, int, int, int], x: torch.Tensor) -> torch.Tensor:
    return hooks.finish(whole, lambda r: x[:, r[0]:r[1], r[2]:r[3]])


def warm_state(up: torch.Tensor, noise: torch.Tensor, t0: int, steps: int) -> torch.Tensor:
    """x_{s,t0} of a warm-started scale: the upsampled coarser result UP(x_{s+1,0}) noised to step t0,
    alpha(t0) UP + sigma(t0) eps with eps keyed by (seed, scale, t0) (elementwise: the same bits on any tile)."""
    a, sd = alpha_sigma(t0, steps)
    return a * up + sd * noise


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
    hooks: Hooks | None = None,
) -> torch.Tensor:
    """Run the reverse process at one scale from x = x_{start_step} down to x_0 (Alg. 1 / Alg. 2 inner loop).

    Args:
        denoise: image denoiser D(x, alpha, sigma) for this scale.
        x: (C, H, W) the state at `start_step` (noise at T).
        coarse: x_{s+1,0}, the finished coarser scale; when given, x_hat is blended with it
            (TWOSCALEBLEND) after every denoiser call except the last unless blend_last_step.
        seed, scale: key of the fresh noise (used when eta > 0).
        callback: called after each step with {"scale", "t", "x", "x_hat"}.
        hooks: an application's transform / guide / replace / paste / finish hooks (see `hooks.Hooks`),
            called with the whole image as their box.
    """
    t0 = steps if start_step is None else start_step
    h, w = x.shape[-2:]
    whole = (0, h, 0, w)
    if coarse is not None and hooks is not None and hooks.guide is not None:
        guide = hooks.guide(scale, (0, coarse.shape[-2], 0, coarse.shape[-1]))
        coarse = coarse if guide is None else guide
    wrap = (False, False) if hooks is None else hooks.wrap
    if any(wrap):
        denoise, blur_ = _periodic(denoise, wrap), _wrap_blur(wrap)
    else:
        blur_ = blur
    up = None if coarse is None else upsample(coarse, tuple(x.shape[-2:]), wrap)
    coarse_size = None if coarse is None else tuple(coarse.shape[-2:])
    for t in range(t0, 0, -1):
        alpha, sigma = alpha_sigma(t, steps)
        # Denoise (Eq. 3, IMGDENOISE).
        x_hat = denoise(x, alpha, sigma)
        if hooks is not None and hooks.transform is not None:
            raw = x_hat
            x_hat = hooks.transform(scale, t, whole, lambda r: raw[:, r[0]:r[1], r[2]:r[3]])
        # Two-scale blend: high frequencies of x_hat, low frequencies of the coarser result.
        x_tilde = x_hat
        if up is not None and (t > 1 or blend_last_step):
            x_tilde = x_hat - blur_(x_hat, coarse_size) + up
        # Step to t - 1 (Eqs. 4-5), fresh noise keyed by (seed, scale, t - 1).
        need_noise = eta > 0.0 and t > 1
        noise = noise_like(tuple(x.shape), seed=seed, scale=scale, step=t - 1) if need_noise else None
        x = reverse_step(x, x_hat, x_tilde, t, steps, eta=eta, noise=noise)
        if hooks is not None and hooks.replace is not None:
            x = hooks.replace(scale, t - 1, whole, x, seed)
        if hooks is not None and hooks.paste is not None and scale == 0 and t == 1:
            x = hooks.paste(whole, x)
        if hooks is not None and hooks.finish is not None and scale == 0 and t == 1:
            x = _finish(hooks, whole, x)
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
    hooks: Hooks | None = None,
    warm: int | None = None,
) -> torch.Tensor:
    """Alg. 2: sample the coarsest scale from noise, then each finer scale guided by the one below.

    Args:
        denoisers: one image denoiser per scale, index 0 = finest.
        sizes: output size (h, w) per scale, index 0 = finest (the requested output size).
        channels: C of the output.
        seed: every scale starts from noise keyed by (seed, scale, T).
        hooks: an application's hooks (`hooks.Hooks`); None = plain unconditional sampling.
        warm: a warm start (`Config.warm_start`, `schedule.warm_step`): every scale finer than the coarsest
            whose start the application does not set starts at step `warm` from `warm_state`.

    Returns:
        x_{0,0}: (C, H, W) float32 at sizes[0].
    """
    if len(denoisers) != len(sizes):
        raise ValueError("one denoiser per scale is needed")
    coarse = None
    for s in range(len(sizes) - 1, -1, -1):
        h, w = sizes[s]
        t0 = start_step(hooks, s, steps, None if coarse is None else warm)
        x = None if hooks is None or hooks.init is None else hooks.init(s, t0, (0, h, 0, w), seed)
        if x is None and coarse is not None and warm is not None and t0 == warm < steps:
            x = warm_state(upsample(coarse, (h, w), (False, False) if hooks is None else hooks.wrap),
                           noise_like((channels, h, w), seed=seed, scale=s, step=t0), t0, steps)
        if x is None:
            if t0 != steps:
                raise ValueError(f"scale {s} starts at step {t0} but no init hook gives its state")
            x = noise_like((channels, h, w), seed=seed, scale=s, step=steps)
        if t0 == 0:  # a fixed scale: its state is the result
            coarse = hooks.paste((0, h, 0, w), x) if s == 0 and hooks.paste is not None else x
            if s == 0 and hooks.finish is not None:
                coarse = _finish(hooks, (0, h, 0, w), coarse)
            continue
        coarse = sample_scale(
            denoisers[s], x, steps=steps, eta=eta, seed=seed, scale=s, coarse=coarse,
            blend_last_step=blend_last_step, callback=callback, start_step=t0, hooks=hooks,
        )
    return coarse
