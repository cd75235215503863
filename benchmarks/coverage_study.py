"""Fidelity vs coverage of samples for several (eta, steps) settings (a study script, not a test).

For each reference and setting it prints the mean nearest-patch distance sample -> reference
(fidelity: low means every sample patch exists in the reference) and reference -> sample (coverage:
high means content of the reference is missing from the sample), 7x7 patches, and writes a contact
sheet so the samples can be looked at.

Usage: python benchmarks/coverage_study.py OUT_DIR REF [REF ...] [--settings 0:10,1:10,1:40]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from sidpipe.config import load_config
from sidpipe.io.read import load_image
from sidpipe.io.write import save_image
from sidpipe.metrics import coverage_distance, nn_patch_distance
from sidpipe.runner import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("references", nargs="+", type=Path)
    ap.add_argument("--settings", default="0:10,1:10", help="comma-separated eta:steps pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="extra config key=value")
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    extra = dict(kv.split("=", 1) for kv in args.set)
    settings = [(float(e), int(t)) for e, t in (s.split(":") for s in args.settings.split(","))]
    print(f"{'image':<16} {'eta':>4} {'T':>3} {'s->ref':>7} {'ref->s':>7} {'secs':>6}")
    for ref_path in args.references:
        ref = load_image(ref_path)
        row = [ref]
        for eta, steps in settings:
            cfg = load_config("default", {"eta": eta, "steps": steps, "seed": args.seed, **extra})
            t0 = time.perf_counter()
            (img,) = generate(ref, cfg)
            secs = time.perf_counter() - t0
            fid = nn_patch_distance(img, ref, query_stride=2)
            cov = coverage_distance(img, ref, query_stride=2)
            print(f"{ref_path.stem:<16} {eta:>4.1f} {steps:>3d} {fid:7.4f} {cov:7.4f} {secs:6.1f}", flush=True)
            save_image(args.out_dir / f"{ref_path.stem}_eta{eta:g}_T{steps}.png", img)
            row.append(img)
        sheet = np.concatenate([np.pad(r, ((0, 0), (0, 0), (0, 4)), constant_values=1.0) for r in row], axis=2)
        save_image(args.out_dir / f"{ref_path.stem}_sheet.png", sheet)


if __name__ == "__main__":
    main()
