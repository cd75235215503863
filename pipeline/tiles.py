"""Out-of-core coarse-to-fine sampling: every step of every scale as tiles over zarr, scheduled by dask.

One reverse step at scale s is two local passes over square tiles (chunks of the state arrays):

* pass A: x_hat = IMGDENOISE(x_t) on the tile, reading x_t with the denoiser's halo (patch radius,
  fold window, whole query blocks: `ImageDenoiser.support`);
* pass B: the two-scale blend and the reverse step (Eqs. 4-5) on the tile, reading x_hat with the halo
  of BLUR = UP(DOWN(.)) and the coarser scale's result with UP's support.

Every operator computes a rectangle exactly as it computes the whole image (fixed query blocks on a
global grid, resampling taps from global sizes, noise keyed by fixed noise blocks), so the output is
the in-memory sampler's bit for bit, whatever the tile size, worker count or scheduler. x_t is double
buffered by step parity (x0/x1), so a tile can always be recomputed from completed arrays: a killed run
resumes from its per-tile markers (see `store.RunDir`).

Workers (threads, processes or `distributed` workers) load a scale's reference and index from the run
directory once per process (`worker()` caches them) and never receive arrays through the scheduler.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .denoise import ImageDenoiser
from .devices import pin_gpu, release_memory, trim_heap, worker_device
from .errors import Interrupted
from .index import IVFIndex
from .index.ivf import set_threads
from .noise import noise_region
from .plan import BUILD_OVERHEAD, Plan, make_denoiser, resolve_query_strides
from .pyramid import NO_WRAP, circular, resize_region, resize_support
from .sample.c2f import warm_state
from .sample.hooks import Hooks, keep_mask, start_step
from .sample.schedule import alpha_sigma, reverse_step, warm_step
from .store import RunDir, state_array

Box = tuple[int, int, int, int]  # y0, y1, x0, x1
Progress = Callable[[dict], None]


def tile_boxes(height: int, width: int, tile: int) -> list[Box]:
    """The tiles of an image in raster order: tile x tile squares (smaller at the right/bottom edges)."""
    return [(y, min(height, y + tile), x, min(width, x + tile))
            for y in range(0, height, tile) for x in range(0, width, tile)]


# Calibration of `estimate`, from a /proc-sampled 16-MP run from an 11-MP reference (2 threads, tile 1024):
# process baseline (torch, faiss, zarr) ~0.45 GiB; each running 1024^2 denoise task ~0.6 GiB of temporaries;
# an index peaks at BUILD_OVERHEAD times its size while built. Measured peak 3.25 GiB where this gave 3.2.
BASE_BYTES, TASK_BYTES_PER_MPX = 0.45 * 2**30, 0.6 * 2**30


@dataclass(frozen=True)
class Estimate:
    """What an out-of-core run will need: tiles per scale (finest first), bytes on disk (state arrays,
    indexes, reference pyramid, uncompressed: an upper bound) and peak resident bytes per process."""

    tiles: list[int]
    disk: int
    peak: int


def estimate(plan: Plan, tile: int, channels: int, workers: int = 1, scheduler: str = "threads") -> Estimate:
    """Tiles, disk and peak memory of `plan` at `tile`: the peak is the larger of the driver building a
    scale's index (BUILD_OVERHEAD x the index, plus the level) and a worker sampling it (index, level and
    the temporaries of the tasks running at once in one process)."""
    tiles = [len(tile_boxes(h, w, tile)) for h, w in plan.out_sizes]
    h, w = plan.out_sizes[0]
    state = 4 * channels * h * w * (3 + 1 / 3)  # x0, x1, x_hat at scale 0, plus the coarser scales' arrays
    levels = [4 * channels * rh * rw for rh, rw in plan.ref_sizes]
    task = TASK_BYTES_PER_MPX * (tile / 1024) ** 2 * channels / 3
    peak = 0.0
    for s, (level, index) in enumerate(zip(levels, plan.index_sizes)):
        running = min(workers, tiles[s])
        per_process = 1 if scheduler == "threads" else running
        peak = max(peak, BUILD_OVERHEAD * index + level, index + level + task * running / per_process)
    return Estimate(tiles, int(state + sum(plan.index_sizes) + sum(levels)), int(BASE_BYTES + peak))


def box_key(box: Box) -> str:
    return f"{box[0]}_{box[2]}"


def x_name(t: int) -> str:
    """State array holding x_t at a scale (double buffered by step parity)."""
    return f"x{t % 2}"


@dataclass(frozen=True)
class ScaleSpec:
    """What the tasks of one scale need to know besides the run directory."""

    scale: int
    size: tuple[int, int]
    coarse_size: tuple[int, int] | None
    channels: int
    steps: int
    eta: float
    seed: int
    blend_last_step: bool
    hooks: Hooks | None = None  # an application's (`sample.hooks`), called on global rectangles
    warm: int | None = None     # a finer scale's warm start step (`Config.warm_start`), None = from noise

    @property
    def wrap(self) -> tuple[bool, bool]:
        """Periodic rows / columns (tileable): halos are read modulo the size, resampling wraps around."""
        return NO_WRAP if self.hooks is None else self.hooks.wrap

    @property
    def start(self) -> int:
        """The step this scale starts at (T, or an application's; 0 = a fixed scale)."""
        return start_step(self.hooks, self.scale, self.steps, self.warm)

    def coarser(self) -> ScaleSpec:
        """The spec of the next coarser scale, as far as reading its result x_{s+1,0} goes."""
        return ScaleSpec(self.scale + 1, self.coarse_size, None, self.channels, self.steps, self.eta, self.seed,
                         self.blend_last_step, self.hooks)


class Worker:
    """Per-process state of a run: its config and plan, and each scale's denoiser, built once."""

    def __init__(self, run_dir: str) -> None:
        self.run = RunDir(Path(run_dir))
        manifest = self.run.manifest()
        self.cfg = Config(**manifest["identity"]["config"])
        plan = manifest["plan"]
        self.plan = Plan(
            ref_sizes=[tuple(s) for s in plan["ref_sizes"]], out_sizes=[tuple(s) for s in plan["out_sizes"]],
            device=worker_device(torch.device(plan["device"])), precision=plan["precision"], indexes=plan["indexes"],
            patches=plan["patches"], query_strides=resolve_query_strides(self.cfg, [tuple(s) for s in plan["out_sizes"]]))
        self._denoisers: dict[int, ImageDenoiser] = {}
        self._lock = threading.Lock()
        self.state = self.run.state()

    def denoiser(self, scale: int, hooks: Hooks | None = None) -> ImageDenoiser:
        with self._lock:
            if scale not in self._denoisers:
                # Scales run coarse to fine and a finished scale is never denoised again: keep one scale's
                # reference level and index in memory, not all of them.
                self._denoisers.clear()
                release_memory()
                level = torch.from_numpy(self.run.reference()[str(scale)][...])
                index = None
                if self.plan.indexes[scale] == "ivf":
                    # Read into memory, not memory-mapped: faiss searched a memory-mapped IVF-Flat index
                    # 1.45x slower (measured, balloons 40k patches, nprobe 1 and 8). Each worker process
                    # holds its own copy; threads of one process share it.
                    index = IVFIndex.load(self.run.index_path(scale), mmap=False)
                keep = keep_mask(hooks, scale, tuple(level.shape[-2:]), self.cfg.patch_size)
                self._denoisers[scale] = make_denoiser(level, self.plan.indexes[scale], self.cfg, self.plan, index,
                                                       scale=scale, keep=keep)
            return self._denoisers[scale]

    def read(self, spec: ScaleSpec, name: str, t: int | None, rect: Box) -> torch.Tensor:
        """A rectangle of a state array; the starting state x_T is not stored but drawn from the keyed noise
        (or an application's `init` hook at its starting step)."""
        y0, y1, x0, x1 = rect
        t0 = spec.start
        if name == "x" and t == t0 and t0 > 0:
            if spec.hooks is not None and spec.hooks.init is not None:
                x = spec.hooks.init(spec.scale, t0, rect, spec.seed)
                if x is not None:
                    return x
            if t0 < spec.steps and t0 == spec.warm and spec.coarse_size is not None:
                up = self.up(spec, rect, lambda r: self.read(spec.coarser(), "x", 0, r))
                return warm_state(up, noise_region(spec.channels, y0, y1, x0, x1, seed=spec.seed, scale=spec.scale,
                                                   step=t0), t0, spec.steps)
            return noise_region(spec.channels, y0, y1, x0, x1, seed=spec.seed, scale=spec.scale, step=spec.steps)
        array = self.state[f"s{spec.scale}/{x_name(t) if name == 'x' else name}"]
        return torch.from_numpy(np.ascontiguousarray(array[:, y0:y1, x0:x1]))

    @staticmethod
    def up(spec: ScaleSpec, box: Box, read: Callable[[Box], torch.Tensor]) -> torch.Tensor:
        """UP(coarser) on `box` of scale `spec`, where read(r) gives the coarser image on rectangles r inside it."""
        fine, coarse, wrap = spec.size, spec.coarse_size, spec.wrap
        crect = resize_support(coarse, fine, box, wrap)
        return resize_region(circular(read, crect, coarse, wrap), (crect[0], crect[2]), coarse, fine, box, wrap)

    def write(self, spec: ScaleSpec, name: str, box: Box, value: torch.Tensor) -> None:
        y0, y1, x0, x1 = box
        self.state[f"s{spec.scale}/{name}"][:, y0:y1, x0:x1] = value.cpu().numpy()


# Set by the SIGTERM handler (runner): the tile loop stops at the next finished tile.
STOP = threading.Event()

_WORKERS: dict[str, Worker] = {}
_WORKERS_LOCK = threading.Lock()


def worker(run_dir: str, threads: int) -> Worker:
    """This process's Worker for a run (created on first use). torch and faiss get `threads` threads for
    this task (0 = leave them alone): all tasks running at once in a process ask for the same number."""
    with _WORKERS_LOCK:
        if threads > 0 and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
            set_threads(threads)
        if run_dir not in _WORKERS:
            _WORKERS[run_dir] = Worker(run_dir)
        return _WORKERS[run_dir]


def release(run_dir: str) -> None:
    """Forget this process's Worker of a run (its denoiser and open arrays) once the run is over."""
    with _WORKERS_LOCK:
        _WORKERS.pop(run_dir, None)


def denoise_tile(run_dir: str, threads: int, spec: ScaleSpec, t: int, box: Box) -> None:
    """Pass A of step t on one tile: x_hat = IMGDENOISE(x_t).

    Periodic dimensions (`Hooks.wrap`, tileable) are denoised as the in-memory sampler does
    (`c2f._periodic`): as part of the image circularly padded by a patch on both sides, whose query grid
    is that padded image's; the halo is read modulo the image size."""
    w = worker(run_dir, threads)
    d = w.denoiser(spec.scale, spec.hooks)
    alpha, sigma = alpha_sigma(t, spec.steps)
    wrap = spec.wrap
    py, px = (d.p if wrap[0] else 0), (d.p if wrap[1] else 0)
    full = (spec.size[0] + 2 * py, spec.size[1] + 2 * px)
    pbox = (box[0] + py, box[1] + py, box[2] + px, box[3] + px)  # in the padded image
    rect = d.support(full, pbox)
    x = circular(lambda r: w.read(spec, "x", t, r), (rect[0] - py, rect[1] - py, rect[2] - px, rect[3] - px),
                 spec.size, wrap).to(w.plan.device)
    x_hat = d.denoise_box(x, (rect[0], rect[2]), full, pbox, alpha, sigma)
    w.write(spec, "xhat", box, x_hat)
    w.run.mark_tile(f"s{spec.scale}-t{t}-A", box_key(box))
    del x, x_hat
    trim_heap()


def step_tile(run_dir: str, threads: int, spec: ScaleSpec, t: int, box: Box) -> None:
    """Pass B of step t on one tile: blend x_hat with the coarser result, then x_{t-1} (Eqs. 4-5).

    An application's `finish` (the finest scale's last step) may read the result on other rectangles
    (symmetric: the mirrored one); their step is computed here again from the completed arrays, which
    gives the bits the tiles owning them write."""
    w = worker(run_dir, threads)
    x_prev = _step(w, spec, t, box)
    hooks = spec.hooks
    if hooks is not None and hooks.finish is not None and spec.scale == 0 and t == 1:
        x_prev = hooks.finish(box, lambda r, done=x_prev: done if tuple(r) == tuple(box) else _step(w, spec, t, r))
    w.write(spec, x_name(t - 1), box, x_prev)
    w.run.mark_tile(f"s{spec.scale}-t{t}-B", box_key(box))


def _step(w: Worker, spec: ScaleSpec, t: int, box: Box) -> torch.Tensor:
    """x_{t-1} on any rectangle `box` (after `replace` and, at the finest scale's last step, `paste`)."""
    y0, y1, x0, x1 = box
    hooks = spec.hooks
    wrap = spec.wrap
    x_t = w.read(spec, "x", t, box)

    def read_xhat_inside(rect: Box) -> torch.Tensor:
        if hooks is not None and hooks.transform is not None:
            return hooks.transform(spec.scale, t, rect, lambda r: w.read(spec, "xhat", None, r))
        return w.read(spec, "xhat", None, rect)

    def read_xhat(rect: Box) -> torch.Tensor:
        """x_hat on a rectangle, after the application's transform (as the in-memory sampler has it); with
        wrap, the rectangle may reach across the image's edges (read modulo its size)."""
        return circular(read_xhat_inside, rect, spec.size, wrap)

    x_hat = read_xhat(box)
    x_tilde = x_hat
    if spec.coarse_size is not None and (t > 1 or spec.blend_last_step):
        fine, coarse = spec.size, spec.coarse_size
        # BLUR(x_hat) on the box: UP reads a coarse rectangle, whose DOWN reads a halo of x_hat.
        crect = resize_support(coarse, fine, box, wrap)
        frect = resize_support(fine, coarse, crect, wrap)
        down = resize_region(read_xhat(frect), (frect[0], frect[2]), fine, coarse, crect, wrap)
        blurred = resize_region(down, (crect[0], crect[2]), coarse, fine, box, wrap)
        prev = spec.coarser()

        def read_guide(r: Box) -> torch.Tensor:
            g = None if hooks is None or hooks.guide is None else hooks.guide(spec.scale, r)
            return w.read(prev, "x", 0, r) if g is None else g

        x_tilde = x_hat - blurred + w.up(spec, box, read_guide)
    need_noise = spec.eta > 0.0 and t > 1
    noise = noise_region(spec.channels, y0, y1, x0, x1, seed=spec.seed, scale=spec.scale, step=t - 1) \
        if need_noise else None
    x_prev = reverse_step(x_t, x_hat, x_tilde, t, spec.steps, eta=spec.eta, noise=noise)
    if hooks is not None and hooks.replace is not None:
        x_prev = hooks.replace(spec.scale, t - 1, box, x_prev, spec.seed)
    if hooks is not None and hooks.paste is not None and spec.scale == 0 and t == 1:
        x_prev = hooks.paste(box, x_prev)
    return x_prev


def replace_tile(run_dir: str, threads: int, spec: ScaleSpec, t: int, box: Box) -> None:
    """Pass B of step t on a tile the application decides alone (`Hooks.active` False): x_{t-1} is its
    `replace` value (which ignores what the step computed there), so nothing is denoised or blended."""
    w = worker(run_dir, threads)
    y0, y1, x0, x1 = box
    x_prev = spec.hooks.replace(spec.scale, t - 1, box, torch.zeros(spec.channels, y1 - y0, x1 - x0), spec.seed)
    if spec.hooks.paste is not None and spec.scale == 0 and t == 1:
        x_prev = spec.hooks.paste(box, x_prev)
    w.write(spec, x_name(t - 1), box, x_prev)
    w.run.mark_tile(f"s{spec.scale}-t{t}-B", box_key(box))


def active_tiles(spec: ScaleSpec, boxes: list[Box]) -> tuple[list[Box], list[Box]]:
    """(tiles to denoise, tiles to step) of a scale: with an `active` hook, the active tiles are stepped
    and the tiles whose estimate they read (the box, and BLUR's halo) denoised; otherwise every tile.
    An `estimated` hook then drops the tiles whose raw estimate nothing reads from the denoised ones."""
    hooks = spec.hooks
    if hooks is not None and hooks.estimated is not None:
        plain = dataclasses.replace(spec, hooks=dataclasses.replace(hooks, estimated=None))
        denoised, stepped = active_tiles(plain, boxes)
        return [b for b in denoised if hooks.estimated(spec.scale, b)], stepped
    if hooks is None or hooks.active is None or hooks.replace is None or any(spec.wrap) or hooks.finish is not None:
        # (a halo across the wrap, or a `finish` reading elsewhere, would need more than the box: every tile)
        return boxes, boxes
    stepped = [b for b in boxes if hooks.active(spec.scale, b)]
    reads = list(stepped)
    if spec.coarse_size is not None:
        for b in stepped:
            crect = resize_support(spec.coarse_size, spec.size, b)
            reads.append(resize_support(spec.size, spec.coarse_size, crect))

    def meets(a: Box, r: Box) -> bool:
        return a[0] < r[1] and r[0] < a[1] and a[2] < r[3] and r[2] < a[3]

    return [b for b in boxes if any(meets(b, r) for r in reads)], stepped


def init_tile(run_dir: str, threads: int, spec: ScaleSpec, box: Box) -> None:
    """A fixed scale (an application's `start` 0): x_{s,0} on one tile is its `init` hook (and at the
    finest scale, after its `paste`)."""
    w = worker(run_dir, threads)
    hooks = spec.hooks

    def result(r: Box) -> torch.Tensor:
        x = hooks.init(spec.scale, 0, r, spec.seed)
        return hooks.paste(r, x) if spec.scale == 0 and hooks.paste is not None else x

    x = result(box)
    if spec.scale == 0 and hooks.finish is not None:
        x = hooks.finish(box, lambda r, done=x: done if tuple(r) == tuple(box) else result(r))
    w.write(spec, "x0", box, x)
    w.run.mark_tile(f"s{spec.scale}-init", box_key(box))


class Executor:
    """Runs a list of tile tasks with the chosen dask scheduler and reports each finished tile.

    scheduler: "threads" (one process, `workers` threads), "processes" (a pool of `workers` processes
    kept for the whole run, so each loads a scale's index once), "distributed" (a LocalCluster of
    `workers` single-threaded processes, or the scheduler at `address`) or "slurm" (up to `workers`
    Slurm worker jobs from `cluster` settings, see `sidpipe.cluster.slurm`; `log_dir` gets their logs).
    """

    def __init__(self, scheduler: str, workers: int, address: str | None = None, *, cluster=None,
                 log_dir: Path | None = None, progress: Progress | None = None, pin_gpus: bool = False) -> None:
        self.scheduler, self.workers = scheduler, max(1, workers)
        self.cores = torch.get_num_threads()
        # threads per task: share the cores between concurrent tasks, never oversubscribe (0: a remote
        # cluster's workers keep their own settings)
        self.threads = max(1, self.cores // self.workers) if scheduler != "distributed" or not address else 0
        self._client = self._cluster = self._pool = None
        self.settings = cluster
        self._jobs = 0
        if scheduler == "slurm":
            from distributed import Client

            from .cluster.slurm import describe, start_cluster

            self.threads = cluster.threads_per_task
            self._cluster = start_cluster(cluster, log_dir)
            self._client = Client(self._cluster)
            if progress is not None:
                progress({"event": "cluster", "message": describe(self._cluster, cluster, self.workers)})
        elif scheduler == "distributed":
            from distributed import Client, LocalCluster

            if address:
                self._client = Client(address)
            else:
                self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                             dashboard_address=None)
                self._client = Client(self._cluster)
        elif scheduler == "processes":
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("spawn")
            if pin_gpus:  # one process per GPU, each pinned to its own card (`devices.gpu_worker_layout`)
                self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=pin_gpu,
                                                 initargs=(ctx.Value("i", 0),))
            else:
                self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx)
        elif scheduler != "threads":
            raise ValueError(f"unknown scheduler {scheduler!r}")

    def prepare(self, tasks: int) -> None:
        """Before a pass of `tasks` tiles: Slurm worker jobs up to min(N, what the pass can use). Scales run
        coarse to fine, so this only grows within a run; calling it again also replaces lost jobs."""
        if self.scheduler != "slurm":
            return
        jobs = min(self.workers, -(-tasks // self.settings.tasks_per_job))
        self._jobs = jobs
        self._cluster.scale(jobs=jobs)

    def task_threads(self, tasks: int) -> int:
        """Threads for each of `tasks` tasks of one pass: a pass with fewer tasks than workers (a coarse
        scale's single tile) gives each of them more of the cores.

        A Slurm worker job applies the same rule to its own cores and `tasks_per_job` (cores=C,
        tasks_per_job=K gives each task the threads `--workers K` gives it on a C-core machine), so a
        coarse pass with fewer tiles than K uses the job's idle cores. The pixels do not depend on it: the
        denoisers and the IVF index build give the same bits with any thread count
        (tests/test_exact_tiled.py, tests/test_ivf_threads.py)."""
        if self.threads == 0:
            return 0
        if self.scheduler == "slurm":
            return max(1, self.settings.cores // max(1, min(self.settings.tasks_per_job, tasks)))
        return max(1, self.cores // max(1, min(self.workers, tasks)))

    def run(self, fn: Callable, calls: list[tuple], on_done: Callable[[], None]) -> None:
        if not calls:
            return
        if len(calls) == 1 and self.scheduler == "threads":
            fn(*calls[0])
            on_done()
            return
        if self._client is not None:
            from distributed import as_completed

            futures = [self._client.submit(fn, *c, pure=False) for c in calls]
            for fut in as_completed(futures):
                fut.result()
                on_done()
            return
        import dask
        from dask.callbacks import Callback

        class _Count(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                on_done()

        tasks = [dask.delayed(fn, pure=False)(*c) for c in calls]
        with _Count():
            if self._pool is not None:
                dask.compute(*tasks, scheduler="processes", pool=self._pool)
            else:
                dask.compute(*tasks, scheduler="threads", num_workers=self.workers)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


def sample_tiled(run: RunDir, cfg: Config, plan: Plan, *, channels: int, tile: int, executor: Executor,
                 seed: int, progress: Progress | None = None, hooks: Hooks | None = None) -> None:
    """Alg. 2 over the run directory's state: every scale from the coarsest, every step, both passes.
    hooks: an application's (`sample.hooks`); a scale it fixes is one pass of `init_tile`.

    Stages already marked done are skipped, and so are the finished tiles of an interrupted pass.
    The result x_{0,0} is left in state.zarr at s0/x0.
    """
    group = run.state()
    run_dir = str(run.path)
    warm = warm_step(cfg.warm_start, cfg.steps)
    specs = [ScaleSpec(s, size, plan.out_sizes[s + 1] if s + 1 < plan.num_scales else None, channels,
                       cfg.steps, cfg.eta, seed, cfg.blend_last_step, hooks, warm if s + 1 < plan.num_scales else None)
             for s, size in enumerate(plan.out_sizes)]
    starts = [spec.start for spec in specs]  # = scale_starts(hooks, plan.num_scales, cfg.steps, warm)
    # per scale: the tiles denoised (pass A) and stepped (pass B; the other tiles only get `replace`)
    plans = [active_tiles(spec, tile_boxes(*spec.size, tile)) for spec in specs]
    counts = [t0 * (len(a) + len(tile_boxes(*size, tile))) if t0 else len(tile_boxes(*size, tile))
              for t0, (a, _), size in zip(starts, plans, plan.out_sizes)]
    total = sum(counts)
    # Work in output pixels (a fine scale's tile costs what a coarse scale's does per pixel): for the ETA.
    work = sum(n * h * w / len(tile_boxes(h, w, tile)) for n, (h, w) in zip(counts, plan.out_sizes))
    counter = {"done": 0, "start": time.perf_counter(), "skipped": 0, "work": 0.0, "work_skipped": 0.0,
               "pass_done": 0}

    def check_stop() -> None:
        if STOP.is_set():
            raise Interrupted()

    def skip(tiles: int, pixels: float) -> None:
        counter["done"] += tiles
        counter["skipped"] += tiles
        counter["work"] += pixels
        counter["work_skipped"] += pixels

    def report(scale: int, t: int, kind: str, pass_total: int, per_tile: float) -> None:
        check_stop()
        counter["done"] += 1
        counter["pass_done"] += 1
        counter["work"] += per_tile
        if progress is not None:
            progress({"event": "tile", "scale": scale, "t": t, "pass": kind, "done": counter["done"],
                      "total": total, "resumed": counter["skipped"],
                      "pass_done": counter["pass_done"], "pass_total": pass_total,
                      "work_done": counter["work"], "work_total": work, "work_resumed": counter["work_skipped"],
                      "seconds": time.perf_counter() - counter["start"]})

    for s in range(plan.num_scales - 1, -1, -1):
        size = plan.out_sizes[s]
        boxes = tile_boxes(*size, tile)
        t0 = starts[s]
        per_tile = size[0] * size[1] / len(boxes)
        denoised, stepped = plans[s]
        inactive = [b for b in boxes if b not in stepped]
        if run.done(f"s{s}"):
            skip(counts[s], counts[s] * per_tile)
            continue
        chunks = (channels, tile, tile)
        for name in ("x0", "x1", "xhat"):
            state_array(group, f"s{s}/{name}", (channels, *size), chunks)
        spec = specs[s]
        if t0 == 0:
            finished = run.tiles_done(f"s{s}-init")
            todo = [b for b in boxes if box_key(b) not in finished]
            skip(len(boxes) - len(todo), per_tile * (len(boxes) - len(todo)))
            counter["pass_done"] = len(boxes) - len(todo)
            check_stop()
            executor.prepare(len(boxes))
            executor.run(init_tile, [(run_dir, executor.task_threads(len(boxes)), spec, b) for b in todo],
                         lambda s=s, n=len(boxes), w=per_tile: report(s, 0, "I", n, w))
        for t in range(t0, 0, -1):
            for kind, groups in (("A", ((denoise_tile, denoised),)),
                                 ("B", ((step_tile, stepped), (replace_tile, inactive)))):
                name = f"s{s}-t{t}-{kind}"
                n = sum(len(tiles) for _, tiles in groups)
                if run.done(name):
                    skip(n, n * per_tile)
                    continue
                finished = run.tiles_done(name)
                counter["pass_done"] = 0
                for fn, tiles in groups:
                    todo = [b for b in tiles if box_key(b) not in finished]
                    skip(len(tiles) - len(todo), per_tile * (len(tiles) - len(todo)))
                    counter["pass_done"] += len(tiles) - len(todo)
                    check_stop()
                    threads = executor.task_threads(len(tiles))  # the group's full size: a resumed pass keeps its threads (and bits)
                    executor.prepare(n)
                    executor.run(fn, [(run_dir, threads, spec, t, b) for b in todo],
                                 lambda s=s, t=t, kind=kind, n=n, w=per_tile: report(s, t, kind, n, w))
                run.mark(name)
        for name in ("x1", "xhat"):  # x0 = x_{s,0} is kept: the next scale's coarse input (and, at s = 0, the output)
            if name in group[f"s{s}"]:
                del group[f"s{s}"][name]
        run.mark(f"s{s}")
