"""The out-of-core pipeline: tiled == in-memory whatever the tiling or scheduler, resume after kill -9 or
SIGTERM == an uninterrupted run, streamed BigTIFF output, refused resume of a different job."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from PIL import Image

from sidpipe.config import load_config
from sidpipe.io.read import load_image
from sidpipe.plan import make_plan
from sidpipe.runner import RunOptions, generate, run_out_of_core

from conftest import BALLOONS

# Small but complete: 3 scales, IVF at the two finest (forced by the threshold), exact at the coarsest,
# stochastic steps (eta = 1) so the keyed noise is exercised, an odd non-square output of 2x2 tiles of 64.
OVERRIDES = {"patch_size": 7, "steps": 3, "eta": 1.0, "num_scales": 3, "ivf_threshold": 1000,
             "width": 101, "height": 77, "seed": 5}
CLI_ARGS = ["--patch-size", "7", "--steps", "3", "--eta", "1", "--set", "num_scales=3", "--set", "ivf_threshold=1000",
            "--size", "203x141", "--seed", "5", "--tile-size", "64"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """balloons.png at 93 x 124 (odd height), as a file: the pipeline fingerprints its input."""
    path = tmp_path_factory.mktemp("ref") / "ref.png"
    Image.open(BALLOONS).convert("RGB").resize((124, 93), Image.Resampling.LANCZOS).save(path)
    return path


@pytest.fixture(scope="module")
def in_memory(reference) -> np.ndarray:
    cfg = load_config("default", OVERRIDES)
    ref = load_image(reference)
    return generate(ref, cfg, plan=make_plan(cfg, ref.shape[-2:]))[0]


def tiled(reference: Path, tmp_path: Path, **options) -> np.ndarray:
    cfg = load_config("default", OVERRIDES)
    ref = load_image(reference)
    plan = make_plan(cfg, ref.shape[-2:])
    out = tmp_path / "out.tif"
    threads = torch.get_num_threads()
    run_out_of_core(reference, ref, out, cfg, plan, RunOptions(out_of_core=True, keep_workdir=True, **options))
    assert torch.get_num_threads() == threads  # per-task thread settings do not leak into the process
    state = zarr.open_group(str(out) + ".sidpipe/state.zarr", mode="r")
    return np.clip(state["s0/x0"][...], -1.0, 1.0)


@pytest.mark.parametrize("tile,workers", [(64, 2), (80, 1), (128, 2)])
def test_tiled_threads_equal_in_memory(reference, in_memory, tmp_path, tile, workers):
    np.testing.assert_array_equal(tiled(reference, tmp_path, tile_size=tile, workers=workers), in_memory)


def test_tiled_distributed_equals_in_memory(reference, in_memory, tmp_path):
    got = tiled(reference, tmp_path, tile_size=64, workers=2, scheduler="distributed")
    np.testing.assert_array_equal(got, in_memory)


def sidpipe(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sidpipe.cli", "run", *args, "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished_tiles(run_dir: Path) -> int:
    # The runner removes a pass's tile markers when it marks the pass done: a walk racing it may find a
    # folder gone (or the whole run directory, at the end); count what is there and retry on a race.
    markers = run_dir / "markers"
    for _ in range(10):
        try:
            return sum(1 for p in markers.rglob("*") if p.is_file()) if markers.exists() else 0
        except FileNotFoundError:
            continue
    return 0


def interrupt(args: list[str], run_dir: Path, sig: int, after: int) -> subprocess.CompletedProcess:
    proc = sidpipe(*args)
    deadline = time.time() + 120
    while finished_tiles(run_dir) < after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def uninterrupted(reference, tmp_path_factory) -> np.ndarray:
    out = tmp_path_factory.mktemp("full") / "full.tif"
    proc = sidpipe(str(reference), "--out", str(out), *CLI_ARGS)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert not Path(str(out) + ".sidpipe").exists()  # removed after success
    return tifffile.imread(out)


def test_kill9_then_resume_is_byte_identical(reference, uninterrupted, tmp_path):
    out = tmp_path / "resumed.tif"
    run_dir = Path(str(out) + ".sidpipe")
    args = [str(reference), "--out", str(out), *CLI_ARGS]
    # Marker files of a run: reference 1, indexes 2, 7 per scale (6 passes + the scale) = 24, plus the tiles of
    # the pass in progress; at most 20 leaves scale 0's last passes and the output still to do.
    res = interrupt(args, run_dir, signal.SIGKILL, after=random.Random(os.getpid()).randint(3, 20))
    assert res.returncode == -signal.SIGKILL
    assert not out.exists() and not list(tmp_path.glob(".*part*"))  # nothing that looks finished
    proc = sidpipe(*args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    np.testing.assert_array_equal(tifffile.imread(out), uninterrupted)


def test_sigterm_checkpoints_and_exits_nonzero(reference, uninterrupted, tmp_path):
    out = tmp_path / "term.tif"
    run_dir = Path(str(out) + ".sidpipe")
    args = [str(reference), "--out", str(out), *CLI_ARGS]
    start = time.time()
    res = interrupt(args, run_dir, signal.SIGTERM, after=10)
    assert res.returncode != 0 and "SIGTERM" in res.stderr and "Traceback" not in res.stderr
    assert time.time() - start < 120 and not out.exists()
    # A different job in the same run directory is refused, with the differing key named.
    bad = sidpipe(*args, "--set", "nprobe=2")
    _, err = bad.communicate(timeout=120)
    assert bad.returncode == 1 and "config.nprobe" in err and "--overwrite" in err
    proc = sidpipe(*args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    np.testing.assert_array_equal(tifffile.imread(out), uninterrupted)


def test_estimate_bounds_the_run_directory(reference, tmp_path):
    """The plan's disk figure is an upper bound of what the run directory holds (without being absurd)."""
    from sidpipe.tiles import estimate

    tiled(reference, tmp_path, tile_size=64, workers=1)
    cfg = load_config("default", OVERRIDES)
    plan = make_plan(cfg, load_image(reference).shape[-2:])
    used = sum(f.stat().st_size for f in (tmp_path / "out.tif.sidpipe").rglob("*") if f.is_file())
    est = estimate(plan, 64, 3)
    assert est.tiles == [4, 1, 1]  # 101x77 in 64-px tiles; the coarser scales fit one tile
    assert used <= est.disk <= 4 * used
