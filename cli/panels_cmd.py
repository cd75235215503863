"""`sidpipe panels`: cut a finished TIFF into overlapping wallpaper panels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sidpipe.errors import SidpipeError

from . import app, fail


@app.command("panels")
def panels(
    file: Annotated[Path, typer.Argument(help="A finished TIFF (from sidpipe run).", show_default=False)],
    *,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the panels (FILE-stem_panel_01.tif, ...).")],
    count: Annotated[Optional[int], typer.Option(help="Number of panels (as equal as whole pixels allow).")] = None,
    width: Annotated[Optional[str], typer.Option(help="Panel width: pixels, or 90cm, 36in, 900mm (uses the file's DPI); "
                                                 "the last panel ends at the edge.")] = None,
    overlap: Annotated[str, typer.Option(help="Width neighbouring panels share, same units as --width.")] = "0",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing.")] = False,
) -> None:
    """Cut FILE into panels, left to right: exact crops with its profile, DPI and compression."""
    from sidpipe.io.panels import write_panels

    try:
        paths = write_panels(file, out, count=count, width=width, overlap=overlap)
    except SidpipeError as exc:
        fail(str(exc))
    if not quiet:
        for path in paths:
            typer.echo(f"wrote {path}", err=True)
