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
            if info.get("output"):
                typer.echo(info["output"], err=True)
            total = info["samples"] * plan.num_scales * info["steps"]
            if info.get("tiled"):
                typer.echo(tiled_summary(plan, info["tile"], info["channels"], info["steps"],
                                         info.get("workers", 1), info.get("scheduler", "threads")), err=True)
                total = None  # set by the first tile event
            if self.tty:
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

                self._bar = Progress(
                    TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=True,
                )
                self._bar.start()
                self._task = self._bar.add_task("sampling", total=total)
        elif kind == "tile":
            if self._bar is not None:
                if self._bar.tasks[self._task].total != info["total"]:
                    self._bar.update(self._task, total=info["total"])
                desc = f"scale {info['scale']} step {info['t']} pass {info['pass']}"
                self._bar.update(self._task, completed=info["done"], description=desc)
            elif info["done"] == info["total"] or info["done"] % max(1, info["total"] // 20) == 0:
                typer.echo(f"tiles {info['done']}/{info['total']} ({info['seconds']:.0f} s)", err=True)
        elif kind == "index":
            typer.echo(f"building the IVF index of scale {info['scale']} ({info['patches']} patches)", err=True)
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


def tiled_summary(plan, tile: int, channels: int, steps: int, workers: int = 1, scheduler: str = "threads") -> str:
    """One line on what the out-of-core pipeline will do: tiles per scale, disk and expected peak memory."""
    from sidpipe.tiles import estimate

    est = estimate(plan, tile, channels, workers, scheduler)
    where = "in the process" if scheduler == "threads" else "per worker process"
    return (f"out of core: tile {tile}, tiles per scale (finest first) {est.tiles}, {2 * steps} passes per scale; "
            f"disk up to ~{est.disk / 2**30:.1f} GiB (state, indexes, reference), "
            f"peak memory ~{est.peak / 2**30:.1f} GiB {where} (estimate)")
