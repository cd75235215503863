"""Guided applications that start from another image: analogy (each builds its hooks from `sidpipe.apps`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

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
