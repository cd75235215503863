"""Exact vs IVF on this machine: the per-call crossover and a Table-2-style grid (a benchmark, not a test).

  python benchmarks/bench_index.py crossover REF            per-call seconds, exact vs IVF, N = 1k..32k
  python benchmarks/bench_index.py grid REF [REF ...]       seconds and peak RSS per output size and mode
         [--sizes 256,512,1024,2048,4096] [--modes exact-fp32,exact-bf16,ivf] [--limit 900] [--set k=v ...]
         [--ref-mp 1.0]   resize every reference to ~1.0 megapixels first (antialiased, aspect kept)

Every grid cell runs in its own process (peak RSS is that process's). A cell whose predicted time
(the previous size's measured time times the pixel ratio, or a FLOP estimate for the exact modes)
exceeds --limit seconds is skipped and printed as such. The IVF column's times are fitted to
seconds ~ pixels^e over the sizes >= 1 MP and the exponent is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sidpipe.config import load_config
from sidpipe.denoise import KNNDenoiser, PatchDenoiser, flops_per_call
from sidpipe.devices import resolve_precision
from sidpipe.index import IVFIndex, PatchGrid
from sidpipe.io.read import load_image
from sidpipe.patches import window_radius
from sidpipe.pyramid import resize
from sidpipe.plan import ivf_params, make_plan
from sidpipe.runner import generate

MODES = {"exact-fp32": {"index": "exact", "precision": "fp32"},
         "exact-bf16": {"index": "exact", "precision": "bf16"},
         "ivf": {"index": "ivf"}}


def crossover(ref_path: Path, extra: dict) -> None:
    cfg = load_config("default", extra)
    full = torch.from_numpy(load_image(ref_path))
    p, prec = cfg.patch_size, resolve_precision(cfg.precision, torch.device("cpu"))
    alpha, sigma = 0.8, 0.2
    print(f"per call at t = 2 of 10, output = reference size (N queries, N keys), exact {prec}, IVF nprobe {cfg.nprobe}")
    print(f"{'size':>9} {'N':>7} {'exact s':>8} {'ivf s':>7} {'exact us/q':>10} {'ivf us/q':>9}")
    for side in (48, 64, 90, 128, 180, 248):
        h = max(p + 1, round(side * full.shape[1] / full.shape[2]))
        level = resize(full, (h, side)) if side < full.shape[2] else full
        x = alpha * level.flip(-1) + sigma * torch.randn(level.shape, generator=torch.Generator().manual_seed(0))
        grid = PatchGrid(*level.shape, p)
        exact = PatchDenoiser(level, patch_size=p, rho=cfg.rho, precision=prec, query_block=cfg.query_block)
        knn = KNNDenoiser(level, IVFIndex.build(level, grid, ivf_params(cfg)), k=cfg.knn, patch_size=p, rho=cfg.rho,
                          query_block=cfg.query_block)
        times = []
        for den in (exact, knn):
            den(x, alpha, sigma)
            t0 = time.perf_counter()
            den(x, alpha, sigma)
            times.append(time.perf_counter() - t0)
        n = grid.size
        print(f"{level.shape[2]:>4}x{level.shape[1]:<4} {n:>7} {times[0]:8.3f} {times[1]:7.3f} "
              f"{1e6 * times[0] / n:10.2f} {1e6 * times[1] / n:9.2f}", flush=True)


def reference(ref_path: Path, megapixels: float = 0.0) -> np.ndarray:
    """The reference image, resized to ~megapixels (aspect kept) when given."""
    ref = load_image(ref_path)
    if megapixels:
        h, w = ref.shape[-2:]
        f = math.sqrt(megapixels * 1e6 / (h * w))
        ref = resize(torch.from_numpy(ref), (round(h * f), round(w * f))).numpy()
    return ref


def cell(ref_path: Path, size: int, mode: str, extra: dict, megapixels: float = 0.0) -> dict:
    """One grid cell in this process: one sample of size x size; returns seconds and peak RSS."""
    ref = reference(ref_path, megapixels)
    cfg = load_config("default", {**MODES[mode], **extra, "width": size, "height": size})
    plan = make_plan(cfg, ref.shape[-2:])
    t0 = time.perf_counter()
    generate(ref, cfg, plan=plan)
    secs = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"seconds": secs, "rss_gib": rss, "indexes": plan.indexes}


def exact_estimate(ref_hw: tuple[int, int], size: int, mode: str, extra: dict, gflops: float) -> float:
    cfg = load_config("default", {**MODES[mode], **extra, "width": size, "height": size})
    plan = make_plan(cfg, ref_hw)
    r = window_radius(cfg.patch_size, cfg.rho, cfg.fold_truncate)
    flops = sum(cfg.steps * flops_per_call((oh - cfg.patch_size + 1) * (ow - cfg.patch_size + 1), n, 3, cfg.patch_size, r)
                for (oh, ow), n in zip(plan.out_sizes, plan.patches))
    return flops / (gflops * 1e9)


def grid(refs: list[Path], sizes: list[int], modes: list[str], limit: float, extra: dict, megapixels: float = 0.0) -> None:
    # effective GFLOP/s of the exact denoiser measured by bench_denoiser.py on this machine (129.8 and 433.0)
    rate = {"exact-fp32": 130.0, "exact-bf16": 430.0}
    print(f"{'reference':<22} {'output':>10} " + " ".join(f"{m:>22}" for m in modes))
    ivf_times: dict[str, list[tuple[int, float]]] = {}
    for ref_path in refs:
        h, w = reference(ref_path, megapixels).shape[-2:]
        last: dict[str, tuple[int, float]] = {}
        for size in sizes:
            cells = []
            for mode in modes:
                if mode in last:
                    guess = last[mode][1] * (size / last[mode][0]) ** 2
                elif mode.startswith("exact"):
                    guess = exact_estimate((h, w), size, mode, extra, rate[mode])
                else:
                    guess = 0.0
                if guess > limit:
                    cells.append(f"skip (~{guess / 60:.0f} min)")
                    continue
                args = [sys.executable, __file__, "cell", str(ref_path), str(size), mode, "--ref-mp", str(megapixels),
                        *sum((["--set", f"{k}={v}"] for k, v in extra.items()), [])]
                res = subprocess.run(args, capture_output=True, text=True)
                if res.returncode != 0:
                    cells.append("failed")
                    print(res.stderr[-2000:], file=sys.stderr)
                    continue
                out = json.loads(res.stdout.strip().splitlines()[-1])
                last[mode] = (size, out["seconds"])
                if mode == "ivf":
                    ivf_times.setdefault(ref_path.name, []).append((size, out["seconds"]))
                cells.append(f"{out['seconds']:8.1f} s {out['rss_gib']:5.2f} GiB")
            print(f"{ref_path.name + f' {w}x{h}':<22} {f'{size}x{size}':>10} " + " ".join(f"{c:>22}" for c in cells), flush=True)
    for name, pts in ivf_times.items():
        big = [(s * s, t) for s, t in pts if s * s >= 1_000_000]
        if len(big) >= 2:
            e = np.polyfit(np.log([p for p, _ in big]), np.log([t for _, t in big]), 1)[0]
            print(f"{name}: IVF seconds ~ pixels^{e:.3f} over {', '.join(f'{int(math.sqrt(p))}^2' for p, _ in big)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["crossover", "grid", "cell"])
    ap.add_argument("args", nargs="+")
    ap.add_argument("--sizes", default="256,512,1024,2048,4096")
    ap.add_argument("--modes", default="exact-fp32,exact-bf16,ivf")
    ap.add_argument("--limit", type=float, default=900.0, help="skip cells predicted to take longer (seconds)")
    ap.add_argument("--set", action="append", default=[], help="config key=value for every run")
    ap.add_argument("--ref-mp", type=float, default=0.0, help="resize references to ~this many megapixels first")
    a = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in a.set)
    torch.set_num_threads(torch.get_num_threads())
    if a.what == "crossover":
        crossover(Path(a.args[0]), extra)
    elif a.what == "cell":
        print(json.dumps(cell(Path(a.args[0]), int(a.args[1]), a.args[2], extra, a.ref_mp)))
    else:
        grid([Path(p) for p in a.args], [int(s) for s in a.sizes.split(",")], a.modes.split(","), a.limit, extra, a.ref_mp)


if __name__ == "__main__":
    main()
