"""The application commands: inpaint, outpaint, retarget (each builds its hooks from `sidpipe.apps`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from sidpipe.errors import ConfigError

from . import app
from .common import SharedOptions, SizeOption, run_job, shared_options

ImageArg = Annotated[Path, typer.Argument(help="Reference image (PNG, JPEG or TIFF).", show_default=False)]
MaskOption = Annotated[Path, typer.Option(help="Mask image of the same size: white (>= 128) = the region to "
                                          "generate; gray levels are thresholded at 128.", show_default=False)]


def parse_ints(text: str, count: int, option: str, example: str) -> tuple[int, ...]:
    """'a,b[,c,d]' -> integers, or a one-line error naming the option."""
    parts = text.split(",")
    if len(parts) != count or not all(re.fullmatch(r"\s*-?\d+\s*", p) for p in parts):
        raise ConfigError(f"{option} expects {count} comma-separated integers (e.g. {example}), got {text!r}")
    return tuple(int(p) for p in parts)


@app.command("inpaint")
@shared_options("inpaint")
def inpaint(image: ImageArg, *, mask: MaskOption, shared: SharedOptions) -> None:
    """Regenerate the masked region of IMAGE from the image's own patches; the rest stays bit-identical."""
    from sidpipe.apps import inpaint as job

    run_job(shared, image, app=lambda cfg: (cfg, job.make(image, mask, cfg.steps, cfg.patch_size)))


@app.command("outpaint")
@shared_options("outpaint")
def outpaint(
    ref: ImageArg,
    *,
    size: Annotated[str, typer.Option(help="Canvas size WxH (px, or with a unit and --dpi), at least the reference's.",
                                      show_default=False)],
    offset: Annotated[Optional[str], typer.Option(help="x,y of the reference's top-left corner on the canvas "
                                                  "(default: centred).")] = None,
    shared: SharedOptions,
) -> None:
    """Extend REF to a larger canvas: REF kept bit-identical at its offset, the rest generated from its patches."""
    from sidpipe.apps import outpaint as job

    def build(cfg):
        where = None if offset is None else parse_ints(offset, 2, "--offset", "100,50")
        return cfg, job.make(ref, where, cfg.steps)

    run_job(shared, ref, size=size, app=build)


@app.command("retarget")
@shared_options("retarget")
def retarget(
    ref: ImageArg,
    *,
    size: Annotated[str, typer.Option(help="Target size WxH (px, or with a unit and --dpi).", show_default=False)],
    shared: SharedOptions,
) -> None:
    """Rebuild REF at a new size or aspect: its layout, resized, at the coarsest scale; its patches at every scale."""
    from sidpipe.apps import retarget as job
    from sidpipe.io.read import image_size

    def build(cfg):
        w, h = image_size(ref)
        return job.prepare(cfg, (h, w)), job.make(ref, cfg.steps)

    run_job(shared, ref, size=size, app=build)
