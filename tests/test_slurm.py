"""Against a real single-node Slurm (tests/slurmd.py starts one, or the tests skip with the reason):
`--cluster slurm --jobs 2` equals the threaded run; a worker job cancelled mid-pass loses nothing.
Cluster settings are merged shipped < site < user < preset < --set (no Slurm needed for those)."""

from __future__ import annotations

import os
import shlex
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

STEPS = 6  # long enough (~200 tile tasks) that both worker jobs start before the run ends on a quiet machine
ARGS = ["--patch-size", "7", "--steps", str(STEPS), "--eta", "1", "--set", "num_scales=3", "--set", "ivf_threshold=1000",
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
    tasks = 2 * STEPS * (1 + 4 + 12)  # both passes of every step on the 3 scales' 1, 4 and 12 tiles
    assert f"pass B: 12/12 tiles; run {tasks}/{tasks} tiles, 100% of the work" in err
    logs = sorted((Path(str(out) + ".sidpipe") / "slurm-logs").glob("*.err"))
    assert len(logs) == 2, logs  # both jobs ran (scale 0 has 12 tiles), one dask worker each
    assert all("Starting Worker" in p.read_text() for p in logs)
    deadline = time.time() + 30
    while worker_jobs(slurm) and time.time() < deadline:  # the driver cancels its jobs when it ends
        time.sleep(0.5)
    assert not worker_jobs(slurm)


def test_cancelled_worker_job_mid_pass_loses_nothing(slurm, reference, threaded, tmp_path):
    out = tmp_path / "k.tif"
    markers = Path(str(out) + ".sidpipe") / "markers"

    def count(stage: str) -> int:
        folder = markers / stage
        return len(list(folder.iterdir())) if folder.exists() else 0

    proc = start(str(reference), "--out", str(out), *ARGS, *CLUSTER, "--keep-workdir")
    deadline = time.time() + 180
    running: list = []
    while time.time() < deadline and proc.poll() is None:
        if len(running) < 2:  # squeue is slow next to a pass: ask only until both jobs run (they stay up)
            running = [job for job in worker_jobs(slurm) if job[2] == "RUNNING"]
        # the finest scale (12 tiles a pass, ~1 s a pass on a quiet machine) under way on both jobs
        if len(running) == 2 and count("s0-t2-A") >= 1 and count("s0-t1-B") < 6:
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"never saw both worker jobs running during scale 0: {proc.communicate()[1]}")
    victim = running[0][0]
    subprocess.run(["scancel", victim], check=True, timeout=30)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err + slurm.log()
    np.testing.assert_array_equal(tifffile.imread(out), threaded)
    logs = (Path(str(out) + ".sidpipe") / "slurm-logs")
    assert (logs / f"sidpipe-worker-{victim}.err").exists()


def test_driver_inside_an_sbatch_job(slurm, reference, threaded, tmp_path):
    """`sidpipe run --cluster slurm` as the command of an sbatch job (SLURM_JOB_ID and the job's other
    variables in its environment, which its worker jobs' sbatch inherits): same bytes as the threaded run."""
    out = tmp_path / "d.tif"
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "sidpipe.cli", "run", str(reference), "--out",
                                            str(out), *ARGS, *CLUSTER[:3], "1", *CLUSTER[4:], "--keep-workdir"])
    script = tmp_path / "driver.sbatch"
    script.write_text(f"""#!/bin/bash
#SBATCH -J sidpipe-driver
#SBATCH -c 1
#SBATCH --mem=1G
#SBATCH -t 00:10:00
#SBATCH -o {tmp_path}/driver-%j.log
echo "driver job $SLURM_JOB_ID"
exec {cmd}
""")
    res = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().split(";")[0]
    log = tmp_path / f"driver-{job}.log"
    deadline = time.time() + 300
    while any(j[0] == job for j in slurm.squeue()) and time.time() < deadline:
        time.sleep(0.5)
    text = log.read_text() if log.exists() else ""
    assert not any(j[0] == job for j in slurm.squeue()), f"driver job still there after 300 s: {text[-2000:]}"
    assert out.exists(), text[-3000:] + slurm.log()
    np.testing.assert_array_equal(tifffile.imread(out), threaded)
    assert f"driver job {job}" in text and "Slurm: up to 1 worker jobs (sidpipe-worker)" in text, text
    logs = sorted((Path(str(out) + ".sidpipe") / "slurm-logs").glob("*.err"))
    assert len(logs) == 1 and "Starting Worker" in logs[0].read_text(), logs


def batch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sidpipe.cli", "batch", *args], capture_output=True, text=True,
                          timeout=timeout)


BATCH = ["--run", " ".join(ARGS), "--set", "cluster.cores=1", "--set", "cluster.memory=1GB",
         "--set", "cluster.walltime=00:10:00"]


@pytest.fixture(scope="module")
def inputs(reference, tmp_path_factory) -> list[Path]:
    """Three different references: the balloons, mirrored left-right and upside down."""
    folder = tmp_path_factory.mktemp("inputs")
    image = Image.open(reference)
    paths = []
    for name, im in (("a", image), ("b", image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
                     ("c", image.transpose(Image.Transpose.FLIP_TOP_BOTTOM))):
        im.save(folder / f"{name}.png")
        paths.append(folder / f"{name}.png")
    return paths


def test_slurm_script_shows_what_batch_submits(inputs, tmp_path):
    (tmp_path / "xdg" / "sidpipe").mkdir(parents=True)
    (tmp_path / "xdg" / "sidpipe" / "slurm.yaml").write_text("partition: short\nprologue: [module load python/3.11]\n")
    res = subprocess.run([sys.executable, "-m", "sidpipe.cli", "slurm-script", *map(str, inputs), "--out-dir",
                          str(tmp_path), "--array-throttle", "2", *BATCH, "--set", "cluster.gres=gpu:1"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    text = res.stdout
    for line in ("#SBATCH --array=0-2%2", "#SBATCH -c 1", "#SBATCH --mem=953M", "#SBATCH -t 00:10:00",
                 "#SBATCH --signal=B:USR1@300", "#SBATCH --requeue", "#SBATCH -p short", "#SBATCH --gres gpu:1",
                 "module load python/3.11", f"#   1: {inputs[1]}\t{tmp_path / 'b.tif'}"):
        assert line + "\n" in text, line
    assert '--workdir "$OUTPUT.sidpipe" --requeue ' + " ".join(ARGS) in text
    assert not (tmp_path / ".sidpipe-batch").exists()  # nothing written, nothing submitted
    bad = batch(*map(str, inputs), "--out-dir", str(tmp_path), "--run", "--out x.tif")
    assert bad.returncode == 1 and "--run must not contain --out" in bad.stderr


def test_manifest_lists_the_inputs_and_their_output_names(inputs, tmp_path):
    """--manifest: INPUT or INPUT<TAB>OUTPUT_NAME a line, comments skipped, paths from the manifest's folder,
    after any INPUTS given as arguments; bad manifests are one line, exit 1, nothing written."""
    manifest = inputs[0].parent / "list.txt"
    manifest.write_text(f"# two of the three\n{inputs[1].name}\tmirrored\n\n{inputs[2]}\tflipped.png\n")
    out = tmp_path / "out"
    out.mkdir()
    res = subprocess.run([sys.executable, "-m", "sidpipe.cli", "slurm-script", str(inputs[0]), "--manifest",
                          str(manifest), "--out-dir", str(out), *BATCH], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for line in (f"#   0: {inputs[0]}\t{out / 'a.tif'}", f"#   1: {inputs[1]}\t{out / 'mirrored.tif'}",
                 f"#   2: {inputs[2]}\t{out / 'flipped.png'}", "#SBATCH --array=0-2"):
        assert line + "\n" in res.stdout, line
    bad_lines = {"missing.png\n": "input not found: ", "a.png\tsub/x.tif\n": "must be a file name in --out-dir",
                 "a.png\tx.tif\nb.png\tx.tif\n": "would both write x.tif", "a.png\tx\ty\n": "line 1: expected INPUT"}
    for text, message in bad_lines.items():
        manifest.write_text(text)
        bad = batch("--manifest", str(manifest), "--out-dir", str(out), *BATCH)
        assert bad.returncode == 1 and message in bad.stderr and "Traceback" not in bad.stderr, (text, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    bad = batch("--manifest", str(tmp_path / "none.txt"), "--out-dir", str(out), *BATCH)
    assert bad.returncode == 1 and "cannot read the manifest" in bad.stderr, bad.stderr
    assert list(out.iterdir()) == []


def test_batch_array_then_resubmit_only_the_cancelled_task(slurm, inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    first = batch(*map(str, inputs), "--out-dir", str(out), *BATCH)
    assert first.returncode == 0, first.stderr
    assert "0 done, 0 pending or running, 3 to submit" in first.stdout
    job = first.stdout.split("submitted array job ")[1].split()[0]
    markers = out / "b.tif.sidpipe" / "markers"
    deadline = time.time() + 180
    while time.time() < deadline and (not markers.exists() or sum(1 for _ in markers.rglob("*")) < 6):
        time.sleep(0.05)
    subprocess.run(["scancel", f"{job}_1"], check=True, timeout=30)  # b, mid-run
    while time.time() < deadline and any(j[0].startswith(f"{job}_") for j in slurm.squeue()):
        time.sleep(0.5)
    assert (out / "a.tif").exists() and (out / "c.tif").exists() and not (out / "b.tif").exists()
    assert (out / "b.tif.sidpipe" / "manifest.json").exists()  # b's finished tiles wait for the next attempt
    log_b = (out / ".sidpipe-batch" / "logs" / f"{job}_1.out").read_text()
    assert "stopped by SIGTERM; finished tiles are kept" in log_b, log_b
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif")}

    second = batch(*map(str, inputs), "--out-dir", str(out), *BATCH, "--wait")
    assert second.returncode == 0, second.stdout + second.stderr + slurm.log()
    assert "2 done, 0 pending or running, 1 to submit" in second.stdout
    assert "(1 tasks): b.png;" in second.stdout and "3/3 done" in second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif") if p.name != "b.tif"} == stamps  # a, c untouched
    job2 = second.stdout.split("submitted array job ")[1].split()[0]
    log_b2 = (out / ".sidpipe-batch" / "logs" / f"{job2}_0.out").read_text()
    assert "resumed" in log_b2, log_b2  # it went on from the cancelled attempt's tiles
    # b equals an uninterrupted threaded run of b, and a third call has nothing to do.
    proc = start(str(inputs[1]), "--out", str(tmp_path / "b_ref.tif"), *ARGS, "--quiet")
    assert proc.wait(timeout=300) == 0
    np.testing.assert_array_equal(tifffile.imread(out / "b.tif"), tifffile.imread(tmp_path / "b_ref.tif"))
    third = batch(*map(str, inputs), "--out-dir", str(out), *BATCH)
    assert third.returncode == 0 and "3 done, 0 pending or running, 0 to submit" in third.stdout
    assert "submitted" not in third.stdout


def wait_state(slurm, job: str, states: tuple[str, ...], timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = next((j[2] for j in slurm.squeue() if j[0] == job), "GONE")
        if state in states:
            return state
        time.sleep(0.1)
    pytest.fail(f"job {job} never reached {states}; jobs: {slurm.squeue()}")


def wait_new_markers(folder: Path, since: float, count: int, timeout: float = 180) -> None:
    """Wait until `count` marker files were made after `since`. Names are collected over the polls, since a
    finished stage replaces its tile markers by one NAME.done."""
    seen: set[Path] = set()
    deadline = time.time() + timeout
    while time.time() < deadline and len(seen) < count:
        for path in folder.rglob("*") if folder.exists() else ():
            try:
                if path.is_file() and path.stat().st_mtime > since:
                    seen.add(path)
            except FileNotFoundError:
                pass
        time.sleep(0.05)
    assert len(seen) >= count, f"the task wrote {len(seen)} tiles in {timeout} s"


def wait_log(log: Path, text: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not (log.exists() and text in log.read_text(errors="replace")):
        time.sleep(0.1)
    assert log.exists() and text in log.read_text(errors="replace"), f"{text!r} never appeared in {log}"


def test_usr1_requeue_and_preemption_requeue_resume_to_the_same_bytes(slurm, inputs, tmp_path):
    """USR1 (what --signal=B:USR1@N sends before the time limit): the task checkpoints and requeues itself.
    Then a requeue from outside (what preemption does: SIGTERM, then back to the queue): it checkpoints
    and exits. Each time the requeued job resumes; the output equals an uninterrupted run's."""
    out = tmp_path / "out"
    out.mkdir()
    res = batch(str(inputs[2]), "--out-dir", str(out), *BATCH)
    assert res.returncode == 0, res.stderr
    job = res.stdout.split("submitted array job ")[1].split()[0] + "_0"
    markers = out / "c.tif.sidpipe" / "markers"
    log = out / ".sidpipe-batch" / "logs" / f"{job}.out"
    for attempt, how in enumerate((["scancel", "--signal=USR1", "--batch", job], ["scontrol", "requeue", job]), 1):
        wait_state(slurm, job, ("RUNNING",))
        # The restart's own process must be the one signalled, and only once it has installed its handlers
        # (before its first tile): the previous one may still be finishing a tile while Slurm already shows
        # the requeued job as running again, and a signal during the new one's start-up kills it silently.
        # Markers made after the log shows it started, more than the previous one's in-flight tiles, mean it
        # wrote tiles of its own.
        wait_log(log, f"restart {attempt - 1})")
        wait_new_markers(markers, time.time(), 6 if attempt == 1 else 4)
        subprocess.run(how, check=True, timeout=30)
        # Slurm holds a requeued job ~2 min (BeginTime); let it start again at once.
        wait_state(slurm, job, ("PENDING",))
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
    wait_log(log, "restart 2)")
    deadline = time.time() + 300
    while not (out / "c.tif").exists() and time.time() < deadline:  # a requeued job can briefly leave squeue
        time.sleep(0.2)
    wait_state(slurm, job, ("GONE", "COMPLETED"), timeout=300)
    text = log.read_text()
    assert f"requeued Slurm job {job}: it resumes when it starts again" in text, text
    assert "stopped by SIGTERM; finished tiles are kept" in text and "Traceback" not in text
    assert "restart 1)" in text and "restart 2)" in text and text.count("resumed") >= 2
    proc = start(str(inputs[2]), "--out", str(tmp_path / "c_ref.tif"), *ARGS, "--quiet")
    assert proc.wait(timeout=300) == 0
    np.testing.assert_array_equal(tifffile.imread(out / "c.tif"), tifffile.imread(tmp_path / "c_ref.tif"))


@pytest.mark.slow
def test_default_preset_same_pixels_with_any_threads_per_task(slurm, tmp_path):
    """The default preset (exact and IVF scales): one job of 2 cores running 2 tiles at once, and two 1-core
    jobs, whose single-tile coarse passes get 1 thread where the threaded run gives them 2, both equal the
    threaded run (while the exact denoiser depended on the thread count the 1-core jobs differed)."""
    common = [str(BALLOONS), "--size", "512x512", "--tile-size", "256", "--steps", "2"]
    slurm_set = ["--set", "cluster.memory=2GB", "--set", "cluster.interface=lo", "--set", "cluster.dashboard=null"]
    runs = {
        "threaded": ["--workers", "2"],
        "one 2-core job": ["--cluster", "slurm", "--jobs", "1", "--set", "cluster.cores=2",
                           "--set", "cluster.tasks_per_job=2", *slurm_set],
        "two 1-core jobs": ["--cluster", "slurm", "--jobs", "2", "--set", "cluster.cores=1", *slurm_set],
    }
    images = {}
    for name, extra in runs.items():
        proc = start(*common, "--out", str(tmp_path / f"{name}.tif"), *extra)
        try:
            _, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"{name}: no result in 300 s: {proc.communicate()[1][-2000:]} {slurm.squeue()} {slurm.log()[-2000:]}")
        assert proc.returncode == 0, err
        images[name] = tifffile.imread(tmp_path / f"{name}.tif")
    np.testing.assert_array_equal(images["one 2-core job"], images["threaded"])
    np.testing.assert_array_equal(images["two 1-core jobs"], images["threaded"])


def test_a_worker_job_slurm_refuses_is_one_line_not_a_hang(slurm, reference, tmp_path):
    res = subprocess.run([sys.executable, "-m", "sidpipe.cli", "run", str(reference), "--out", str(tmp_path / "o.tif"),
                          *ARGS, *CLUSTER, "--set", "cluster.partition=nosuchpartition"],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "sidpipe: error: Slurm refuses the worker job (" in res.stderr and "partition" in res.stderr.lower()
