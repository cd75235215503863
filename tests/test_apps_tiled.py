"""tileable and symmetric out of core: tiled == in memory bit for bit with several tile sizes (so halos cross
the wrap and the mirror axis between tiles), each application's defining property on the tiled result,
wrapped halos drawing the in-memory wrap's noise, and a kill -9 mid-pass resuming to the same bytes.
Mask-driven applications: their hooks' images and masks stored in the run directory and read back by tile."""

from __future__ import annotations

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
from typer.testing import CliRunner

from sidpipe.apps import symmetric, tileable
from sidpipe.cli import app
from sidpipe.config import load_config
from sidpipe.io.read import load_image
from sidpipe.noise import noise_like, noise_region
from sidpipe.plan import make_plan
from sidpipe.pyramid import circular
from sidpipe.runner import RunOptions, generate, run_out_of_core

from conftest import DATA, tiled_result

APPS = DATA / "apps"
COBBLES = APPS / "cobbles.jpeg"                 # 181 x 181 texture whose own wrap has a natural seam
IMAGE = APPS / "balloons_in_blue_crop.png"      # 96 x 96
INPAINT_IMAGE, INPAINT_MASK = IMAGE, APPS / "balloons_in_blue_crop_mask.png"  # its flat cyan box, x 20-39, y 26-50
# Small but complete: 3 scales, stochastic steps (keyed noise), IVF at the finest scale(s).
SMALL = {"patch_size": 7, "steps": 3, "eta": 1.0, "num_scales": 3, "ivf_threshold": 5000, "seed": 3}
# CLI equivalent (the app presets' p = 15, T = 25 are too slow for a test)
CLI_SMALL = ["--patch-size", "7", "--steps", "3", "--eta", "1", "--set", "num_scales=3", "--set", "ivf_threshold=5000",
             "--seed", "3", "--quiet"]
runner = CliRunner()


def config(**extra):
    return load_config("default", {**SMALL, **extra})


def in_memory(ref_path: Path, cfg, make_hooks) -> np.ndarray:
    ref = load_image(ref_path)
    plan = make_plan(cfg, ref.shape[-2:])
    return generate(ref, cfg, plan=plan, hooks=make_hooks(plan))[0]


# 130 x 100 in tiles of 64: every scale but the coarsest (33 x 25) has several tiles, and the edge tiles'
# halos (denoiser, BLUR, UP) cross the wrap.
TILEABLE = {"width": 130, "height": 100}


@pytest.fixture(scope="module")
def tileable_both() -> np.ndarray:
    return in_memory(COBBLES, config(**TILEABLE), tileable.make("both"))


@pytest.mark.parametrize("tile", [64, pytest.param(96, marks=pytest.mark.slow), pytest.param(128, marks=pytest.mark.slow)])
def test_tileable_tiled_equals_in_memory_and_has_no_seam(tileable_both, tmp_path, tile):
    got = tiled_result(COBBLES, config(**TILEABLE), tileable.make("both"), tmp_path, tile)
    np.testing.assert_array_equal(got, tileable_both)
    ref = load_image(COBBLES)
    for axis in (1, 2):
        own = tileable.seam_error(ref, axis)
        assert tileable.seam_error(got, axis) <= min(1.0, 0.25 * own), (tileable.seam_error(got, axis), own)


@pytest.mark.slow
def test_tileable_one_direction_tiled_equals_in_memory(tmp_path):
    """Only the rows wrap: the columns keep the clamped (non-periodic) operators, in the same run."""
    cfg = config(**TILEABLE)
    expected = in_memory(COBBLES, cfg, tileable.make("vertical"))
    got = tiled_result(COBBLES, cfg, tileable.make("vertical"), tmp_path, 80)
    np.testing.assert_array_equal(got, expected)
    assert tileable.seam_error(got, 1) <= 1.0 and tileable.seam_error(got, 2) > 3.0


def test_wrapped_halo_reads_the_noise_of_the_in_memory_wrap():
    """x_T across the wrap: a halo reaching past the edges reads, at each wrapped position, the noise keyed
    by the position it repeats, i.e. the circularly padded whole-image noise the in-memory sampler denoises."""
    h, w, p = 37, 50, 7
    whole = noise_like((3, h, w), seed=3, scale=1, step=3)
    padded = torch.nn.functional.pad(whole[None], (p, p, p, p), mode="circular")[0]
    for y0, y1, x0, x1 in [(-p, 20, -p, 30), (20, h + p, 40, w + p), (-p, h + p, -p, w + p)]:
        got = circular(lambda r: noise_region(3, *r, seed=3, scale=1, step=3), (y0, y1, x0, x1), (h, w),
                       (True, True))
        assert torch.equal(got, padded[:, y0 + p:y1 + p, x0 + p:x1 + p])


@pytest.mark.parametrize("axis,keep,tile,kept", [("horizontal", "left", 64, 6),
                                                 pytest.param("vertical", "top", 80, 2, marks=pytest.mark.slow),
                                                 pytest.param("horizontal", "right", 96, 4, marks=pytest.mark.slow)])
def test_symmetric_tiled_equals_in_memory_and_its_mirror(tmp_path, axis, keep, tile, kept):
    """151 x 130 (odd width: a centre column) in tiles of 64 or 80: the mirror axis and the mirrored rectangles
    cut across tiles at the two finest scales. Only the tiles with a kept pixel are denoised (counted)."""
    cfg = config(width=151, height=130)
    make_hooks = symmetric.make(axis, keep)
    expected = in_memory(IMAGE, cfg, make_hooks)
    ref = load_image(IMAGE)
    plan = make_plan(cfg, ref.shape[-2:])
    out, events = tmp_path / "out.tif", []
    run_out_of_core(IMAGE, ref, out, cfg, plan, RunOptions(out_of_core=True, keep_workdir=True, tile_size=tile,
                    workers=2), hooks=make_hooks(plan), progress=events.append)
    got = np.clip(zarr.open_group(str(out) + ".sidpipe/state.zarr", mode="r")["s0/x0"][...], -1.0, 1.0)
    np.testing.assert_array_equal(got, expected)
    dim = 2 if axis == "horizontal" else 1
    assert np.abs(got - np.flip(got, dim)).max() == 0
    # finest scale: 3 x 3 tiles of 64 (kept: columns < 76, the first two tile columns), 2 x 2 of 80 (kept:
    # rows < 65, the first tile row) or of 96 (kept: columns >= 75, both tile columns); a tile without a
    # kept pixel is not denoised: its raw estimate is never read
    per_step = [sum(1 for e in events if e.get("event") == "tile" and e["scale"] == 0 and e["pass"] == "A"
                    and e["t"] == t) for t in range(1, cfg.steps + 1)]
    assert per_step == [kept] * cfg.steps, per_step


def test_tiled_commands_write_their_property(tmp_path):
    """Through the commands: outputs larger than --tile-size run out of core (no refusal any more)."""
    out = tmp_path / "sym.png"
    res = runner.invoke(app, ["symmetric", str(IMAGE), "--out", str(out), "--size", "131x90", "--tile-size", "64",
                              *CLI_SMALL])
    assert res.exit_code == 0, res.output
    x = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert x.shape == (90, 131, 3) and np.abs(x - x[:, ::-1]).max() == 0   # the 8-bit output
    assert not Path(str(out) + ".sidpipe").exists()                         # tiled, and cleaned up
    out = tmp_path / "tile.png"
    res = runner.invoke(app, ["tileable", str(COBBLES), "--out", str(out), "--size", "130x100", "--tile-size", "64",
                              "--workdir", str(tmp_path / "wd"), "--keep-workdir", *CLI_SMALL])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "wd" / "state.zarr").exists()                        # it did run out of core
    y = load_image(out)
    for axis in (1, 2):
        assert tileable.seam_error(y, axis) <= 1.0


def finished_tiles(run_dir: Path) -> int:
    markers = run_dir / "markers"
    for _ in range(10):  # the runner removes a finished pass's markers: retry a walk that races it
        try:
            return sum(1 for p in markers.rglob("*") if p.is_file()) if markers.exists() else 0
        except FileNotFoundError:
            continue
    return 0


def sidpipe(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sidpipe.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("command,ref,extra", [
    ("tileable", COBBLES, ["--direction", "both", "--size", "130x100"]),
    ("symmetric", IMAGE, ["--axis", "horizontal", "--size", "130x100"]),
    # a 192 x 192 image (the crop 2 x 2) whose hook planes are read back from hooks.zarr after the resume
    ("inpaint", "big.png", ["--mask", "big_mask.png"]),
])
def test_kill9_mid_pass_then_resume_is_byte_identical(tmp_path, command, ref, extra):
    if command == "inpaint":
        crop, m = np.asarray(Image.open(INPAINT_IMAGE).convert("RGB")), np.asarray(Image.open(INPAINT_MASK).convert("L"))
        Image.fromarray(np.tile(crop, (2, 2, 1))).save(tmp_path / "big.png")
        Image.fromarray(np.tile(m, (2, 2))).save(tmp_path / "big_mask.png")
        ref, extra = tmp_path / ref, [extra[0], str(tmp_path / extra[1])]
    args = [command, str(ref), *extra, "--tile-size", "64", "--workers", "2", *CLI_SMALL]
    full = tmp_path / "full.tif"
    proc = sidpipe(*args, "--out", str(full))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    out = tmp_path / "resumed.tif"
    run_dir = Path(str(out) + ".sidpipe")
    proc = sidpipe(*args, "--out", str(out))
    # markers: reference 1, indexes, then the passes of the coarse scales; 14 is inside the second scale's
    # passes (the first tiled one), where a pass is half done
    deadline = time.time() + 300
    while finished_tiles(run_dir) < 14 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    proc = sidpipe(*args, "--out", str(out))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert out.read_bytes() == full.read_bytes()
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(full))


# Mask-driven applications: their planes (known image, masks per scale) stored in the run directory -------



def test_stored_hooks_pickle_as_a_path_and_give_the_same_values(tmp_path):
    """`Hooks.store`: the hooks read their planes from zarr by region; pickled (what a worker process gets
    with every task) they are a path, not the arrays, and every hook gives the in-memory values bit for bit."""
    import pickle

    from sidpipe.apps import harmonize, inpaint
    from sidpipe.tiles import tile_boxes

    cfg = config()
    ref = load_image(INPAINT_IMAGE)
    plan = make_plan(cfg, ref.shape[-2:])
    jobs = [inpaint.make(INPAINT_IMAGE, INPAINT_MASK, cfg.steps, cfg.patch_size),
            harmonize.make(INPAINT_IMAGE, INPAINT_MASK, None, cfg.steps, cfg.patch_size, 0.5)]
    for k, make_hooks in enumerate(jobs):
        hooks = make_hooks(plan)
        stored = hooks.store(tmp_path / f"hooks{k}.zarr", True)
        small, big = len(pickle.dumps(stored)), len(pickle.dumps(hooks))
        assert small < 3000 and big > 50 * small, (small, big)
        lazy = pickle.loads(pickle.dumps(stored))  # as a worker process has it
        assert lazy.identity == hooks.identity
        x = torch.randn(3, *plan.out_sizes[0], generator=torch.Generator().manual_seed(0))
        for s, size in enumerate(plan.out_sizes):
            mine, theirs = hooks.exclude(s, plan.ref_sizes[s], 7), lazy.exclude(s, plan.ref_sizes[s], 7)
            assert torch.equal(mine, theirs)
            assert hooks.start_step(s, cfg.steps) == lazy.start_step(s, cfg.steps)
            for box in tile_boxes(*size, 40):
                xs = x[:, :size[0], :size[1]][:, box[0]:box[1], box[2]:box[3]]
                if hooks.replace is not None:
                    assert torch.equal(hooks.replace(s, 1, box, xs, 3), lazy.replace(s, 1, box, xs, 3))
                    assert hooks.active(s, box) == lazy.active(s, box)
                if hooks.init is not None:
                    t0 = hooks.start_step(s, cfg.steps)
                    a, b = hooks.init(s, t0, box, 3), lazy.init(s, t0, box, 3)
                    assert (a is None and b is None) or torch.equal(a, b)
                if s == 0 and hooks.paste is not None:
                    assert torch.equal(hooks.paste(box, xs), lazy.paste(box, xs))


def test_inpaint_with_worker_processes_equals_in_memory(tmp_path):
    """Worker processes get the stored hooks (a path) and read the planes from the run directory."""
    from sidpipe.apps import inpaint

    cfg = config()
    make_hooks = inpaint.make(INPAINT_IMAGE, INPAINT_MASK, cfg.steps, cfg.patch_size)
    expected = in_memory(INPAINT_IMAGE, cfg, make_hooks)
    ref = load_image(INPAINT_IMAGE)
    plan = make_plan(cfg, ref.shape[-2:])
    out = tmp_path / "out.tif"
    run_out_of_core(INPAINT_IMAGE, ref, out, cfg, plan, RunOptions(out_of_core=True, keep_workdir=True, tile_size=64,
                    workers=2, scheduler="processes"), hooks=make_hooks(plan))
    run_dir = Path(str(out) + ".sidpipe")
    got = np.clip(zarr.open_group(str(run_dir / "state.zarr"), mode="r")["s0/x0"][...], -1.0, 1.0)
    np.testing.assert_array_equal(got, expected)
    stored = zarr.open_group(str(run_dir / "hooks.zarr"), mode="r")
    # every scale's known image and the hole's support; the hole itself is mask0 and (the reference being the
    # image) every scale's exclusion: stored once, the other names are aliases
    assert set(stored.array_keys()) == {"level0", "level1", "level2", "hole", "mask1", "mask2"}
    assert stored.attrs["aliases"] == {"mask0": "hole", "exclude0": "hole", "exclude1": "mask1", "exclude2": "mask2"}
