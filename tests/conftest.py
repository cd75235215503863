"""Shared fixtures: small real images, loaded through sidpipe's own reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sidpipe.io.read import load_image
from sidpipe.pyramid import resize

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
BALLOONS = ROOT / "examples" / "balloons.png"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def balloons() -> np.ndarray:
    return load_image(BALLOONS)


@pytest.fixture(scope="session")
def small_ref(balloons) -> torch.Tensor:
    """balloons.png shrunk to 37 x 49 (odd, non-square): big enough for p = 7..15, small enough for float64."""
    return resize(torch.from_numpy(balloons), (37, 49))


def lowpass_corr(a: np.ndarray, b: np.ndarray, size: int = 12) -> float:
    """Pearson correlation of two images' luminance, each area-averaged down to size x size (layout kept?)."""
    def low(x):
        return resize(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).mean(0, keepdim=True), (size, size))
    return float(np.corrcoef(low(a).flatten().numpy(), low(b).flatten().numpy())[0, 1])


def tiled_result(ref_path: Path, cfg, hooks_for, tmp_path: Path, tile: int = 64) -> np.ndarray:
    """x_{0,0} of an out-of-core run of `cfg` with hooks `hooks_for(plan)` (2 workers), clipped like the output."""
    import zarr

    from sidpipe.plan import make_plan
    from sidpipe.runner import RunOptions, run_out_of_core

    ref = load_image(ref_path)
    plan = make_plan(cfg, ref.shape[-2:])
    out = tmp_path / f"tiled{tile}.tif"
    run_out_of_core(ref_path, ref, out, cfg, plan, RunOptions(out_of_core=True, keep_workdir=True, tile_size=tile,
                                                                workers=2), hooks=hooks_for(plan))
    return np.clip(zarr.open_group(str(out) + ".sidpipe/state.zarr", mode="r")["s0/x0"][...], -1.0, 1.0)
