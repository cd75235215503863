"""Applications guided by another image: analogy, i2i (each builds its hooks from `sidpipe.apps`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sidpipe.errors import SidpipeError

from . import app
from .common import SharedOptions, run_job, shared_options


@app.command("analogy")
@shared_options("analogy")
def analogy(
    structure: Annotated[Path, typer.Argument(help="Structure image: the layout to keep.", show_default=False)],
    style: Annotated[Path, typer.Argument(help="Style image: the reference whose patches draw it.", show_default=False)],
    *,
    noise_level: Annotated[float, typer.Option("--noise-level", help="How far the structure is inverted, in (0, 1]: "
                                               "lower keeps more of it (useful 0.2-1.0).")] = 0.5,
    short_side: Annotated[Optional[int], typer.Option("--short-side", help="Output short side in px (default: the "
                                                      "style image's); the aspect is the structure's.")] = None,
    shared: SharedOptions,
) -> None:
    """Draw STRUCTURE's layout with STYLE's patches (the structure's coarsest scale inverted, then denoised with STYLE's)."""
    from sidpipe.apps import analogy as job
    from sidpipe.io.lazy import open_image

    def build(cfg):
        width, height = job.output_size(structure, style, short_side)
        with open_image(style) as image:
            channels = image.shape[0]
        return cfg.replace(width=width, height=height), job.make(structure, channels, cfg, noise_level)

    run_job(shared, style, app=build)


@app.command("i2i")
@shared_options("i2i")
def i2i(
    style: Annotated[Path, typer.Argument(help="Style reference: whose patches draw the output.", show_default=False)],
    content: Annotated[Path, typer.Argument(help="Content image: the layout and colours to keep (output size).",
                                            show_default=False)],
    *,
    mode: Annotated[str, typer.Option(help="sdedit (content noised to --noise-level at one scale, coarser scales "
                                      "fixed) | ilvr (the content's low frequencies guide every scale)")] = "sdedit",
    noise_level: Annotated[float, typer.Option("--noise-level", help="In (0, 1]: how much of the content is "
                                               "replaced at the starting scale.")] = 0.5,
    at_scale: Annotated[Optional[int], typer.Option("--at-scale", help="sdedit: the scale that starts from the "
                                                    "noised content (0 = finest; default 1, the second finest).")] = None,
    match_hist: Annotated[bool, typer.Option("--match-hist", help="Match the content's colour histogram to the "
                                             "style's first (SinDDM).")] = False,
    shared: SharedOptions,
) -> None:
    """Redraw CONTENT with STYLE's patches (image-to-image / style transfer)."""
    from sidpipe.apps import i2i as job
    from sidpipe.io.lazy import open_image
    from sidpipe.io.read import image_size

    def build(cfg):
        if not content.is_file():
            raise SidpipeError(f"content image not found: {content}")
        width, height = image_size(content)
        with open_image(style) as image:
            channels = image.shape[0]
        return cfg.replace(width=width, height=height), job.make(
            content, style, channels, cfg.steps, mode=mode, level=noise_level, at_scale=at_scale, match_hist=match_hist)

    run_job(shared, style, app=build)
