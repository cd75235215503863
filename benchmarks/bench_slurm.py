"""Threaded run vs `--cluster slurm --jobs N` on the same output: wall time, where it went, per-task overhead.

    python benchmarks/bench_slurm.py REF --size 2048x2048 [--tile-size 512] [--jobs 2] [--cores 1] [--workers 2]
                                     [--start-local-slurm] [--set key=value ...]

Needs a Slurm cluster (`sinfo` answers), or --start-local-slurm (root, Debian: tests/slurmd.py installs
and starts a single-node one, stopped at the end). Each run is a `sidpipe run` process whose progress
lines are time-stamped as they arrive, which splits its wall time into

  before tiles   process start, reading the reference, the pyramid and the index builds (serial)
  tiles          every pass of every scale (parallel: independent tile tasks)
  after tiles    writing the output (serial)

Then it measures the dask round trip of an empty task on the same kind of Slurm worker jobs (the
scheduling overhead each tile task pays), checks that both runs wrote the same pixels, and prints a
projection for N nodes as arithmetic over the figures it measured or is given (stated with it).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PASS = re.compile(r"^scale (\d+) step \d+ pass [AB]: (\d+)/(\d+) tiles; run (\d+)/(\d+) tiles.*?, (?:(\d+) h )?(?:(\d+) min )?(\d+) s elapsed")


def timed_run(cmd: list[str]) -> dict:
    """Run a sidpipe command; time-stamp its stderr lines; split the wall time (see the module docstring)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, bufsize=1)
    lines = []
    for line in proc.stderr:
        lines.append((time.perf_counter() - start, line.rstrip()))
    proc.wait()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit("\n".join(text for _, text in lines[-20:]))
    passes = [(t, PASS.match(text)) for t, text in lines if PASS.match(text)]
    first_t, first = passes[0]
    last_t, _ = passes[-1]
    h, m, s = (int(x or 0) for x in first.group(6, 7, 8))
    tiles_start = first_t - (h * 3600 + m * 60 + s)  # the line's elapsed time counts from the first tile task
    tiles = int(passes[-1][1].group(5))
    return {"wall": wall, "before": tiles_start, "tiles": last_t - tiles_start, "after": wall - last_t,
            "tasks": tiles, "log": [text for _, text in lines]}


def task_overhead(settings_args: dict, jobs: int, n: int = 200) -> tuple[float, float]:
    """(seconds per empty task, one at a time; seconds per empty task, n at once) on `jobs` Slurm worker jobs."""
    from distributed import Client, as_completed

    from sidpipe.cluster import load_settings
    from sidpipe.cluster.slurm import start_cluster

    cluster = start_cluster(load_settings(None, settings_args))
    try:
        cluster.scale(jobs=jobs)
        with Client(cluster) as client:
            client.wait_for_workers(jobs, timeout=300)
            client.submit(int, 0, pure=False).result()  # warm up
            t = time.perf_counter()
            for i in range(n // 4):
                client.submit(int, i, pure=False).result()
            serial = (time.perf_counter() - t) / (n // 4)
            t = time.perf_counter()
            for fut in as_completed([client.submit(int, i, pure=False) for i in range(n)]):
                fut.result()
            batch = (time.perf_counter() - t) / n
    finally:
        cluster.close()
    return serial, batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ref")
    ap.add_argument("--size", default="2048x2048")
    ap.add_argument("--tile-size", default="512")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cores", type=int, default=1, help="cores of each worker job")
    ap.add_argument("--workers", type=int, default=2, help="tiles at once in the threaded run")
    ap.add_argument("--memory", default="3GB", help="memory of each worker job")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--start-local-slurm", action="store_true")
    args = ap.parse_args()

    slurm, cluster_up = None, None
    if args.start_local_slurm:
        spec = importlib.util.spec_from_file_location("slurmd", ROOT / "tests" / "slurmd.py")
        slurm = sys.modules["slurmd"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(slurm)
        cluster_up = slurm.bring_up()
    try:
        with tempfile.TemporaryDirectory(dir=Path(args.ref).resolve().parent) as tmp:
            common = [sys.executable, "-m", "sidpipe.cli", "run", args.ref, "--size", args.size,
                      "--tile-size", args.tile_size, *[a for s in args.set for a in ("--set", s)]]
            threaded = timed_run([*common, "--out", f"{tmp}/threaded.tif", "--workers", str(args.workers)])
            cluster_set = {"cores": str(args.cores), "memory": args.memory, "interface": "lo", "dashboard": "null",
                           "walltime": "02:00:00"}
            on_slurm = timed_run([*common, "--out", f"{tmp}/slurm.tif", "--cluster", "slurm", "--jobs", str(args.jobs),
                                  *[a for k, v in cluster_set.items() for a in ("--set", f"cluster.{k}={v}")]])
            import tifffile

            same = np.array_equal(tifffile.imread(f"{tmp}/threaded.tif"), tifffile.imread(f"{tmp}/slurm.tif"))
            serial, batch = task_overhead(cluster_set, args.jobs)
    finally:
        if cluster_up is not None:
            slurm.stop(cluster_up.pids)

    print(f"output {args.size}, tile {args.tile_size}, {threaded['tasks']} tile tasks; "
          f"this machine: {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores")
    print(f"{'run':<34} {'wall s':>8} {'before':>8} {'tiles':>8} {'after':>8}")
    for name, r in ((f"threaded, --workers {args.workers}", threaded),
                    (f"--cluster slurm --jobs {args.jobs} ({args.cores} core each)", on_slurm)):
        print(f"{name:<34} {r['wall']:8.1f} {r['before']:8.1f} {r['tiles']:8.1f} {r['after']:8.1f}")
    print(f"same pixels: {same}")
    extra = on_slurm["tiles"] - threaded["tiles"]
    print(f"empty-task round trip on {args.jobs} worker jobs: {serial * 1e3:.1f} ms one at a time, "
          f"{batch * 1e3:.2f} ms each with {200} in flight")
    print(f"tile phase on Slurm minus threaded: {extra:+.1f} s over {on_slurm['tasks']} tasks "
          f"= {extra / on_slurm['tasks'] * 1e3:+.0f} ms per task (job start-up, index loads per worker, scheduling)")
    for name, r in (("threaded", threaded), ("slurm", on_slurm)):
        print(f"serial share ({name}): before + after tiles = {r['before'] + r['after']:.1f} s "
              f"= {100 * (r['before'] + r['after']) / r['wall']:.0f}% of the wall time")
    for line in on_slurm["log"]:
        if line.startswith(("dask scheduler", "Slurm:")):
            print("  " + line)


if __name__ == "__main__":
    main()
