"""`warm_start`: scales finer than the coarsest start at a noise level from the upsampled coarser result.
It must keep the engine's guarantees (tiled == in memory bit for bit, with and without wrapped
operators), start each finer scale at the step it says, and leave `warm_start: 1` the paper's sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sidpipe.apps import inpaint, tileable
from sidpipe.config import load_config
from sidpipe.errors import ConfigError
from sidpipe.io.read import load_image
from sidpipe.plan import build_denoisers, make_plan
from sidpipe.pyramid import resize
from sidpipe.runner import generate
from sidpipe.sample.c2f import sample_coarse_to_fine
from sidpipe.sample.schedule import alpha_sigma, warm_step

from conftest import BALLOONS, DATA, tiled_result

SMALL = {"patch_size": 7, "steps": 4, "eta": 1.0, "num_scales": 3, "ivf_threshold": 1000, "seed": 5,
         "width": 101, "height": 77}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ref.png"
    Image.open(BALLOONS).convert("RGB").resize((124, 93), Image.Resampling.LANCZOS).save(path)
    return path


def config(**extra):
    return load_config("default", {**SMALL, **extra})


def test_warm_step_and_bad_levels():
    assert warm_step(1.0, 10) is None
    assert warm_step(0.5, 10) == 5 and warm_step(0.3, 10) == 3 and warm_step(0.01, 10) == 1
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ConfigError, match="warm_start"):
            config(warm_start=bad)


def test_each_finer_scale_starts_at_the_warm_step_from_the_noised_upsampled_coarser_result(reference):
    cfg = config(warm_start=0.5)
    ref = torch.from_numpy(load_image(reference))
    plan = make_plan(cfg, tuple(ref.shape[-2:]))
    denoisers = build_denoisers(ref, plan, cfg)
    seen: dict[int, list[dict]] = {}
    sample_coarse_to_fine(denoisers, plan.out_sizes, channels=3, steps=4, eta=1.0, seed=5, warm=2,
                          callback=lambda info: seen.setdefault(info["scale"], []).append(dict(info)))
    assert [i["t"] for i in seen[2]] == [4, 3, 2, 1]  # the coarsest scale: from noise, all T steps
    for s in (1, 0):
        assert [i["t"] for i in seen[s]] == [2, 1]
    # The first step of scale 1 denoised alpha(2) UP(x_{2,0}) + sigma(2) eps: re-run that step by hand.
    from sidpipe.noise import noise_like

    up = resize(seen[2][-1]["x"], plan.out_sizes[1])
    x0 = (1 - 2 / 4) * up + (2 / 4) * noise_like((3, *plan.out_sizes[1]), seed=5, scale=1, step=2)
    a, s = alpha_sigma(2, 4)
    torch.testing.assert_close(seen[1][0]["x_hat"], denoisers[1](x0, a, s), rtol=0, atol=0)


def test_a_level_that_resolves_to_T_is_the_papers_sampler(reference):
    """0.95 of T = 4 steps resolves to t0 = 4 = T: pure noise, as without warm start (warm_step gives 4, not None)."""
    assert warm_step(0.95, 4) == 4
    ref = load_image(reference)
    cold = generate(ref, config())[0]
    np.testing.assert_array_equal(generate(ref, config(warm_start=0.95))[0], cold)
    assert not np.array_equal(generate(ref, config(warm_start=0.5))[0], cold)


def test_warm_inpaint_tiled_equals_in_memory_and_keeps_the_known_pixels(tmp_path):
    """inpaint: tiles away from the hole only get `replace` (replace_tile), the others the warm state."""
    image, mask = DATA / "apps" / "balloons_in_blue_crop.png", DATA / "apps" / "balloons_in_blue_crop_mask.png"
    cfg = load_config("default", {"patch_size": 7, "steps": 4, "eta": 1.0, "num_scales": 3, "ivf_threshold": 5000,
                                  "seed": 3, "warm_start": 0.5})
    ref = load_image(image)
    make_hooks = inpaint.make(image, mask, cfg.steps, cfg.patch_size)
    expected = generate(ref, cfg, plan=make_plan(cfg, ref.shape[-2:]), hooks=make_hooks(make_plan(cfg, ref.shape[-2:])))[0]
    np.testing.assert_array_equal(tiled_result(image, cfg, make_hooks, tmp_path, 64), expected)
    known = np.asarray(Image.open(mask).convert("L")) < 128
    assert np.array_equal(expected[:, known], ref[:, known])


@pytest.mark.parametrize("tile", [64, 80])
def test_warm_start_tiled_equals_in_memory(reference, tmp_path, tile):
    cfg = config(warm_start=0.5)
    expected = generate(load_image(reference), cfg)[0]
    np.testing.assert_array_equal(tiled_result(reference, cfg, lambda plan: None, tmp_path, tile), expected)


def test_warm_start_with_wrapped_operators_tiled_equals_in_memory(tmp_path):
    """tileable: UP of the coarser result reads its halo across the wrap, in memory and by tile alike."""
    cobbles = DATA / "apps" / "cobbles.jpeg"
    cfg = config(warm_start=0.5, width=130, height=100, ivf_threshold=5000)
    ref = load_image(cobbles)
    expected = generate(ref, cfg, plan=make_plan(cfg, ref.shape[-2:]), hooks=tileable.make("both")(None))[0]
    got = tiled_result(cobbles, cfg, tileable.make("both"), tmp_path, 64)
    np.testing.assert_array_equal(got, expected)
    assert tileable.seam_error(got, 1) <= 1.0 and tileable.seam_error(got, 2) <= 1.0
