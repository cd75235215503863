"""Progress reporting for long runs: a bar on a terminal, a few plain lines otherwise, nothing with --quiet."""

from __future__ import annotations

import sys

import typer


class Reporter:
    """Receives runner events ({"event": "plan" | "step" | "done", ...}) and shows them on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._bar = None
        self._task = None

    def __call__(self, info: dict) -> None:
        if self.quiet:
            return
        kind = info["event"]
        if kind == "plan":
            plan = info["plan"]
            typer.echo(plan.describe(), err=True)
            total = info["samples"] * plan.num_scales * info["steps"]
            if self.tty:
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

                self._bar = Progress(
                    TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=True,
                )
                self._bar.start()
                self._task = self._bar.add_task("sampling", total=total)
        elif kind == "step" and self._bar is not None:
            desc = f"sample {info['sample']} scale {info['scale']} step {info['t']}"
            self._bar.update(self._task, advance=1, description=desc)
        elif kind == "done":
            self.close()
            for path in info["paths"]:
                typer.echo(f"wrote {path}", err=True)
            typer.echo(f"done in {info['seconds']:.1f} s", err=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
