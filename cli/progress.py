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
                                         info.get("patch_size", 15), info.get("workers", 1),
                                         info.get("scheduler", "threads")), err=True)
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


# Calibration of the memory estimate, from a sampled 16-MP run from an 11-MP reference (2 threads, tile 1024):
# process baseline (torch, faiss, zarr) ~0.45 GiB; each running 1024^2 denoise task ~0.6 GiB of temporaries;
# an IVF index peaks at ~1.5x its size while built (plan.BUILD_OVERHEAD). Measured peak 3.25 GiB where this gives 3.2.
BASE_GIB, TASK_GIB_PER_MPX = 0.45, 0.6


def tiled_summary(plan, tile: int, channels: int, steps: int, patch_size: int = 15, workers: int = 1,
                  scheduler: str = "threads") -> str:
    """What the out-of-core pipeline will do: tiles per scale, disk, and the expected peak memory (the
    largest of building an index and sampling with `workers` tasks at once; per process)."""
    from sidpipe.plan import BUILD_OVERHEAD

    tiles = [-(-h // tile) * -(-w // tile) for h, w in plan.out_sizes]
    h, w = plan.out_sizes[0]
    state = 4 * channels * h * w * (3 + 1 / 3)  # x0, x1, xhat at scale 0, plus the coarser scales' results
    gib = 2**30
    task = TASK_GIB_PER_MPX * (tile / 1024) ** 2 * channels / 3
    peak = 0.0
    for s, ((rh, rw), spec, n) in enumerate(zip(plan.ref_sizes, plan.index_specs, plan.patches)):
        level = 4 * channels * rh * rw / gib
        index = index_bytes(spec, n, channels, patch_size) / gib if spec else 0.0
        running = min(workers, tiles[s])
        per_process = 1 if scheduler == "threads" else max(1, running)
        peak = max(peak, BUILD_OVERHEAD * index + level,                       # the driver builds the index
                   index + level + task * running / per_process)            # a worker samples the scale
    where = "in the process" if scheduler == "threads" else "per worker process"
    return (f"out of core: tile {tile}, tiles per scale (finest first) {tiles}, {2 * steps} passes per scale; "
            f"disk ~{state / gib:.2f} GiB of state, peak memory ~{BASE_GIB + peak:.1f} GiB {where} (estimate)")
