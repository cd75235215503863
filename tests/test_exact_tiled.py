"""Tiled == in memory bit for bit with the exact denoiser at every scale, in fp32 and bf16 (the exact
denoiser's GEMMs run on whole fixed query blocks; a tile must not change a query's arithmetic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from sidpipe.config import load_config
from sidpipe.denoise import PatchDenoiser
from sidpipe.io.read import load_image
from sidpipe.plan import make_plan
from sidpipe.runner import RunOptions, generate, run_out_of_core

from conftest import BALLOONS

# 2 scales, exact everywhere, an odd non-square output of 2x2 tiles of 64.
OVERRIDES = {"patch_size": 7, "steps": 3, "eta": 1.0, "num_scales": 2, "index": "exact",
             "width": 101, "height": 77, "seed": 3}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ref.png"
    Image.open(BALLOONS).convert("RGB").resize((101, 77), Image.Resampling.LANCZOS).save(path)
    return path


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_exact_tiled_equals_in_memory(reference, tmp_path, precision):
    cfg = load_config("default", {**OVERRIDES, "precision": precision})
    ref = load_image(reference)
    plan = make_plan(cfg, ref.shape[-2:])
    assert plan.precision == precision
    whole = generate(ref, cfg, plan=plan)[0]
    out = tmp_path / "out.tif"
    run_out_of_core(reference, ref, out, cfg, plan,
                    RunOptions(out_of_core=True, keep_workdir=True, tile_size=64, workers=2))
    state = zarr.open_group(str(out) + ".sidpipe/state.zarr", mode="r")
    tiled = np.clip(state["s0/x0"][...], -1.0, 1.0)
    assert np.isfinite(whole).all() and whole.std() > 0.05  # a real image, not a constant
    np.testing.assert_array_equal(tiled, whole)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_exact_denoiser_ignores_thread_count(precision):
    """The cause: MKL/oneDNN GEMMs round differently on 1 and 2 intra-op threads (a tile task gets
    cores / workers threads). A rectangle on 1 thread == the whole image on 2 (and the reverse)."""
    g = torch.Generator().manual_seed(0)
    ref, x = torch.rand(3, 48, 64, generator=g), torch.randn(3, 77, 101, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        d = PatchDenoiser(ref, patch_size=7, precision=precision, query_block=32)
        whole = d(x, 0.7, 0.5)
        torch.set_num_threads(1)
        d1 = PatchDenoiser(ref, patch_size=7, precision=precision, query_block=32)  # built on 1 thread
        assert torch.equal(d1(x, 0.7, 0.5), whole)
        box = (0, 64, 64, 101)
        y0, y1, x0, x1 = d1.support((77, 101), box)
        part = d1.denoise_box(x[:, y0:y1, x0:x1], (y0, x0), (77, 101), box, 0.7, 0.5)
        assert torch.equal(part, whole[:, 0:64, 64:101])
    finally:
        torch.set_num_threads(threads)
