"""`sidpipe run`: generate images from one reference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sidpipe.config import load_config, parse_set
from sidpipe.errors import SidpipeError

from . import app, fail, parse_size
from .progress import Reporter


@app.command("run")
def run(
    input: Annotated[Path, typer.Argument(help="Reference image (PNG, JPEG or TIFF).", show_default=False)],
    *,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file; its extension picks the format (.png, .tif, .jpg).")],
    size: Annotated[Optional[str], typer.Option(help="Output size WxH (default: the reference's size).")] = None,
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
    workdir: Annotated[Optional[Path], typer.Option(help="Run directory (default: OUT.sidpipe beside the output); "
                                                    "giving one forces the out-of-core pipeline.")] = None,
    keep_workdir: Annotated[bool, typer.Option("--keep-workdir", help="Keep the run directory after success.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Discard an unfinished run of a different job.")] = False,
    compression: Annotated[str, typer.Option(help="BigTIFF compression: zlib | zstd | jpeg | none")] = "zlib",
    bit_depth: Annotated[int, typer.Option("--bit-depth", help="8 or 16 bits per channel.")] = 8,
    dpi: Annotated[Optional[float], typer.Option(help="Resolution tags of TIFF output (dots per inch).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Generate new images whose patches, at every scale, match the reference's."""
    from sidpipe.runner import RunOptions
    from sidpipe.runner import run as run_job

    reporter = Reporter(quiet=quiet)
    try:
        overrides = parse_set(set_ or [])
        flags = {"seed": seed, "samples": samples, "steps": steps, "eta": eta, "patch_size": patch_size,
                 "device": device, "index": index}
        overrides.update({k: v for k, v in flags.items() if v is not None})
        if size is not None:
            overrides["width"], overrides["height"] = parse_size(size)
        cfg = load_config(preset, overrides)
        if not input.is_file():
            raise SidpipeError(f"input not found: {input}")
        options = RunOptions(tile_size=tile_size, workers=workers, scheduler=scheduler, address=address,
                             workdir=workdir, keep_workdir=keep_workdir, overwrite=overwrite,
                             compression=compression, bit_depth=bit_depth, dpi=dpi)
        run_job(input, out, cfg, progress=reporter, options=options)
    except SidpipeError as exc:
        reporter.close()
        fail(str(exc))
