"""Schedule, noise keying, pyramid sizes and the coarse-to-fine sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sidpipe.config import Config
from sidpipe.errors import ConfigError
from sidpipe.noise import noise_like, noise_region
from sidpipe.pyramid import auto_num_scales, scale_sizes
from sidpipe.runner import generate, make_plan
from sidpipe.sample.schedule import alpha_sigma, reverse_step

FAST = dict(patch_size=7, steps=3, precision="fp32", query_block=16)


def test_flow_schedule_endpoints():
    assert alpha_sigma(0, 10) == (1.0, 0.0)
    assert alpha_sigma(10, 10) == (0.0, 1.0)
    a, s = alpha_sigma(3, 10)
    assert abs(a + s - 1.0) < 1e-12


def test_reverse_step_ddim_is_deterministic_and_exact_at_t1():
    x = torch.randn(3, 8, 8)
    x_hat = torch.randn(3, 8, 8)
    out = reverse_step(x, x_hat, x_hat, 1, 10, eta=0.0, noise=None)
    assert torch.equal(out, x_hat)  # alpha(0) = 1, sigma(0) = 0
    # eta = 1: no eps_hat term, all fresh noise.
    n = torch.randn(3, 8, 8)
    out = reverse_step(x, x_hat, x_hat, 5, 10, eta=1.0, noise=n)
    assert torch.allclose(out, 0.6 * x_hat + 0.4 * n)


def test_noise_regions_are_cut_from_one_plane():
    whole = noise_like((3, 300, 520), seed=4, scale=1, step=2)
    part = noise_region(3, 250, 300, 100, 517, seed=4, scale=1, step=2)
    assert torch.equal(whole[:, 250:300, 100:517], part)
    assert not torch.equal(whole, noise_like((3, 300, 520), seed=4, scale=1, step=3))


def test_auto_scales_match_paper_for_balloons():
    assert auto_num_scales(186, 248, 15, 1.7, 2.0) == 4
    assert scale_sizes(186, 248, 4, 2.0) == [(186, 248), (93, 124), (46, 62), (23, 31)]
    assert auto_num_scales(30, 40, 15, 1.7, 2.0) == 1


@pytest.mark.parametrize("size", [(37, 53), (61, 40), (90, 150)])  # odd, non-square, retargeted
def test_coarse_to_fine_shapes(balloons, size):
    ref = balloons[:, ::2, ::2].copy()  # 93 x 124
    h, w = size
    cfg = Config(**FAST, num_scales=3, width=w, height=h)
    plan = make_plan(cfg, ref.shape[-2:])
    assert plan.out_sizes[0] == (h, w)
    assert all(min(s) >= cfg.patch_size for s in plan.out_sizes)
    (img,) = generate(ref, cfg, plan=plan)
    assert img.shape == (3, h, w) and img.dtype == np.float32
    assert np.isfinite(img).all() and img.min() >= -1 and img.max() <= 1


def test_seeds_reproduce_and_differ(balloons):
    ref = balloons[:, ::3, ::3].copy()
    cfg = Config(**FAST, num_scales=2, eta=0.5)
    a1, a2 = generate(ref, cfg.replace(samples=2))
    (b1,) = generate(ref, cfg)
    (c2,) = generate(ref, cfg.replace(seed=1))
    assert np.array_equal(a1, b1)  # sample 0 does not depend on how many samples are drawn
    assert np.array_equal(a2, c2)  # sample k uses seed + k
    assert np.abs(a1 - a2).mean() > 0.05


def test_sample_is_a_reshuffle_not_a_copy(balloons):
    """Output patches come from the reference (close NN distance) but the image is not the reference."""
    from sidpipe.metrics import nn_patch_distance

    ref = balloons[:, ::2, ::2].copy()
    cfg = Config(patch_size=11, steps=5, precision="fp32", num_scales=3)
    (img,) = generate(ref, cfg)
    noise = np.clip(np.random.default_rng(0).normal(0, 0.5, ref.shape), -1, 1).astype(np.float32)
    d_sample = nn_patch_distance(img, ref, query_stride=2)
    d_noise = nn_patch_distance(noise, ref, query_stride=2)
    assert d_sample < 0.25 * d_noise, (d_sample, d_noise)
    assert np.abs(img - ref).mean() > 0.1  # not the reference itself


def test_index_policy_per_scale():
    """auto: exact below ivf_threshold patches, IVF above; index_scales overrides scale by scale."""
    ref_hw = (186, 248)  # scales 186x248 (40248 patches), 93x124 (8690), 46x62 (1536), 23x31 (153)
    plan = make_plan(Config(index="auto", ivf_threshold=5000), ref_hw)
    assert plan.patches == [40248, 8690, 1536, 153]
    assert plan.indexes == ["ivf", "ivf", "exact", "exact"]
    assert make_plan(Config(index="auto", ivf_threshold=10_000), ref_hw).indexes == ["ivf", "exact", "exact", "exact"]
    assert make_plan(Config(index="exact"), ref_hw).indexes == ["exact"] * 4
    plan = make_plan(Config(index="exact", index_scales="ivf, auto", ivf_threshold=100), ref_hw)
    assert plan.indexes == ["ivf", "ivf", "exact", "exact"]
    assert make_plan(Config(dataset_stride=2), ref_hw).patches[0] == 117 * 86
    described = make_plan(Config(index="ivf"), ref_hw).describe()
    assert "ivf index (PCA128,IVF201,Flat,RFlat) over 40248 patches" in described  # refined on a CPU
    assert "ivf index (IVF3,Flat) over 153 patches" in described  # too few patches to train a PCA
    assert "ivf index (IVF201,Flat) over 40248" in make_plan(Config(index="ivf", refine_pca=0), ref_hw).describe()


def test_ivf_sampling_reproduces_and_stays_on_the_reference(balloons):
    from sidpipe.metrics import nn_patch_distance

    ref = balloons[:, ::2, ::2].copy()
    cfg = Config(patch_size=11, steps=5, num_scales=3, index="ivf", nprobe=2)
    (a,) = generate(ref, cfg)
    (b,) = generate(ref, cfg)
    assert np.array_equal(a, b)
    noise = np.clip(np.random.default_rng(0).normal(0, 0.5, ref.shape), -1, 1).astype(np.float32)
    assert nn_patch_distance(a, ref, query_stride=2) < 0.25 * nn_patch_distance(noise, ref, query_stride=2)
    assert np.abs(a - ref).mean() > 0.1


def test_index_memory_policy_and_auto_query_stride():
    """index_memory picks PCA 64, then PCA 32, then PCA + PQ, for references too big for IVF-Flat (the budget
    covers the build's 1.5x growth); query_stride 0 resolves per
    scale by output size and never exceeds the fold window; an explicit stride applies to every scale."""
    from sidpipe.plan import ivf_params, resolve_query_strides

    cfg = Config(index_memory=1.0, refine_pca=0)
    assert (ivf_params(cfg, 40_000, 675).pca, ivf_params(cfg, 40_000, 675).pq) == (0, 0)
    assert (ivf_params(cfg, 200_000, 675).pca, ivf_params(cfg, 200_000, 675).pq) == (0, 0)  # 0.54 GB x 1.5 fits
    assert (ivf_params(cfg, 300_000, 675).pca, ivf_params(cfg, 300_000, 675).pq) == (64, 0)  # 0.81 GB x 1.5 not
    assert (ivf_params(cfg, 2_000_000, 675).pca, ivf_params(cfg, 2_000_000, 675).pq) == (64, 0)
    assert (ivf_params(cfg, 3_000_000, 675).pca, ivf_params(cfg, 3_000_000, 675).pq) == (32, 0)
    assert (ivf_params(cfg, 11_000_000, 675).pca, ivf_params(cfg, 11_000_000, 675).pq) == (64, 32)
    # the default 3 GiB: the 11M-patch eifeel level gets PCA 32 (1.5 GB), its 681k level stays IVF-Flat (1.8 GB)
    assert ivf_params(Config(), 11_184_716, 675).factory(675, 11_184_716) == "PCA32,IVF3344,Flat"
    assert ivf_params(Config(), 681_326, 675).pca == 0
    assert ivf_params(cfg.replace(pca=32), 11_000_000, 675).pq == 0  # the user's choice wins
    assert ivf_params(cfg, 11_000_000, 675).factory(675, 11_000_000) == "PCA64,IVF3317,PQ32x8"
    # refine_pca: on a CPU, where the full vectors and the PCA codes fit together, a refined index.
    fast = cfg.replace(refine_pca=128)
    assert ivf_params(fast, 40_000, 675).factory(675, 40_000) == "PCA128,IVF200,Flat,RFlat"
    assert not ivf_params(fast, 40_000, 675, "cuda").refine  # GPU: plain IVF-Flat
    assert not ivf_params(fast, 40_000, 100).refine           # nothing to reduce
    assert not ivf_params(fast, 2_000, 675).refine            # too few points to train a 675-dim PCA
    assert ivf_params(fast, 250_000, 675).factory(675, 250_000) == "IVF500,Flat"  # Flat fits, Flat + codes not
    assert ivf_params(fast, 2_000_000, 675).factory(675, 2_000_000) == "PCA64,IVF1414,Flat"  # as without
    assert not ivf_params(fast.replace(pca=32), 40_000, 675).refine  # the user's choice wins
    sizes = [(4096, 4096), (700, 700), (300, 300), (100, 100)]
    assert resolve_query_strides(Config(), sizes) == (4, 2, 1, 1)
    assert resolve_query_strides(Config(patch_size=5, rho=0.2), sizes)[0] == 3  # fold window 3 px wide
    assert resolve_query_strides(Config(query_stride=3), sizes) == (3, 3, 3, 3)
    with pytest.raises(ConfigError, match="leave pixels uncovered"):
        resolve_query_strides(Config(query_stride=10), sizes)
    plan = make_plan(Config(width=2048, height=2048), (186, 248))
    assert plan.query_strides[0] == 4 and plan.query_strides[-1] == 1
    assert "query stride 4" in plan.describe()
