"""Out-of-core vs in-memory sampling, side by side: wall time and peak RSS, each run in its own process.

    python benchmarks/bench_tiles.py REF --sizes 512,1024 --tile 512 [--set key=value ...] [--tiled-only]

For each output size it runs the in-memory sampler (unless --tiled-only) and the tiled pipeline
(threads scheduler, one task per core), prints seconds, peak RSS and the tiled/in-memory time ratio,
and checks that both wrote the same pixels.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def child(args: argparse.Namespace) -> None:
    from sidpipe.config import load_config, parse_set
    from sidpipe.runner import RunOptions, run

    cfg = load_config("default", {**parse_set(args.set), "width": args.size, "height": args.size})
    options = RunOptions(out_of_core=args.mode == "tiled", tile_size=args.tile, workers=args.workers)
    start = time.perf_counter()
    run(Path(args.ref), Path(args.out), cfg, options=options)
    print(json.dumps({"seconds": time.perf_counter() - start,
                      "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))


def measure(ref: str, size: int, mode: str, tile: int, workers: int, sets: list[str], out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, ref, "--out", str(out), "--size", str(size), "--tile", str(tile),
           "--workers", str(workers)] + [a for s in sets for a in ("--set", s)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ref")
    ap.add_argument("--sizes", default="512")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--tiled-only", action="store_true")
    ap.add_argument("--child", choices=["memory", "tiled"])
    ap.add_argument("--out")
    ap.add_argument("--size", type=int)
    args = ap.parse_args()
    if args.child:
        args.mode = args.child
        child(args)
        return
    import tifffile

    print(f"reference {args.ref}, tile {args.tile}, workers {args.workers or 'one per core'}, set {args.set}")
    print(f"{'output':>12} {'mode':>8} {'seconds':>9} {'peak GiB':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            results = {}
            for mode in (["tiled"] if args.tiled_only else ["memory", "tiled"]):
                out = Path(tmp) / f"{mode}-{size}.tif"
                r = measure(args.ref, size, mode, args.tile, args.workers, args.set, out)
                results[mode] = (r, out)
                ratio = r["seconds"] / results["memory"][0]["seconds"] if mode == "tiled" and "memory" in results else None
                print(f"{size:>5}x{size:<6} {mode:>8} {r['seconds']:9.1f} {r['rss_gib']:9.2f} "
                      f"{'' if ratio is None else f'{ratio:6.3f}'}", flush=True)
            if len(results) == 2:
                same = np.array_equal(tifffile.imread(results["memory"][1]), tifffile.imread(results["tiled"][1]))
                print(f"{'':>12} same pixels: {same}")


if __name__ == "__main__":
    main()
