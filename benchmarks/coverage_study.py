"""Fidelity vs coverage of samples for several (eta, steps) settings and seeds (a study script, not a test).

For every reference, setting (eta, T) and seed it generates a sample with ``sidpipe run`` (skipped
when the file already exists, so an interrupted study resumes), then measures it against the
reference with the same metrics as ``sidpipe eval`` (7x7 patches, nearest-patch query stride 2):

- ``NN L0``   sample -> reference mean nearest-patch distance (fidelity; low = every sample patch
              exists in the reference). It cannot see missing content.
- ``cov``     reference -> sample mean nearest-patch distance (coverage; reference content missing
              from the sample raises it).
- ``cov10``   mean of the worst-covered 10 % of the reference patches (the tail of the coverage:
              a small minority of the reference that vanished barely moves ``cov`` but raises this).
- ``covB``    coverage over the brightest 5 % of the reference patches (by mean luminance): stars,
              moon, lights, aurora bands -- the bright minority content of the night images.
- ``SWD``     patch sliced Wasserstein distance (3 levels), ``copy`` the verbatim-copy rate.
- ``|s0-s1|`` for a setting with seeds 0 and 1: mean absolute pixel difference between the two
              samples in [0, 1] units (0 = identical, i.e. the seed does nothing).

All distances are RMS per pixel in [-1, 1] units. It writes OUT_DIR/results.json, OUT_DIR/table.md
and one labelled contact sheet per reference (OUT_DIR/sheets/<stem>.png: one row per seed, the
reference at the start of every row, settings in columns).

Usage: python benchmarks/coverage_study.py OUT_DIR REF [REF ...]
           [--settings 0:10,1:10,0:40,1:40] [--seeds 0,1] [--sheet-width 1600] [--sheet-colors 256]
Generation runs ``sidpipe`` from this interpreter's folder (override with --sidpipe); run the whole
script under ``nice`` with ``OMP_NUM_THREADS=1`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sidpipe.io.read import load_image
from sidpipe.metrics import _nearest, evaluate, extract_patches
from sidpipe.quality import contact_sheet

PATCH = 7
QUERY_STRIDE = 2


def sample_path(out_dir: Path, stem: str, eta: float, steps: int, seed: int) -> Path:
    return out_dir / "samples" / f"{stem}_eta{eta:g}_T{steps}_s{seed}.png"


def generate(sidpipe: str, ref_path: Path, out: Path, eta: float, steps: int, seed: int,
             extra: list[str]) -> float:
    """Run `sidpipe run`; return its wall-clock seconds (process start to exit)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*shlex.split(sidpipe), "run", str(ref_path), "--out", str(out), "--seed", str(seed), "--eta", f"{eta:g}",
           "--steps", str(steps), "-q", *extra]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def coverage_profile(sample: np.ndarray, ref: np.ndarray) -> dict:
    """Per reference patch (every QUERY_STRIDE-th) RMS distance to the nearest sample patch, summarised."""
    q = extract_patches(ref, PATCH, QUERY_STRIDE)
    d2, _ = _nearest(q, extract_patches(sample, PATCH, 1))
    dist = torch.sqrt(d2.clamp_min(0.0)).double() / math.sqrt(q.shape[1])
    tail = torch.sort(dist, descending=True).values[: max(1, len(dist) // 10)]
    # Mean luminance of each reference patch (channels averaged): the brightest 5 % are the
    # bright minority (stars, lights, moon, aurora bands).
    lum = q.reshape(q.shape[0], ref.shape[0], -1).mean(dim=(1, 2)).double()
    bright = lum >= torch.quantile(lum, 0.95)
    return {"coverage": float(dist.mean()), "coverage_tail10": float(tail.mean()),
            "coverage_bright5": float(dist[bright].mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("references", nargs="+", type=Path)
    ap.add_argument("--settings", default="0:10,1:10,0:40,1:40", help="comma-separated eta:steps pairs")
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    ap.add_argument("--sidpipe", default=str(Path(sys.executable).with_name("sidpipe")),
                    help="sidpipe command used for generation (split like a shell line)")
    ap.add_argument("--run-arg", action="append", default=[],
                    help="extra argument passed to `sidpipe run` (repeatable, e.g. --run-arg=--set=rho=0.3)")
    ap.add_argument("--sheet-width", type=int, default=1600,
                    help="maximum contact sheet width in pixels (cells are never enlarged)")
    ap.add_argument("--sheet-colors", type=int, default=0,
                    help="save the sheets as palette PNGs with this many colours (<= 256; 0 = full colour): "
                         "small files for docs")
    ap.add_argument("--no-generate", action="store_true", help="only measure samples that exist")
    args = ap.parse_args()
    settings = [(float(e), int(t)) for e, t in (s.split(":") for s in args.settings.split(","))]
    seeds = [int(s) for s in args.seeds.split(",")]
    out_dir: Path = args.out_dir
    (out_dir / "sheets").mkdir(parents=True, exist_ok=True)
    times_file = out_dir / "times.json"
    times = json.loads(times_file.read_text()) if times_file.is_file() else {}

    rows = []
    head = (f"{'image':<14} {'eta':>3} {'T':>3} {'seed':>4} {'NN L0':>7} {'cov':>7} {'cov10':>7} {'covB':>7} "
            f"{'SWD':>7} {'copy':>6} {'secs':>6}")
    print(head, flush=True)
    for ref_path in args.references:
        ref = load_image(ref_path)
        stem = ref_path.stem
        by_key: dict = {}
        for eta, steps in settings:
            for seed in seeds:
                path = sample_path(out_dir, stem, eta, steps, seed)
                if not path.is_file():
                    if args.no_generate:
                        continue
                    times[path.name] = generate(args.sidpipe, ref_path, path, eta, steps, seed, args.run_arg)
                    times_file.write_text(json.dumps(times, indent=1))
                img = load_image(path)
                res = evaluate(ref, [img], patch=PATCH, query_stride=QUERY_STRIDE)
                row = {"image": stem, "eta": eta, "steps": steps, "seed": seed,
                       "nn_l0": res["nn_distance"][0], "nn_levels": res["nn_levels"][0],
                       "swd": res["swd"][0], "copy_rate": res["copy_rate"][0],
                       **coverage_profile(img, ref), "seconds": times.get(path.name), "file": path.name}
                rows.append(row)
                by_key[(eta, steps, seed)] = img
                secs = "" if row["seconds"] is None else f"{row['seconds']:6.1f}"
                print(f"{stem:<14} {eta:>3g} {steps:>3d} {seed:>4d} {row['nn_l0']:7.4f} {row['coverage']:7.4f} "
                      f"{row['coverage_tail10']:7.4f} {row['coverage_bright5']:7.4f} {row['swd']:7.4f} "
                      f"{row['copy_rate']:6.3f} {secs:>6}", flush=True)
            if len(seeds) >= 2 and all((eta, steps, s) in by_key for s in seeds[:2]):
                a, b = (by_key[(eta, steps, s)] for s in seeds[:2])
                diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() / 2.0)  # [0, 1] units
                for r in rows:
                    if (r["image"], r["eta"], r["steps"]) == (stem, eta, steps):
                        r["seed_pixel_diff01"] = diff
                print(f"{stem:<14} {eta:>3g} {steps:>3d} mean |seed {seeds[0]} - seed {seeds[1]}| = {diff:.4f} "
                      f"([0, 1] units)", flush=True)
        # Contact sheet: one row per seed, the reference first in every row, settings in columns.
        cells, labels = [], []
        for i, seed in enumerate(seeds):
            if i > 0:
                cells.append(ref)
                labels.append("reference")
            for eta, steps in settings:
                if (eta, steps, seed) in by_key:
                    cells.append(by_key[(eta, steps, seed)])
                    labels.append(f"eta {eta:g}, T {steps}, seed {seed}")
        if cells:
            sheet = contact_sheet(ref, cells, labels, ref_label=f"reference {stem}", max_width=args.sheet_width,
                                  max_cols=len(settings) + 1)
            if args.sheet_colors:
                sheet = sheet.quantize(colors=min(256, args.sheet_colors), method=Image.Quantize.MEDIANCUT,
                                       dither=Image.Dither.FLOYDSTEINBERG)
            sheet.save(out_dir / "sheets" / f"{stem}.png", optimize=True)

    (out_dir / "results.json").write_text(json.dumps(rows, indent=1))
    lines = ["| image | eta | T | seed | out→ref NN L0 | coverage | cov worst 10 % | cov bright 5 % | SWD | copy "
             "| |s0−s1| [0,1] | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = r.get("seed_pixel_diff01")
        secs = r["seconds"]
        lines.append(
            f"| {r['image']} | {r['eta']:g} | {r['steps']} | {r['seed']} | {r['nn_l0']:.4f} | {r['coverage']:.4f} "
            f"| {r['coverage_tail10']:.4f} | {r['coverage_bright5']:.4f} | {r['swd']:.4f} | {r['copy_rate']:.3f} "
            f"| {'' if diff is None else f'{diff:.4f}'} | {'' if secs is None else f'{secs:.0f}'} |")
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
