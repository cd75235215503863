"""`sidpipe run`: generate images from one reference."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from sidpipe.cluster import load_settings, split_overrides
from sidpipe.config import load_config, parse_set, preset_cluster
from sidpipe.errors import SidpipeError
from sidpipe.io.units import parse_size as parse_print_size

from . import app, fail
from .progress import Reporter


@app.command("run")
def run(
    input: Annotated[Path, typer.Argument(help="Reference image (PNG, JPEG or TIFF).", show_default=False)],
    *,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file; its extension picks the format (.png, .tif, .jpg).")],
    size: Annotated[Optional[str], typer.Option(help="Output size WxH in pixels, or with a unit and --dpi: "
                                                "300x200cm, 40x30in, 900x600mm (default: the reference's size).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed; sample k uses seed + k.")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Number of images; >1 writes OUT-stem_000.ext, _001, ...")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Diffusion steps T per scale.")] = None,
    eta: Annotated[Optional[float], typer.Option(help="Stochasticity in [0, 1] (0 = deterministic DDIM).")] = None,
    patch_size: Annotated[Optional[int], typer.Option("--patch-size", help="Patch size p (odd).")] = None,
    preset: Annotated[str, typer.Option(help="Preset from configs/ (name) or a YAML file.")] = "default",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any config key: --set key=value (repeatable).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda")] = None,
    index: Annotated[Optional[str], typer.Option(help="Nearest-neighbour search: auto | exact | ivf")] = None,
    tile_size: Annotated[int, typer.Option("--tile-size", help="Compute tile side (px) of the out-of-core pipeline; "
                                           "outputs larger than one tile run out of core.")] = 1024,
    workers: Annotated[int, typer.Option(help="Tiles computed at once (0 = one per core).")] = 0,
    scheduler: Annotated[str, typer.Option(help="threads | processes | distributed (a LocalCluster)")] = "threads",
    address: Annotated[Optional[str], typer.Option(help="Join an existing dask scheduler, e.g. tcp://host:8786.")] = None,
    cluster: Annotated[Optional[str], typer.Option(help="slurm: compute the tiles in Slurm worker jobs (settings: "
                                                   "configs/cluster/slurm.yaml, site/user files, --set cluster.KEY=V).")] = None,
    jobs: Annotated[int, typer.Option(help="With --cluster: at most this many worker jobs.")] = 4,
    workdir: Annotated[Optional[Path], typer.Option(help="Run directory (default: OUT.sidpipe beside the output); "
                                                    "giving one forces the out-of-core pipeline.")] = None,
    keep_workdir: Annotated[bool, typer.Option("--keep-workdir", help="Keep the run directory after success.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Discard an unfinished run of a different job.")] = False,
    compression: Annotated[str, typer.Option(help="TIFF compression: zlib | zstd | lzw | jpeg | none")] = "zlib",
    bit_depth: Annotated[int, typer.Option("--bit-depth", help="8 or 16 bits per channel.")] = 8,
    dpi: Annotated[Optional[float], typer.Option(help="Resolution written to the output (dots per inch); "
                                                 "turns a --size in mm/cm/in into pixels.")] = None,
    # print production (README "Print production")
    output_profile: Annotated[Optional[Path], typer.Option("--output-profile", help="Convert to this RGB or CMYK ICC "
                              "profile while writing (CMYK: .tif only).")] = None,
    intent: Annotated[Optional[str], typer.Option(help="perceptual | relative | saturation | absolute "
                                                  "(default relative).")] = None,
    bpc: Annotated[bool, typer.Option("--bpc", help="Black point compensation.")] = False,
    bigtiff: Annotated[str, typer.Option(help="auto | always | never (auto: BigTIFF only above 4 GiB).")] = "auto",
    no_pyramid: Annotated[bool, typer.Option("--no-pyramid", help="No reduced levels (SubIFDs) in TIFF output.")] = False,
    proof: Annotated[Optional[Path], typer.Option(help="Soft proof JPEG (<= 2048 px) through the output profile.")] = None,
    gamut_warning: Annotated[bool, typer.Option("--gamut-warning", help="Mark out-of-gamut pixels in the proof.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Generate new images whose patches, at every scale, match the reference's."""
    from sidpipe.runner import RunOptions
    from sidpipe.runner import run as run_job

    reporter = Reporter(quiet=quiet)
    try:
        overrides, cluster_overrides = split_overrides(parse_set(set_ or []))
        settings = None
        if cluster is not None:
            if cluster != "slurm":
                raise SidpipeError(f"--cluster supports slurm, got {cluster!r}")
            settings = load_settings(preset_cluster(preset), cluster_overrides)
        elif cluster_overrides:
            raise SidpipeError("--set cluster.* needs --cluster slurm")
        flags = {"seed": seed, "samples": samples, "steps": steps, "eta": eta, "patch_size": patch_size,
                 "device": device, "index": index}
        overrides.update({k: v for k, v in flags.items() if v is not None})
        size_unit = None
        if size is not None:
            (overrides["width"], overrides["height"]), size_unit = parse_print_size(size, dpi)
        cfg = load_config(preset, overrides)
        if not input.is_file():
            raise SidpipeError(f"input not found: {input}")
        options = RunOptions(tile_size=tile_size, workers=workers, scheduler=scheduler, address=address,
                             cluster=settings, jobs=jobs,
                             workdir=workdir, keep_workdir=keep_workdir, overwrite=overwrite,
                             compression=compression, bit_depth=bit_depth, dpi=dpi,
                             output_profile=output_profile, intent=intent, bpc=bpc, bigtiff=bigtiff,
                             pyramid=not no_pyramid, proof=proof, gamut_warning=gamut_warning, size_unit=size_unit)
        run_job(input, out, cfg, progress=reporter, options=options)
    except SidpipeError as exc:
        reporter.close()
        fail(str(exc))
    except Exception:
        # SIGTERM raises Interrupted wherever the main thread is: inside a library that wraps or
        # replaces the exception (an import, a finaliser, a C extension's callback) it arrives as
        # something else. The handler's flag says what really happened.
        from sidpipe.errors import DiskFull, Interrupted, disk_full
        from sidpipe.tiles import STOP

        full = disk_full(sys.exc_info()[1])
        if full is not None:  # the in-memory path's output, or anything outside the run directory's guard
            reporter.close()
            fail(str(DiskFull(str(full.filename or out))))
        if not STOP.is_set():
            raise
        reporter.close()
        fail(str(Interrupted()))
