"""Where a finished out-of-core run spent its time, per scale and per tile, and what a bigger output would cost.

    sidpipe run REF --out big.tif --size 4096x4096 --keep-workdir
    python benchmarks/run_profile.py big.tif.sidpipe --output big.tif --project 32768x32768

Reads the run directory's manifest and the completion markers (each stage's `.done` file is written
when the stage ends, so consecutive marker times are stage durations: the reference pyramid, each
scale's index build, and every pass A (denoise) / B (blend + reverse step) of every step). Prints the
measured seconds per scale and per tile, then projects a run of another output size from the same
reference: the same scales, indexes and query strides apply, so each scale costs its measured
seconds per tile times the projected number of tiles. Where the projected scale has a larger query
stride than the measured one the measured per-tile figure is kept (an upper bound: fewer queries).
Index building does not depend on the output size and is carried over; writing the output scales with
its pixel count (from --output's time after the last marker). A latent run (`--codec vae`) also reports
the tiled encode of the reference (carried over: same reference) and the tiled decode (scaled with the
output's pixels); its scales are in latent px, and --project is still given in output px.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def stage_times(run_dir: Path) -> list[tuple[str, float]]:
    """(stage name, seconds) in completion order; the first stage is timed from the manifest's write."""
    markers = sorted((p.stat().st_mtime, p.name[: -len(".done")]) for p in (run_dir / "markers").glob("*.done"))
    start = (run_dir / "manifest.json").stat().st_mtime
    out, last = [], start
    for mtime, name in markers:
        out.append((name, max(0.0, mtime - last)))
        last = mtime
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--output", type=Path, help="the finished output file (times the final write)")
    ap.add_argument("--project", default="32768x32768", help="output size WxH to project to")
    args = ap.parse_args()

    from sidpipe.config import Config
    from sidpipe.plan import ivf_params, resolve_query_strides
    from sidpipe.pyramid import scale_sizes
    from sidpipe.tiles import tile_boxes

    def tiles(size: tuple[int, int], tile: int) -> int:
        return len(tile_boxes(*size, tile))

    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    plan, tile = manifest["plan"], manifest["layout"]["tile"]
    cfg = Config(**manifest["identity"]["config"])
    out_sizes = [tuple(s) for s in plan["out_sizes"]]
    strides = resolve_query_strides(cfg, out_sizes)
    stages = dict(stage_times(args.run_dir))
    last_marker = max(p.stat().st_mtime for p in (args.run_dir / "markers").glob("*.done"))

    n = len(out_sizes)
    h, w = out_sizes[0]
    vae = manifest["identity"].get("vae")  # a latent run: sizes above are latent px, the output is in px
    factor = manifest["identity"]["output_pixels"][0] // h if vae else 1
    unit = f" latent px ({factor}x down, {vae['kind']} VAE)" if vae else ""
    print(f"measured run: {w}x{h}{unit}, tile {tile}, {n} scales, reference {plan['ref_sizes'][0][1]}x{plan['ref_sizes'][0][0]}")
    encode = decode = 0.0
    if vae:
        encode = stages.get("encode-state", 0.0) + stages.get("encode", 0.0)
        decode = stages.get("decode-state", 0.0) + stages.get("decode", 0.0)
        print(f"  encode the reference (tiled)      {encode:8.1f} s")
    print(f"  reference pyramid into ref.zarr   {stages.get('reference', float('nan')):8.1f} s")
    build = sum(v for k, v in stages.items() if k.startswith("index-"))
    print(f"  index builds (all scales)         {build:8.1f} s")
    print(f"{'scale':>5} {'output':>11} {'patches':>9} {'index':>22} {'qs':>2} {'tiles':>5} "
          f"{'A s':>8} {'B s':>7} {'s/tile':>8} {'us/px':>6}")
    per_tile = {}
    sampling = 0.0
    for s in range(n - 1, -1, -1):
        a = sum(v for k, v in stages.items() if k.startswith(f"s{s}-t") and k.endswith("-A"))
        b = sum(v for k, v in stages.items() if k.startswith(f"s{s}-t") and k.endswith("-B"))
        nt = tiles(out_sizes[s], tile)
        per_tile[s] = (a + b) / nt
        sampling += a + b
        sh, sw = out_sizes[s]
        kind = plan["indexes"][s]
        dim = manifest["layout"]["channels"] * cfg.patch_size ** 2
        spec = ivf_params(cfg, plan["patches"][s], dim).factory(dim, plan["patches"][s]) if kind == "ivf" else ""
        print(f"{s:>5} {f'{sw}x{sh}':>11} {plan['patches'][s]:>9} {(spec or kind):>22} {strides[s]:>2} {nt:>5} "
              f"{a:8.1f} {b:7.1f} {per_tile[s]:8.2f} {1e6 * (a + b) / (sh * sw):6.2f}")
    if vae:
        print(f"  decode (tiled, statistics incl.)  {decode:8.1f} s")
    write = None
    if args.output is not None and args.output.exists():
        write = max(0.0, args.output.stat().st_mtime - last_marker)
    print(f"  sampling, all scales              {sampling:8.1f} s")
    if write is not None:
        print(f"  writing the output                {write:8.1f} s")

    pw, ph = (int(v) for v in args.project.lower().split("x"))
    if vae:  # sampled in latent px; encoding the same reference is carried over, decoding scales with pixels
        pw, ph = -(-pw // factor), -(-ph // factor)
    proj_sizes = scale_sizes(ph, pw, n, cfg.scale_factor, min_side=cfg.patch_size)
    proj_strides = resolve_query_strides(cfg, proj_sizes)
    print(f"\nprojection: {pw}x{ph} ({pw * ph / 1e9:.2f} GP) from the same reference, same settings")
    total = stages.get("reference", 0.0) + build + encode
    for s in range(n - 1, -1, -1):
        nt = tiles(proj_sizes[s], tile)
        cost = nt * per_tile[s]
        total += cost
        note = "" if proj_strides[s] == strides[s] else f"  (measured at stride {strides[s]}: upper bound)"
        print(f"  scale {s}: {proj_sizes[s][1]}x{proj_sizes[s][0]}, stride {proj_strides[s]}, {nt} tiles x "
              f"{per_tile[s]:.2f} s = {cost / 60:7.1f} min{note}")
    if vae:
        dcost = decode * (pw * ph) / (w * h)
        total += dcost
        print(f"  decode: {dcost / 60:.1f} min (measured {decode:.1f} s x {pw * ph / (w * h):.0f}); "
              f"encode carried over ({encode:.1f} s)")
    if write is not None:
        wcost = write * (pw * ph) / (w * h)
        total += wcost
        print(f"  writing: {wcost / 60:.1f} min (measured {write:.1f} s x {pw * ph / (w * h):.0f})")
    state_gb = 3 * 4 * manifest["layout"]["channels"] * pw * ph / 1e9  # x0, x1, xhat float32, finest scale
    print(f"  total: {total / 3600:.2f} h on this machine; finest-scale state on disk ~{state_gb:.0f} GB")


if __name__ == "__main__":
    main()
