"""Writing the reference pyramid into ref.zarr: streamed vs whole image in memory, side by side.

    python benchmarks/bench_refstream.py REF [--chunk 1024] [--tiff [--mosaic K]] [--threads N]

Each mode runs in its own process and reports wall and CPU time, peak RSS (ru_maxrss) and the peak RSS
right after the imports (the interpreter, torch, zarr, ...), so the difference is what the pyramid cost.
Linux carries ru_maxrss over fork + exec, so the parent stays small: it only starts processes (the
TIFF copy and the final comparison run in children too).

- memory: ``load_image`` + ``reference_pyramid`` + one ``create_array(data=level)`` per level (what the
  out-of-core runner did before the pyramid was streamed);
- stream: ``open_image`` + ``write_reference_pyramid`` (what it does now).

The levels are those of the default preset (auto number of scales, factor from the config). Both
outputs are then compared level by level. --tiff also runs both modes on a tiled (512 x 512) zstd
BigTIFF copy of REF, which `open_image` reads tile by tile instead of through libvips; with
--mosaic K that copy is K x K copies of REF side by side (K**2 times the pixels), to see how each
mode's peak grows with the image. --threads sets torch's thread count in both modes.
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


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, ref: str, out: str, chunk: int, threads: int) -> None:
    import torch
    import zarr

    from sidpipe.config import load_config
    from sidpipe.io.lazy import open_image
    from sidpipe.io.read import load_image
    from sidpipe.pyramid import auto_num_scales, reference_pyramid, scale_sizes
    from sidpipe.refstream import ome_multiscales, write_reference_pyramid

    if threads:
        torch.set_num_threads(threads)
    baseline = _peak_mib()
    start, cpu = time.perf_counter(), time.process_time()
    cfg = load_config("default")
    with open_image(ref) as image:
        channels, h, w = image.shape
        n = auto_num_scales(h, w, cfg.patch_size, cfg.coarsest_ratio, cfg.scale_factor)
        sizes = scale_sizes(h, w, n, cfg.scale_factor)
        group = zarr.open_group(out, mode="w")
        if mode == "stream":
            write_reference_pyramid(image, sizes, group, chunk=chunk)
        else:
            for s, level in enumerate(reference_pyramid(torch.from_numpy(load_image(ref)), sizes)):
                group.create_array(str(s), data=level.numpy(), chunks=(channels, chunk, chunk), overwrite=True)
            group.attrs["ome"] = ome_multiscales(sizes, "reference")
    print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
                      "baseline_mib": baseline, "peak_mib": _peak_mib(),
                      "sizes": sizes, "threads": torch.get_num_threads()}))


def tiff_copy(ref: str, out: str, mosaic: int) -> None:
    import tifffile

    from sidpipe.io.read import load_image
    from sidpipe.io.write import _quantise

    tifffile.imwrite(out, np.tile(_quantise(load_image(ref), 8), (mosaic, mosaic, 1)), bigtiff=True,
                     tile=(512, 512), compression="zstd", photometric="rgb")
    print(json.dumps({}))


def same_levels(a: str, b: str) -> None:
    import zarr

    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    names = sorted(ga.array_keys(), key=int)
    same = names == sorted(gb.array_keys(), key=int) and all(
        np.array_equal(ga[n][...], gb[n][...]) for n in names) and ga.attrs["ome"] == gb.attrs["ome"]
    print(json.dumps({"same": same}))


def spawn(*args: str) -> dict:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ref")
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--tiff", action="store_true", help="also run on a tiled zstd BigTIFF copy of REF")
    ap.add_argument("--mosaic", type=int, default=1, help="the BigTIFF copy holds K x K copies of REF")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--child", choices=["memory", "stream", "tiff", "compare"])
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child in ("memory", "stream"):
        child(args.child, args.ref, args.out, args.chunk, args.threads)
        return
    if args.child == "tiff":
        tiff_copy(args.ref, args.out, args.mosaic)
        return
    if args.child == "compare":
        same_levels(args.ref, args.out)
        return

    with tempfile.TemporaryDirectory() as tmp:
        inputs = [Path(args.ref)]
        if args.tiff:
            copy = Path(tmp) / (Path(args.ref).stem + (f"-mosaic{args.mosaic}" if args.mosaic > 1 else "") + ".tif")
            spawn(args.ref, "--child", "tiff", "--out", str(copy), "--mosaic", str(args.mosaic))
            inputs.append(copy)
        for ref in inputs:
            results = {}
            for mode in ("memory", "stream"):
                results[mode] = spawn(str(ref), "--child", mode, "--out", str(Path(tmp) / f"{mode}.zarr"),
                                      "--chunk", str(args.chunk), "--threads", str(args.threads))
            sizes = results["stream"]["sizes"]
            print(f"{ref.name}: levels {[f'{w}x{h}' for h, w in sizes]}, chunk {args.chunk}, "
                  f"torch threads {results['stream']['threads']}")
            print(f"{'mode':>8} {'wall s':>7} {'CPU s':>7} {'peak MiB':>9} {'after imports':>14} {'pyramid cost':>13}")
            for mode, r in results.items():
                print(f"{mode:>8} {r['seconds']:7.1f} {r['cpu_seconds']:7.1f} {r['peak_mib']:9.0f} "
                      f"{r['baseline_mib']:14.0f} {r['peak_mib'] - r['baseline_mib']:13.0f}")
            same = spawn(str(Path(tmp) / "memory.zarr"), "--child", "compare", "--out", str(Path(tmp) / "stream.zarr"))
            print(f"same levels and metadata: {same['same']}", flush=True)


if __name__ == "__main__":
    main()
