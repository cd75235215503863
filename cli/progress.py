"""Progress reporting for long runs: a bar on a terminal; otherwise (a batch job's log) one plain line per
finished pass, and at least one a minute, with the ETA; nothing with --quiet."""

from __future__ import annotations

import sys
import time

import typer


class Reporter:
    """Receives runner events ({"event": "plan" | "step" | "done", ...}) and shows them on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._bar = None
        self._task = None
        self._last_line = time.monotonic()
        self.interval = 60.0  # seconds: a long pass still shows a line at least this often when not on a TTY

    def __call__(self, info: dict) -> None:
        if self.quiet:
            return
        kind = info["event"]
        if kind == "plan":
            plan = info["plan"]
            typer.echo(plan.describe(), err=True)
            if info.get("output"):
                typer.echo(info["output"], err=True)
            if info.get("codec"):
                typer.echo(info["codec"], err=True)
            starts = info.get("starts") or [info["steps"]] * plan.num_scales
            total = info["samples"] * sum(starts)
            if info.get("tiled"):
                typer.echo(tiled_summary(plan, info["tile"], info["channels"], info["steps"],
                                         info.get("workers", 1), info.get("scheduler", "threads"), starts), err=True)
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
            elif info["pass_done"] == info["pass_total"] or time.monotonic() - self._last_line >= self.interval:
                self._last_line = time.monotonic()
                typer.echo(pass_line(info), err=True)
        elif kind == "cluster":
            typer.echo(info["message"], err=True)
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


def tiled_summary(plan, tile: int, channels: int, steps: int, workers: int = 1, scheduler: str = "threads",
                  starts: list[int] | None = None) -> str:
    """One line on what the out-of-core pipeline will do: tiles per scale, disk and expected peak memory.
    starts: the step each scale starts at (finest first; default T everywhere)."""
    from sidpipe.tiles import estimate

    est = estimate(plan, tile, channels, workers, scheduler)
    where = "in the process" if scheduler == "threads" else "per worker process"
    if starts is None or all(t == steps for t in starts):
        passes = f"{2 * steps} passes per scale"
    else:
        passes = f"passes per scale (finest first) {[2 * t if t else 1 for t in starts]}"
    return (f"out of core: tile {tile}, tiles per scale (finest first) {est.tiles}, {passes}; "
            f"disk up to ~{est.disk / 2**30:.1f} GiB (state, indexes, reference), "
            f"peak memory ~{est.peak / 2**30:.1f} GiB {where} (estimate)")


def duration(seconds: float) -> str:
    """12 s, 3 min 20 s, 2 h 05 min."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def eta(info: dict) -> float | None:
    """Seconds left, from the rate of the work (output pixels) this process has computed so far."""
    computed = info["work_done"] - info["work_resumed"]
    if computed <= 0 or info["seconds"] <= 0:
        return None
    return info["seconds"] / computed * (info["work_total"] - info["work_done"])


def pass_line(info: dict) -> str:
    """One log line of a tile event: the pass, the whole run's share of work done, elapsed time and ETA."""
    left = eta(info)
    resumed = f", {info['resumed']} resumed" if info["resumed"] else ""
    return (f"scale {info['scale']} step {info['t']} pass {info['pass']}: {info['pass_done']}/{info['pass_total']} tiles; "
            f"run {info['done']}/{info['total']} tiles{resumed}, {100 * info['work_done'] / info['work_total']:.0f}% "
            f"of the work, {duration(info['seconds'])} elapsed, ETA {duration(left) if left is not None else '?'}")
