"""`sidpipe bench quality`: generate K samples per reference, evaluate them, write a report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from sidpipe.errors import SidpipeError

from . import app, fail

bench = typer.Typer(no_args_is_help=True, help="Reproducible benchmarks: `bench quality` writes a quality report.")
app.add_typer(bench, name="bench")


@bench.command("quality")
def quality(
    references: Annotated[Path, typer.Argument(help="Folder of reference images (.png .jpg .tif).", show_default=False)],
    *,
    samples: Annotated[int, typer.Option("--samples", "-k", help="Samples per reference (seeds seed .. seed+K-1).")] = 5,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder (report.md, results.json, per_image.png, sheets/, samples/).")] = Path("quality_report"),
    preset: Annotated[str, typer.Option(help="Preset from configs/ (name) or a YAML file.")] = "default",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any config key: --set key=value (repeatable).")] = None,
    query_stride: Annotated[int, typer.Option("--query-stride", help="Nearest-patch searches query every s-th patch row/column.")] = 2,
    metric_seed: Annotated[int, typer.Option("--metric-seed", help="Seed of the SWD random projections.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run with the same images and settings (finished images are kept).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Generate K samples per reference image, measure them, and write REPORT_DIR/report.md."""
    from sidpipe.config import load_config, parse_set
    from sidpipe.quality import EvalSettings, bench_quality, list_references

    def log(msg: str) -> None:
        if not quiet:
            typer.echo(msg, err=True)

    try:
        if samples < 1:
            raise SidpipeError(f"--samples must be >= 1, got {samples}")
        if query_stride < 1 or metric_seed < 0:
            raise SidpipeError("--query-stride must be >= 1 and --metric-seed >= 0")
        cfg = load_config(preset, parse_set(set_ or []))
        refs = list_references(references)
        settings = EvalSettings(seed=metric_seed, query_stride=query_stride)
        command = "sidpipe " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
        bench_quality(refs, cfg, out, samples, settings=settings, preset=preset, command=command, resume=resume,
                      log=log)
    except SidpipeError as exc:
        fail(str(exc))
    log(f"wrote {out / 'report.md'}")
