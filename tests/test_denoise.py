"""The closed-form denoiser: fast path == Eq. 2 written literally, and its limiting cases."""

from __future__ import annotations

import math

import pytest
import torch

from sidpipe.denoise import PatchDenoiser, naive_patch_denoise
from sidpipe.patches import fold, unfold, window_radius

STEPS = [(0.0, 1.0), (0.3, 0.7), (0.6, 0.4), (0.9, 0.1)]


def noisy(ref: torch.Tensor, alpha: float, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return alpha * ref.flip(-1) + sigma * torch.randn(ref.shape, generator=g)


@pytest.mark.parametrize("rho,p", [(0.2, 9), (math.inf, 7), (1.0, 11)])
@pytest.mark.parametrize("alpha,sigma", STEPS)
def test_fast_fp32_equals_naive(small_ref, rho, p, alpha, sigma):
    x = noisy(small_ref, alpha, sigma)
    naive = PatchDenoiser(small_ref, patch_size=p, rho=rho, impl="naive")(x.double(), alpha, sigma)
    fast = PatchDenoiser(small_ref, patch_size=p, rho=rho, precision="fp32", query_block=8)(x, alpha, sigma)
    assert fast.dtype == torch.float32 and fast.shape == x.shape
    rel = (fast.double() - naive).norm() / naive.norm()  # norm-wise relative error
    assert rel < 1e-5, rel
    assert (fast.double() - naive).abs().max() < 1e-4


@pytest.mark.parametrize("alpha,sigma", STEPS)
def test_fast_bf16_close_to_naive(small_ref, alpha, sigma):
    """bf16 products, stated tolerance on [-1, 1] images: mean |err| < 2e-3, 99th percentile < 0.025,
    max < 0.3 (the max is reached where two far-apart patches are nearly tied; bf16 may pick the other)."""
    x = noisy(small_ref, alpha, sigma, seed=1)
    naive = PatchDenoiser(small_ref, patch_size=9, impl="naive")(x.double(), alpha, sigma)
    fast = PatchDenoiser(small_ref, patch_size=9, precision="bf16")(x, alpha, sigma)
    err = (fast.double() - naive).abs().flatten()
    assert err.mean() < 2e-3 and err.quantile(0.99) < 0.025 and err.max() < 0.3, (err.mean(), err.max())


def test_query_block_does_not_change_result(small_ref):
    x = noisy(small_ref, 0.7, 0.3)
    a = PatchDenoiser(small_ref, patch_size=9, precision="fp32", query_block=4)(x, 0.7, 0.3)
    b = PatchDenoiser(small_ref, patch_size=9, precision="fp32", query_block=64)(x, 0.7, 0.3)
    assert (a - b).abs().max() < 1e-4


def test_small_sigma_returns_nearest_patch(small_ref):
    keys = unfold(small_ref, 7)
    g = torch.Generator().manual_seed(3)
    picks = torch.randint(0, keys.shape[0], (20,), generator=g)
    queries = keys[picks] + 0.01 * torch.randn(20, keys.shape[1], generator=g)
    d2 = torch.cdist(queries.double(), keys.double())
    nearest = keys[d2.argmin(1)]
    for impl in ("naive", "fast"):
        den = PatchDenoiser(small_ref, patch_size=7, rho=math.inf, impl=impl, precision="fp32")
        out = den.denoise_patches(queries, 1.0 - 1e-4, 1e-3).float()
        assert torch.allclose(out, nearest, atol=1e-4), impl


def test_alpha_zero_returns_mean_patch(small_ref):
    keys = unfold(small_ref, 7)
    q = torch.randn(5, keys.shape[1])
    for impl in ("naive", "fast"):
        den = PatchDenoiser(small_ref, patch_size=7, rho=math.inf, impl=impl, precision="fp32")
        out = den.denoise_patches(q, 0.0, 1.0).float()
        assert torch.allclose(out, keys.mean(0).expand(5, -1), atol=1e-6), impl


def test_naive_patch_denoise_is_a_softmax_average():
    """Direct check of Eq. 2 on 3 one-dimensional 'patches'."""
    keys = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    x = torch.tensor([[0.8]], dtype=torch.float64)
    a, s = 0.5, 0.6
    w = torch.exp(-((x - a * keys.T) ** 2) / (2 * s * s))
    expected = (w @ keys) / w.sum()
    assert torch.allclose(naive_patch_denoise(x, keys, a, s), expected)


def test_uniform_fold_is_plain_average(small_ref):
    p = 5
    c, h, w = small_ref.shape
    est = torch.randn(c, p, p, h - p + 1, w - p + 1, dtype=torch.float64)
    out = fold(est, h, w, math.inf, window_radius(p, math.inf, 3.0))
    # Plain average of all patch estimates covering each pixel, by explicit loops on a few pixels.
    for y, xx in [(0, 0), (3, 7), (h // 2, w // 2), (h - 1, w - 1), (h - 2, 1)]:
        vals = [est[:, y - i, xx - j, i, j] for i in range(max(0, y - p + 1), min(y, h - p) + 1)
                for j in range(max(0, xx - p + 1), min(xx, w - p) + 1)]
        assert torch.allclose(out[:, y, xx], torch.stack(vals).mean(0))


def test_gaussian_fold_weights_interior_and_border(small_ref):
    """rho = 0.2, p = 15: interior pixels use the truncated window, border-band pixels the full one."""
    p, rho = 15, 0.2
    r = window_radius(p, rho, 3.0)
    assert r == 4
    c, h, w = small_ref.shape
    est = torch.randn(c, p, p, h - p + 1, w - p + 1, dtype=torch.float64)
    out = fold(est, h, w, rho, r)
    u = torch.linspace(-1, 1, p, dtype=torch.float64)
    g1 = torch.exp(-0.5 * (u / rho) ** 2)
    for y, xx, full in [(1, 1, True), (h // 2, w // 2, False), (20, 2, True), (10, 12, False)]:
        num, den = 0.0, 0.0
        for i in range(max(0, y - p + 1), min(y, h - p) + 1):
            for j in range(max(0, xx - p + 1), min(xx, w - p) + 1):
                ky, kx = y - i, xx - j
                if not full and (abs(ky - p // 2) > r or abs(kx - p // 2) > r):
                    continue
                g = g1[ky] * g1[kx]
                num = num + g * est[:, ky, kx, i, j]
                den = den + g
        assert torch.allclose(out[:, y, xx], num / den), (y, xx)
