"""`sidpipe run`: generate images from one reference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app
from .common import SharedOptions, SizeOption, run_job, shared_options


@app.command("run")
@shared_options()
def run(
    input: Annotated[Path, typer.Argument(help="Reference image (PNG, JPEG or TIFF).", show_default=False)],
    *,
    size: SizeOption = None,
    shared: SharedOptions,
) -> None:
    """Generate new images whose patches, at every scale, match the reference's."""
    run_job(shared, input, size=size)
