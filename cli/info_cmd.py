"""`sidpipe presets` (what presets ship with this install) and `sidpipe info` (what sidpipe sees here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from sidpipe.errors import SidpipeError

from . import app, fail


@app.command("presets")
def presets(
    show: Annotated[Optional[str], typer.Option("--show", help="Print one preset's keys and values.")] = None,
    all_keys: Annotated[bool, typer.Option("--all", help="With --show: every config key as the preset resolves it "
                                           "(defaults included).")] = False,
) -> None:
    """List the bundled presets (use one with `sidpipe run --preset NAME`)."""
    from sidpipe.config import load_config, preset_names, read_preset

    try:
        if show is None:
            names = preset_names()
            width = max(map(len, names), default=0)
            for name in names:
                typer.echo(f"{name:<{width}}  {read_preset(name).get('description', '')}")
            return
        data = read_preset(show)
        if "description" in data:
            typer.echo(f"# {data.pop('description')}")
        values = load_config(show).to_dict() if all_keys else data
        for key, value in values.items():
            typer.echo(f"{key}: {value}")
    except SidpipeError as exc:
        fail(str(exc))


@app.command("info")
def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    workdir: Annotated[Optional[Path], typer.Option(help="Also report the free space of this folder "
                                                   "(e.g. where run directories will go).")] = None,
) -> None:
    """Versions, CPU features, the precision `auto` picks and why, threads, GPUs, memory and free disk."""
    from sidpipe.sysinfo import collect, format_text

    report = collect(workdir)
    typer.echo(json.dumps(report, indent=2) if as_json else format_text(report))
