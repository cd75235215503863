"""Quality cost of the IVF index: exact vs IVF samples on a set of references (a study script, not a test).

For each reference it generates one sample (seed 0, default preset) with every scale exact and with
`--index auto` (IVF at the fine scales) for each nprobe given, and prints the mean nearest-patch
distance output -> reference (7x7, RMS per pixel), the coverage distance reference -> output, the
seconds, and the recall@5 of the finest scale's IVF index for noisy queries at t = 1, 2 and 5 of 10.
The last lines give the mean IVF / exact ratio of each figure (the target: within 10 %).

Usage: python benchmarks/ann_quality.py OUT_DIR REF [REF ...] [--nprobe 1,4] [--no-exact] [--set key=value ...]
       [--baseline FILE]   with --no-exact: take the exact rows from FILE, an earlier output of this script
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from sidpipe.config import load_config, parse_set
from sidpipe.index import ExactIndex, IVFIndex, PatchGrid
from sidpipe.io.read import load_image
from sidpipe.io.write import save_image
from sidpipe.metrics import coverage_distance, nn_patch_distance
from sidpipe.patches import unfold
from sidpipe.pyramid import reference_pyramid
from sidpipe.plan import ivf_params, make_plan
from sidpipe.runner import generate


def recalls_at(ref: np.ndarray, cfg, plan, alphas: tuple[float, ...], n_queries: int = 2000) -> list[float]:
    """recall@k of the finest scale's IVF index (the run's own kind, built once) for noisy patches of the
    mirrored reference / alpha, at each alpha."""
    level = reference_pyramid(torch.from_numpy(ref), plan.ref_sizes)[0]
    grid = PatchGrid(*level.shape, cfg.patch_size, cfg.dataset_stride)
    index = IVFIndex.build(level, grid, ivf_params(cfg, grid.size, grid.dim))
    exact = ExactIndex(level, grid)
    out = []
    for alpha in alphas:
        g = torch.Generator().manual_seed(0)
        x = alpha * level.flip(-1) + (1 - alpha) * torch.randn(level.shape, generator=g)
        q = unfold(x, cfg.patch_size) / alpha
        q = q[torch.randperm(q.shape[0], generator=g)[:n_queries]]
        _, found = index.search(q, cfg.knn, k_factor=cfg.rerank)
        _, truth = exact.search(q, cfg.knn)
        out.append(float(np.mean([len(set(a) & set(b)) / cfg.knn for a, b in zip(found, truth)])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("references", nargs="+", type=Path)
    ap.add_argument("--nprobe", default="1,4", help="comma-separated nprobe values for the IVF runs")
    ap.add_argument("--no-exact", action="store_true", help="skip the exact runs (IVF figures only)")
    ap.add_argument("--set", action="append", default=[], help="config key=value for the IVF runs (e.g. nprobe_last=4)")
    ap.add_argument("--baseline", type=Path, help="an earlier output of this script whose exact rows are the baseline")
    args = ap.parse_args()
    extra = parse_set(args.set)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    nprobes = [int(v) for v in args.nprobe.split(",")]
    runs = ([("exact", {"index": "exact"})] if not args.no_exact else []) + [
        (f"ivf-np{n}", {"index": "auto", "nprobe": n, **extra}) for n in nprobes]
    print(f"{'image':<18} {'run':<9} {'indexes':<26} {'out->ref':>8} {'ref->out':>8} {'secs':>6} {'recall t=1/2/5':>16}",
          flush=True)
    table: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in runs}
    for path in args.references:
        ref = load_image(path)
        for name, over in runs:
            cfg = load_config("default", {"seed": 0, **over})
            plan = make_plan(cfg, ref.shape[-2:])
            t0 = time.perf_counter()
            out = generate(ref, cfg, plan=plan)[0]
            secs = time.perf_counter() - t0
            save_image(args.out_dir / f"{path.stem}_{name}.png", out)
            fid, cov = nn_patch_distance(out, ref), coverage_distance(out, ref)
            table[name].append((fid, cov))
            rec = ""
            if "ivf" in plan.indexes:
                rec = "/".join(f"{r:.2f}" for r in recalls_at(ref, cfg, plan, (0.9, 0.8, 0.5)))
            print(f"{path.stem:<18} {name:<9} {','.join(plan.indexes):<26} {fid:8.4f} {cov:8.4f} {secs:6.1f} {rec:>16}",
                  flush=True)
    if args.baseline and not table.get("exact"):
        rows = {}
        for line in args.baseline.read_text().splitlines():
            f = line.lstrip("> ").split()
            if len(f) >= 5 and f[1] == "exact":
                rows[f[0]] = (float(f[3]), float(f[4]))
        missing = [p.stem for p in args.references if p.stem not in rows]
        if missing:
            print(f"baseline has no exact row for {', '.join(missing)}: ratios over the others only")
        keep = [i for i, p in enumerate(args.references) if p.stem in rows]
        table = {name: [r[i] for i in keep] for name, r in table.items()}
        table["exact"] = [rows[args.references[i].stem] for i in keep]
    if "exact" in table and table["exact"]:
        base = np.array(table["exact"])
        for name, rows in table.items():
            if name != "exact":
                ratio = np.array(rows) / base
                print(f"{name}: mean ratio to exact: out->ref {ratio[:, 0].mean():.3f} (max {ratio[:, 0].max():.3f}), "
                      f"ref->out {ratio[:, 1].mean():.3f} (max {ratio[:, 1].max():.3f})")


if __name__ == "__main__":
    main()
