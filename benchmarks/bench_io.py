"""Huge-image I/O throughput and memory: stream a ~256-MP BigTIFF, then read a region of it (a benchmark, not a test).

  python benchmarks/bench_io.py [--side 16384] [--codecs zlib,zstd] [--tile 512] [--dir DIR] [--pyramid]
                                [--output-profile FILE.icc [--intent relative] [--bpc]]

For each codec, `write_bigtiff` streams a side x side RGB 8-bit image from a synthetic source; with
--pyramid, `build_levels` first writes the reduced levels to a zarr group and the TIFF gets them as
SubIFDs. With --output-profile every tile is converted from sRGB to that profile while it is written
(a CMYK profile gives a CMYK TIFF), as `sidpipe run --output-profile` does. Then `open_image` reads one 512 x 512 region of the zlib file. Every case runs in its own
process, so peak RSS (resource.getrusage) is that case's alone. MB/s counts the raw 8-bit bytes of
level 0 (side² x 3) per wall-clock second.

The source is cheap but compresses like a photo, not like a flat or repeating pattern:
tests/data/starry_night.png tiled (period 198 x 252 px) plus fixed pseudo-random noise of a
coprime period (509 px), so no long exact repeats fall within a codec's window.
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
import zarr

from sidpipe.io.bigtiff import build_levels, write_bigtiff
from sidpipe.io.color import Conversion, output_profile, srgb
from sidpipe.io.lazy import open_image
from sidpipe.io.read import load_image

REF = Path(__file__).resolve().parents[1] / "tests" / "data" / "starry_night.png"
NOISE_PERIOD = 509


class TiledPhotoSource:
    """A (3, side, side) region source: a small photo tiled, plus fixed noise of another period."""

    def __init__(self, side: int) -> None:
        self.photo = load_image(REF)
        self.noise = np.random.default_rng(0).normal(0, 0.008, (3, NOISE_PERIOD, NOISE_PERIOD)).astype(np.float32)
        self.shape = (3, side, side)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        ys, xs = np.arange(y0, y1), np.arange(x0, x1)
        _, ph, pw = self.photo.shape
        photo = self.photo[:, ys % ph][:, :, xs % pw]
        noise = self.noise[:, ys % NOISE_PERIOD][:, :, xs % NOISE_PERIOD]
        return np.clip(photo + noise, -1, 1)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def case_write(side: int, codec: str, tile: int, folder: Path, pyramid: bool, convert: list[str]) -> dict:
    conversion = None
    if convert:
        path, intent, bpc = convert
        conversion = Conversion(srgb(), output_profile(path), Path(path), intent, bpc == "1")
    source = TiledPhotoSource(side)
    t0 = time.perf_counter()
    levels = [source]
    if pyramid:
        levels += build_levels(source, zarr.open_group(folder / f"levels-{codec}.zarr", mode="w"))
    t_levels = time.perf_counter() - t0
    out = folder / f"bench-{codec}.tif"
    write_bigtiff(out, levels, tile=tile, compression=codec, dpi=300, icc=srgb().data, conversion=conversion)
    wall = time.perf_counter() - t0
    raw = side * side * 3
    label = f"write {codec}" + (" +pyramid" if pyramid else "") + (f" ->{conversion.target.space}" if conversion else "")
    return {"case": label, "wall_s": wall,
            "levels_s": t_levels, "MB_per_s": raw / wall / 1e6, "file_MB": out.stat().st_size / 1e6,
            "ratio": raw / out.stat().st_size, "subifds": len(levels) - 1, "peak_rss_MB": peak_rss_mb()}


def case_read(path: Path) -> dict:
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    with open_image(path) as image:
        _, h, w = image.shape
        region = image.read(h // 2, h // 2 + 512, w // 3, w // 3 + 512)
    wall = time.perf_counter() - t0
    return {"case": f"read 512x512 of {h}x{w} {path.name}", "wall_s": wall, "shape": list(region.shape),
            "peak_rss_MB": peak_rss_mb(), "rss_before_MB": rss0}


def run_case(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--case", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=16384)
    parser.add_argument("--codecs", default="zlib,zstd")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp folder)")
    parser.add_argument("--pyramid", action="store_true", help="also build levels and write them as SubIFDs")
    parser.add_argument("--output-profile", type=Path, help="convert every tile to this ICC profile (e.g. CMYK)")
    parser.add_argument("--intent", default="relative")
    parser.add_argument("--bpc", action="store_true", help="black point compensation")
    parser.add_argument("--case", nargs="+", help=argparse.SUPPRESS)  # internal: one case in this process
    args = parser.parse_args()

    if args.case:
        kind, *rest = args.case
        if kind == "write":
            codec, side, tile, folder, pyramid, *convert = rest
            result = case_write(int(side), codec, int(tile), Path(folder), pyramid == "1", convert)
        else:
            result = case_read(Path(rest[0]))
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        print(f"{args.side}x{args.side} RGB 8-bit ({args.side**2 / 1e6:.0f} MP, {3 * args.side**2 / 1e6:.0f} MB raw), "
              f"tile {args.tile}, one process per case")
        convert = [str(args.output_profile), args.intent, "1" if args.bpc else "0"] if args.output_profile else []
        cases = [["write", c, str(args.side), str(args.tile), tmp, "0", *convert] for c in args.codecs.split(",")]
        if args.pyramid:
            cases += [["write", c, str(args.side), str(args.tile), tmp, "1", *convert] for c in args.codecs.split(",")]
        for case in cases:
            r = run_case(case)
            print(f"{r['case']:<22} {r['wall_s']:7.1f} s  {r['MB_per_s']:6.1f} MB/s  file {r['file_MB']:7.1f} MB "
                  f"(x{r['ratio']:.2f})  SubIFDs {r['subifds']}  levels {r['levels_s']:.1f} s  "
                  f"peak RSS {r['peak_rss_MB']:.0f} MB")
        zlib = folder / "bench-zlib.tif"
        if zlib.exists():
            r = run_case(["read", str(zlib)])
            print(f"{r['case']}: {r['wall_s'] * 1e3:.0f} ms, peak RSS {r['peak_rss_MB']:.0f} MB "
                  f"(after imports {r['rss_before_MB']:.0f} MB)")


if __name__ == "__main__":
    main()
