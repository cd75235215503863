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
            if info.get("tiled"):
                typer.echo(tiled_summary(plan, info["tile"], info["channels"], info["steps"],
                                         info.get("patch_size", 15)), err=True)
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


def index_bytes(spec: str, patches: int, channels: int, patch_size: int = 15) -> int:
    """Bytes an IVF index of faiss factory `spec` holds for `patches` vectors (codes + 8-byte ids)."""
    parts = dict((k.rstrip("0123456789x"), k) for k in spec.split(","))
    if "PQ" in parts:
        per = int(parts["PQ"][2:].split("x")[0])
    elif "PCA" in parts:
        per = 4 * int(parts["PCA"][3:])
    else:
        per = 4 * channels * patch_size**2
    return patches * (per + 8)


def tiled_summary(plan, tile: int, channels: int, steps: int, patch_size: int = 15) -> str:
    """What the out-of-core pipeline will do: tiles per scale and rough peak memory and disk."""
    tiles = [-(-h // tile) * -(-w // tile) for h, w in plan.out_sizes]
    h, w = plan.out_sizes[0]
    state = 4 * channels * h * w * (3 + 1 / 3)  # x0, x1, xhat at scale 0, plus the coarser scales' results
    rh, rw = plan.ref_sizes[0]
    per_tile = 4 * channels * (tile + 2 * 64) ** 2 * 40  # tile + halo and the denoiser's block temporaries
    # The finest reference level, and the largest IVF index (a worker holds one scale's at a time).
    reference = 4 * channels * rh * rw + max([index_bytes(spec, n, channels, patch_size)
                                              for spec, n in zip(plan.index_specs, plan.patches) if spec] or [0])
    return (f"out of core: tile {tile}, tiles per scale (finest first) {tiles}, {2 * steps} passes per scale; "
            f"disk ~{state / 2**30:.2f} GiB of state, memory ~{(per_tile + reference) / 2**30:.2f} GiB "
            f"per worker (estimate)")
