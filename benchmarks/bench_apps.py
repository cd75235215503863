"""Mask-driven applications out of core next to a plain run of the same output size: wall time and peak RSS.

    python benchmarks/bench_apps.py [--side 8192] [--photo examples/balloons.png] [--set key=value ...]
                                    [--tile-size 1024] [--workers 0] [--jobs inpaint,outpaint,run] [--keep DIR]

Three jobs, each the real CLI (`sidpipe ...`) in its own process, out of core (a --workdir is given):

- inpaint: a --side x --side canvas (the photo resampled to it) with a square hole of side/8 x side/8
  (1/64 of the area; side 8192: a 64-MP canvas with a 1-MP hole) at (side/8, side/8),
  `sidpipe inpaint CANVAS --mask M`;
- outpaint: the photo resampled to side/2 x side/2, extended 4x in area, `sidpipe outpaint HALF --size SxS`;
- run: a plain `sidpipe run HALF --size SxS` (the same reference and output size as outpaint).

Each job uses its command's own preset; --set is passed to all three (e.g. --set steps=2 for a short run).
Inputs are tiled zstd TIFFs (read tile by tile), the mask a PNG. Peak RSS is the job's own (os.wait4 on
its process: the CLI and anything it waited for), wall time from start to exit. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def sidpipe() -> list[str]:
    """The CLI next to this interpreter (the project's venv), else on PATH."""
    exe = Path(sys.executable).with_name("sidpipe")
    found = str(exe) if exe.exists() else shutil.which("sidpipe")
    if found is None:
        raise SystemExit("sidpipe not found: run from the project's venv (make setup)")
    return [found]


def make_inputs(photo: Path, side: int, tmp: Path) -> dict[str, Path]:
    """The canvas (photo resampled to side x side), the hole mask, and the half-size photo."""
    import tifffile
    from PIL import Image

    image = Image.open(photo).convert("RGB")
    paths = {"canvas": tmp / f"canvas{side}.tif", "mask": tmp / f"mask{side}.png", "half": tmp / f"half{side // 2}.tif"}
    for name, n in (("canvas", side), ("half", side // 2)):
        pixels = np.asarray(image.resize((n, n), Image.Resampling.LANCZOS))
        tifffile.imwrite(paths[name], pixels, bigtiff=True, tile=(512, 512), compression="zstd", photometric="rgb")
        del pixels
    # off centre (from side/8 to side/4 on both axes): at the coarsest scales (~30 px) a centred hole's support
    # would touch every 15 x 15 patch of the reference, which inpaint refuses
    mask = np.zeros((side, side), np.uint8)
    mask[side // 8:side // 4, side // 8:side // 4] = 255
    Image.fromarray(mask).save(paths["mask"])
    return paths


def timed(cmd: list[str], log: Path) -> dict:
    """Run `cmd`, its output to `log`; wall seconds, peak RSS (MiB) and exit status."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": time.perf_counter() - start, "rss_mib": usage.ru_maxrss / 1024, "rc": proc.returncode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=8192, help="output side (px); 8192 = 64 MP")
    ap.add_argument("--photo", type=Path, default=ROOT / "examples" / "balloons.png")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every job")
    ap.add_argument("--tile-size", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--jobs", default="inpaint,outpaint,run")
    ap.add_argument("--keep", type=Path, help="keep inputs, outputs and logs in this directory")
    args = ap.parse_args()
    if args.side % 16:
        raise SystemExit("--side must be a multiple of 16")
    side = args.side
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        paths = make_inputs(args.photo, side, tmp)
        print(f"inputs: {side}x{side} canvas with a {side // 8}x{side // 8} hole, {side // 2}x{side // 2} photo "
              f"(from {args.photo.name}, {time.perf_counter() - started:.1f} s)", flush=True)
        common = ["--tile-size", str(args.tile_size), "--workers", str(args.workers), "--quiet"]
        common += [a for s in args.set for a in ("--set", s)]
        jobs = {
            "inpaint": ["inpaint", str(paths["canvas"]), "--mask", str(paths["mask"])],
            "outpaint": ["outpaint", str(paths["half"]), "--size", f"{side}x{side}"],
            "run": ["run", str(paths["half"]), "--size", f"{side}x{side}"],
        }
        print(f"{'job':>9} {'output':>11} {'wall s':>8} {'peak RSS MiB':>13}  command", flush=True)
        for name in args.jobs.split(","):
            out = tmp / f"{name}{side}.tif"
            cmd = sidpipe() + jobs[name] + ["-o", str(out), "--workdir", str(tmp / f"{name}.sidpipe"), *common]
            r = timed(cmd, tmp / f"{name}.log")
            status = "" if r["rc"] == 0 else f"  FAILED (exit {r['rc']}, see {tmp / f'{name}.log'})"
            shown = " ".join(c if c.startswith("-") or "/" not in c else Path(c).name for c in cmd[1:])
            print(f"{name:>9} {f'{side}x{side}':>11} {r['seconds']:8.1f} {r['rss_mib']:13.0f}  sidpipe {shown}{status}",
                  flush=True)
            if r["rc"] != 0 and args.keep is None:
                print((tmp / f"{name}.log").read_text()[-2000:])


if __name__ == "__main__":
    main()
