"""The flow-matching schedule and one reverse step (paper Eqs. 3-6)."""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def alpha_sigma(t: int, steps: int) -> tuple[float, float]:
    """Flow matching (Lipman et al. 2023): alpha(t) = 1 - t/T, sigma(t) = t/T, in float64."""
    return 1.0 - t / steps, t / steps


def noise_level_step(level: float, steps: int) -> int:
    """The step t in 1..steps whose noise level sigma(t) = t/steps is nearest to `level` (ties: the lower t)."""
    if not 0.0 < level <= 1.0:
        raise ConfigError(f"noise level must be in (0, 1], got {level}")
    return min(range(1, steps + 1), key=lambda t: (abs(alpha_sigma(t, steps)[1] - level), t))


def warm_step(level: float, steps: int) -> int | None:
    """The step finer scales start at under `Config.warm_start` = level (None at 1: from pure noise at T)."""
    return None if level >= 1.0 else noise_level_step(level, steps)


def reverse_step(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    x_tilde: torch.Tensor,
    t: int,
    steps: int,
    *,
    eta: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """x_{t-1} from x_t (Eqs. 4-5): eps_hat from x_hat, the next state from x_tilde.

    Args:
        x: x_t (C, H, W).
        x_hat: the denoiser's estimate D(x_t) (the noise estimate always uses it).
        x_tilde: x_hat after any blend or constraint (equal to x_hat at the coarsest scale).
        t: current step, 1 <= t <= steps.
        eta: c(t-1) = eta * sigma(t-1); 0 is deterministic DDIM.
        noise: fresh N(0, I) of x's shape, needed only when eta > 0 and t > 1.
    """
    a_t, s_t = alpha_sigma(t, steps)
    a_prev, s_prev = alpha_sigma(t - 1, steps)
    eps_hat = (x - a_t * x_hat) / s_t  # Eq. 4 (s_t >= 1/T > 0)
    c = eta * s_prev
    out = a_prev * x_tilde + math.sqrt(max(s_prev**2 - c**2, 0.0)) * eps_hat  # Eq. 5
    if c > 0.0:
        if noise is None:
            raise ValueError("eta > 0 needs fresh noise")
        out = out + c * noise
    return out


def ddim_invert_step(x_hat: torch.Tensor, eps_hat: torch.Tensor, t: int, steps: int) -> torch.Tensor:
    """One DDIM inversion step (eta = 0): x_{t+1} = alpha(t+1) x_hat + sigma(t+1) eps_hat."""
    a_next, s_next = alpha_sigma(t + 1, steps)
    return a_next * x_hat + s_next * eps_hat
