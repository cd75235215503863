"""Print measured speed of the exact denoiser and of whole samples (a benchmark, not a test).

Usage: python benchmarks/bench_denoiser.py REFERENCE [--samples-configs paper-table1,default] [--no-samples]

Figures printed, all measured in this run on this machine:
  * plain matmul GFLOP/s, fp32 and bf16, at the denoiser's shape (query block x N keys x d);
  * one exact denoiser call at the finest scale: seconds and effective GFLOP/s (2 * Nq * Nk * (d + dv + 1),
    both products counted, from denoise.flops_per_call) for fp32 and bf16 products, and the ratio to the same-dtype matmul;
  * seconds per sample (whole coarse-to-fine run) for each named preset.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sidpipe.config import load_config
from sidpipe.devices import cpu_has_bf16
from sidpipe.denoise import PatchDenoiser, flops_per_call
from sidpipe.io.read import load_image
from sidpipe.patches import patch_grid, window_radius
from sidpipe.runner import generate, make_plan


def best_of(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_gflops(m: int, n: int, k: int, dtype: torch.dtype, repeats: int = 3) -> float:
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(n, k).to(dtype)
    return 2.0 * m * n * k / best_of(lambda: a @ b.T, repeats) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference")
    ap.add_argument("--configs", default="paper-table1,default", help="presets to time whole samples with")
    ap.add_argument("--no-samples", action="store_true", help="only the denoiser and matmul figures")
    ap.add_argument("--query-block", type=int, default=None)
    ap.add_argument("--bf16", action="store_true",
                    help="time the bf16 denoiser even on a CPU without native bf16 (there it takes ~15 min)")
    args = ap.parse_args()

    ref = torch.from_numpy(load_image(args.reference))
    c, h, w = ref.shape
    cfg = load_config("default")
    if args.query_block:
        cfg = cfg.replace(query_block=args.query_block)
    p = cfg.patch_size
    hp, wp = patch_grid(h, w, p)
    n = hp * wp
    d = c * p * p
    r = window_radius(p, cfg.rho, cfg.fold_truncate)
    dv = c * (2 * r + 1) ** 2
    block = cfg.query_block**2
    print(f"reference {w}x{h}x{c}, p={p}: N = {n} patches, d = {d}, value window {2 * r + 1}^2 (dv = {dv})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    mm = {name: matmul_gflops(block, n, d, dt) for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    for name, g in mm.items():
        print(f"matmul {name}: {block} x {n} x {d}: {g:7.1f} GFLOP/s")

    x = 0.7 * ref.flip(-1) + 0.3 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    flops = flops_per_call(n, n, c, p, r)
    for prec in ("fp32", "bf16"):
        if prec == "bf16" and not cpu_has_bf16() and not args.bf16:
            print(f"exact denoiser bf16: skipped, this CPU has no native bf16 (matmul {mm['bf16']:.1f} GFLOP/s: "
                  f"one call would take ~{flops / mm['bf16'] / 1e9:.0f} s or more; --bf16 times it anyway)")
            continue
        den = PatchDenoiser(ref, patch_size=p, rho=cfg.rho, truncate=cfg.fold_truncate, precision=prec,
                            query_block=cfg.query_block)
        secs = best_of(lambda: den(x, 0.7, 0.3), repeats=1)
        eff = flops / secs / 1e9
        print(f"exact denoiser {prec}: {secs:6.2f} s per call at {w}x{h}, {eff:7.1f} GFLOP/s effective "
              f"= {100 * eff / mm[prec]:.0f}% of {prec} matmul, {100 * eff / mm['bf16']:.0f}% of bf16 matmul")

    if args.no_samples:
        return
    for preset in args.configs.split(","):
        cfg = load_config(preset, {"seed": 0})
        plan = make_plan(cfg, (h, w))
        t0 = time.perf_counter()
        generate(ref.numpy(), cfg, plan=plan)
        secs = time.perf_counter() - t0
        print(f"sample [{preset}] ({plan.num_scales} scales, T={cfg.steps}, precision {plan.precision}): "
              f"{secs:6.1f} s per sample")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
