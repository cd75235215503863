"""The application commands: inpaint, outpaint, retarget, ... (each builds its hooks from `sidpipe.apps`)."""

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


@app.command("harmonize")
@shared_options("harmonize")
def harmonize(
    composite: Annotated[Path, typer.Argument(help="The composite: an object pasted on a background.", show_default=False)],
    *,
    mask: MaskOption,
    ref: Annotated[Optional[Path], typer.Option(help="Background image whose patches are used (default: the "
                                                "composite's own, away from the mask).")] = None,
    level: Annotated[float, typer.Option(help="Noise level the composite is started from at the finest scale "
                                         "(0-1; SinDDM's ~0.15).")] = 0.15,
    shared: SharedOptions,
) -> None:
    """Harmonize the masked object with the background's texture and colours; far from the mask, unchanged."""
    from sidpipe.apps import harmonize as job
    from sidpipe.io.read import image_size

    def build(cfg):
        w, h = image_size(composite)
        cfg = cfg.replace(width=w, height=h)
        return cfg, job.make(composite, mask, ref, cfg.steps, cfg.patch_size, level)

    run_job(shared, ref if ref is not None else composite, app=build)


@app.command("edit")
@shared_options("edit")
def edit(
    ref: ImageArg,
    edited: Annotated[Path, typer.Argument(help="REF with a rough edit (pasted, painted, moved parts).",
                                           show_default=False)],
    *,
    mask: Annotated[Optional[Path], typer.Option(help="Region of the edit (white); outside it (dilated, feathered) "
                                                 "the output is REF.")] = None,
    auto_mask: Annotated[bool, typer.Option("--auto-mask", help="The mask is where EDITED differs from REF.")] = False,
    shared: SharedOptions,
) -> None:
    """Make a rough edit of REF coherent, from REF's patches (GPNN-style editing)."""
    from sidpipe.apps import edit as job

    def build(cfg):
        if mask is not None and auto_mask:
            raise ConfigError("give --mask or --auto-mask, not both")
        if not edited.is_file():
            raise ConfigError(f"EDITED not found: {edited}")
        return cfg, job.make(ref, edited, mask, auto_mask, cfg.steps)

    run_job(shared, ref, app=build)


@app.command("symmetric")
@shared_options("symmetric")
def symmetric(
    ref: ImageArg,
    *,
    axis: Annotated[str, typer.Option(help="horizontal (left-right mirror) | vertical (top-bottom mirror)")] = "horizontal",
    keep: Annotated[Optional[str], typer.Option(help="The half that is generated and mirrored: left | right "
                                                "(horizontal), top | bottom (vertical); default left / top.")] = None,
    size: SizeOption = None,
    shared: SharedOptions,
) -> None:
    """New images from REF's patches that equal their own mirror image (in memory or out of core)."""
    from sidpipe.apps import symmetric as job

    run_job(shared, ref, size=size, app=lambda cfg: (cfg, job.make(axis, keep)))


@app.command("roi")
@shared_options("roi")
def roi(
    ref: ImageArg,
    *,
    src: Annotated[str, typer.Option(help="Source box x,y,w,h in REF.", show_default=False)],
    dst: Annotated[list[str], typer.Option(help="Destination box x,y,w,h in the output (repeatable).",
                                           show_default=False)],
    size: SizeOption = None,
    shared: SharedOptions,
) -> None:
    """New images from REF's patches with REF's SRC box content placed in each DST box."""
    from sidpipe.apps import roi as job

    def build(cfg):
        example = "10,20,40,30"
        return cfg, job.make(ref, parse_ints(src, 4, "--src", example),
                             [parse_ints(d, 4, "--dst", example) for d in dst])

    run_job(shared, ref, size=size, app=build)


@app.command("tileable")
@shared_options("tileable")
def tileable(
    ref: ImageArg,
    *,
    direction: Annotated[str, typer.Option(help="both | horizontal (left/right edges join) | vertical "
                                           "(top/bottom edges join)")] = "both",
    size: SizeOption = None,
    shared: SharedOptions,
) -> None:
    """Seamless tiles from REF's patches: the output repeats without a visible seam (in memory or out of core)."""
    from sidpipe.apps import tileable as job

    run_job(shared, ref, size=size, app=lambda cfg: (cfg, job.make(direction)))
