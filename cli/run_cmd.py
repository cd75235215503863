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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Generate new images whose patches, at every scale, match the reference's."""
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
        run_job(input, out, cfg, progress=reporter)
    except SidpipeError as exc:
        reporter.close()
        fail(str(exc))
