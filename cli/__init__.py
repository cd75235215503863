"""The `sidpipe` command line (Typer): thin commands that build a Config and call the runner."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from sidpipe import __version__
from sidpipe.errors import SidpipeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Training-free single-image diffusion: new images whose patches, at every scale, look like one reference's.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sidpipe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """sidpipe: closed-form patch diffusion, any output size, no training."""


def fail(message: str) -> None:
    """One clear line on stderr and a non-zero exit (for user errors, never a traceback)."""
    typer.echo(f"sidpipe: error: {message}", err=True)
    raise typer.Exit(code=1)


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H), both positive integers."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise SidpipeError(f"--size expects WxH with positive integers (e.g. 512x384), got {text!r}")
    return int(m.group(1)), int(m.group(2))


from . import run_cmd  # noqa: E402,F401  (registers `run`)
from . import eval_cmd  # noqa
from . import bench_cmd  # noqa
from . import info_cmd  # noqa
from . import panels_cmd  # noqa
from . import apps_cmd  # noqa
from . import vae_cmd  # noqa
from . import guided_cmd  # noqa
from . import batch_cmd  # noqa


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("sidpipe: interrupted", err=True)
        sys.exit(130)


__all__ = ["app", "main", "fail", "parse_size", "Path"]
