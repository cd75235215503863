"""Against a real single-node Slurm (tests/slurmd.py starts one, or the tests skip with the reason):
`--cluster slurm --jobs 2` equals the threaded run; a worker job cancelled mid-pass loses nothing.
Cluster settings are merged shipped < site < user < preset < --set (no Slurm needed for those)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from sidpipe.cluster import load_settings
from sidpipe.errors import ConfigError

from conftest import BALLOONS
from slurmd import slurm  # noqa: F401  (the session fixture)

ARGS = ["--patch-size", "7", "--steps", "2", "--eta", "1", "--set", "num_scales=3", "--set", "ivf_threshold=1000",
        "--size", "203x141", "--seed", "3", "--tile-size", "64"]
# 1-core, 1 GB worker jobs on the loopback interface: two fit the 2-core test node.
CLUSTER = ["--cluster", "slurm", "--jobs", "2", "--set", "cluster.cores=1", "--set", "cluster.memory=1GB",
           "--set", "cluster.interface=lo", "--set", "cluster.walltime=00:10:00", "--set", "cluster.dashboard=null"]


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """No site or user settings file of this machine leaks into the tests."""
    monkeypatch.setenv("SIDPIPE_SITE_CONFIG", str(tmp_path / "no-site.yaml"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ref.png"
    Image.open(BALLOONS).convert("RGB").resize((124, 93), Image.Resampling.LANCZOS).save(path)
    return path


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sidpipe.cli", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def threaded(reference, tmp_path_factory) -> np.ndarray:
    out = tmp_path_factory.mktemp("threaded") / "t.tif"
    proc = start(str(reference), "--out", str(out), *ARGS, "--quiet")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return tifffile.imread(out)


def worker_jobs(slurm) -> list[tuple[str, str, str]]:
    return [job for job in slurm.squeue() if job[1] == "sidpipe-worker"]


def test_settings_lookup_order(tmp_path, monkeypatch):
    shipped = load_settings()
    assert shipped.cores == 4 and shipped.walltime == "04:00:00" and shipped.partition is None
    site, user = tmp_path / "site.yaml", tmp_path / "xdg" / "sidpipe" / "slurm.yaml"
    site.write_text("partition: compute\naccount: proj1\ncores: 16\nwalltime: 12:00:00\n")  # unquoted: YAML seconds
    user.parent.mkdir(parents=True)
    user.write_text("account: mine\nprologue: [module load python]\n")
    monkeypatch.setenv("SIDPIPE_SITE_CONFIG", str(site))
    got = load_settings({"cores": 8, "gres": "gpu:1"}, {"cores": "2", "partition": "null", "extra": "--exclusive; -C skl"})
    assert (got.partition, got.account, got.cores, got.gres, got.walltime) == (None, "mine", 2, "gpu:1", "12:00:00")
    assert got.prologue == ["module load python"] and got.extra == ["--exclusive", "-C skl"]
    assert got.sources[1:] == (str(site), str(user), "the preset's cluster: section", "--set cluster.*")
    with pytest.raises(ConfigError, match="unknown cluster setting 'cpus'"):
        load_settings(None, {"cpus": "2"})
    with pytest.raises(ConfigError, match="cluster.cores: expected an integer"):
        load_settings(None, {"cores": "many"})


def test_cluster_flags_are_checked_before_any_work(reference, tmp_path):
    res = subprocess.run([sys.executable, "-m", "sidpipe.cli", "run", str(reference), "--out", str(tmp_path / "o.tif"),
                          "--set", "cluster.cores=2"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "--set cluster.* needs --cluster slurm" in res.stderr
    res = subprocess.run([sys.executable, "-m", "sidpipe.cli", "run", str(reference), "--out", str(tmp_path / "o.tif"),
                          "--cluster", "pbs"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "--cluster supports slurm" in res.stderr and "Traceback" not in res.stderr
    assert not list(tmp_path.iterdir())


def test_two_worker_jobs_equal_the_threaded_run(slurm, reference, threaded, tmp_path):
    out = tmp_path / "c.tif"
    proc = start(str(reference), "--out", str(out), *ARGS, *CLUSTER, "--keep-workdir")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err + slurm.log()
    np.testing.assert_array_equal(tifffile.imread(out), threaded)
    assert "dask scheduler tcp://127.0.0.1:" in err and "Slurm: up to 2 worker jobs (sidpipe-worker), each 1 cores" in err
    assert "pass B: 12/12 tiles; run 68/68 tiles, 100% of the work" in err
    logs = sorted((Path(str(out) + ".sidpipe") / "slurm-logs").glob("*.err"))
    assert len(logs) == 2, logs  # both jobs ran (scale 0 has 12 tiles), one dask worker each
    assert all("Starting Worker" in p.read_text() for p in logs)
    deadline = time.time() + 30
    while worker_jobs(slurm) and time.time() < deadline:  # the driver cancels its jobs when it ends
        time.sleep(0.5)
    assert not worker_jobs(slurm)


def test_cancelled_worker_job_mid_pass_loses_nothing(slurm, reference, threaded, tmp_path):
    out = tmp_path / "k.tif"
    markers = Path(str(out) + ".sidpipe") / "markers" / "s0-t2-A"
    proc = start(str(reference), "--out", str(out), *ARGS, *CLUSTER, "--keep-workdir")
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        running = [job for job in worker_jobs(slurm) if job[2] == "RUNNING"]
        done = len(list(markers.iterdir())) if markers.exists() else 0
        if len(running) == 2 and 1 <= done < 10:  # the finest scale's first pass is under way on both jobs
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"never saw both worker jobs running during the first pass of scale 0: {proc.communicate()[1]}")
    victim = running[0][0]
    subprocess.run(["scancel", victim], check=True, timeout=30)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err + slurm.log()
    np.testing.assert_array_equal(tifffile.imread(out), threaded)
    logs = (Path(str(out) + ".sidpipe") / "slurm-logs")
    assert (logs / f"sidpipe-worker-{victim}.err").exists()
