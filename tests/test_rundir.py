"""One run directory, one writer (an OS lock that dies with its holder), a full disk that ends cleanly and
resumes, and progress lines with an ETA when stderr is not a terminal (a batch job's log)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from sidpipe.errors import ConfigError
from sidpipe.store import LOCK_NAME, RunDir

from conftest import BALLOONS

# 3 scales (IVF at the two finest), stochastic steps, 12 + 4 + 1 tiles of 64 px (68 tile tasks): a few seconds.
ARGS = ["--patch-size", "7", "--steps", "2", "--eta", "1", "--set", "num_scales=3", "--set", "ivf_threshold=1000",
        "--size", "203x141", "--seed", "3", "--tile-size", "64"]
PASSES = 3 * 2 * 2  # scales x steps x (A, B)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ref.png"
    Image.open(BALLOONS).convert("RGB").resize((124, 93), Image.Resampling.LANCZOS).save(path)
    return path


def start(reference: Path, out: Path, *extra: str, quiet: bool = True) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sidpipe.cli", "run", str(reference), "--out", str(out), *ARGS,
                             *extra, *(["--quiet"] if quiet else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def tiles_done(run_dir: Path) -> int:
    folder = run_dir / "markers"
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def wait_tiles(proc: subprocess.Popen, run_dir: Path, count: int) -> None:
    deadline = time.time() + 120
    while tiles_done(run_dir) < count and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before the test could act on it"


@pytest.fixture(scope="module")
def uninterrupted(reference, tmp_path_factory) -> tuple[np.ndarray, str]:
    """The reference result, and its progress log (stderr is a pipe here, as in a Slurm job)."""
    out = tmp_path_factory.mktemp("full") / "full.tif"
    res = finish(start(reference, out, quiet=False))
    assert res.returncode == 0, res.stderr
    return tifffile.imread(out), res.stderr


def test_lock_is_exclusive_and_dies_with_its_holder(tmp_path):
    first = RunDir(tmp_path / "run")
    first.lock()
    with pytest.raises(ConfigError, match=f"in use by another sidpipe run \\(pid {os.getpid()} on "):
        RunDir(tmp_path / "run").lock()
    first.close()
    RunDir(tmp_path / "run").lock()  # released: free again (the lock file itself stays)
    # A holder killed with SIGKILL leaves the file behind, never the lock.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from sidpipe.store import RunDir; "
                               f"RunDir({str(tmp_path / 'other')!r}).lock(); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError, match=f"pid {holder.pid} "):
        RunDir(tmp_path / "other").lock()
    holder.kill()
    holder.wait()
    assert (tmp_path / "other" / LOCK_NAME).exists()
    RunDir(tmp_path / "other").lock()


def test_second_run_refused_while_first_lives_then_resumes_after_kill9(reference, uninterrupted, tmp_path):
    out = tmp_path / "o.tif"
    run_dir = Path(str(out) + ".sidpipe")
    first = start(reference, out)
    wait_tiles(first, run_dir, 6)
    first.send_signal(signal.SIGSTOP)  # alive, holding the lock, for as long as the test needs
    second = finish(start(reference, out), timeout=120)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert second.stderr.strip().count("\n") == 0 and "is in use by another sidpipe run" in second.stderr
    assert f"pid {first.pid} " in second.stderr
    assert first.poll() is None  # the refused run did not disturb the live one
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (run_dir / LOCK_NAME).exists() and not out.exists()
    third = finish(start(reference, out))  # the dead holder's lock does not block, and the run resumes
    assert third.returncode == 0, third.stderr
    np.testing.assert_array_equal(tifffile.imread(out), uninterrupted[0])


def test_progress_lines_with_eta_when_not_a_terminal(uninterrupted):
    err = uninterrupted[1]
    lines = [line for line in err.splitlines() if " pass " in line and "ETA" in line]
    assert len(lines) == PASSES, err  # one line per finished pass (each pass here is seconds, not minutes)
    assert lines[0].startswith("scale 2 step 2 pass A: 1/1 tiles; run 1/68 tiles")
    assert lines[-1].startswith("scale 0 step 1 pass B: 12/12 tiles; run 68/68 tiles, 100% of the work")
    assert lines[-1].endswith("ETA 0 s")
    assert "out of core: tile 64" in err and "3 scales" in err  # the plan comes first


def test_eta_arithmetic():
    from sidpipe.cli.progress import duration, eta, pass_line

    info = {"scale": 0, "t": 4, "pass": "A", "pass_done": 3, "pass_total": 12, "done": 40, "total": 100,
            "resumed": 20, "work_done": 600.0, "work_total": 1000.0, "work_resumed": 400.0, "seconds": 50.0}
    assert eta(info) == pytest.approx(50 / 200 * 400)  # only work computed by this process sets the rate
    assert duration(100) == "1 min 40 s" and duration(7300) == "2 h 01 min" and duration(9.6) == "10 s"
    assert pass_line(info) == ("scale 0 step 4 pass A: 3/12 tiles; run 40/100 tiles, 20 resumed, 60% of the work, "
                               "50 s elapsed, ETA 1 min 40 s")
    assert eta({**info, "work_done": 400.0}) is None  # nothing computed yet: no rate, no guess


@pytest.fixture
def small_fs(tmp_path):
    """A 48 MiB tmpfs mounted by the test (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> None:
    """Write a file until the filesystem is full."""
    block = b"\0" * (1 << 20)
    with open(folder / "filler", "wb", buffering=0) as f:
        for size in (1 << 20, 4096):
            try:
                while True:
                    f.write(block[:size])
            except OSError:
                pass


def test_enospc_ends_in_one_line_and_the_run_dir_resumes(reference, uninterrupted, small_fs, tmp_path):
    out = small_fs / "o.tif"
    run_dir = Path(str(out) + ".sidpipe")
    proc = start(reference, out)
    wait_tiles(proc, run_dir, 8)  # reference, indexes and some tiles are on disk
    fill(small_fs)
    res = finish(proc)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().count("\n") == 0 and "no space left on device" in res.stderr
    assert "run the same command again to resume" in res.stderr
    assert not out.exists() and not list(small_fs.glob(".*part*"))  # nothing that looks finished
    # A roomy copy of the run directory resumes to the uninterrupted bytes...
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    shutil.copytree(run_dir, roomy / run_dir.name)
    res = finish(start(reference, roomy / out.name))
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(tifffile.imread(roomy / out.name), uninterrupted[0])
    # ...and so does the original, in place, once space is freed.
    (small_fs / "filler").unlink()
    res = finish(start(reference, out))
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(tifffile.imread(out), uninterrupted[0])
