"""`run(cfg)`: wires reading, the pyramid, the per-scale denoisers, the sampler and writing. No maths here."""

from __future__ import annotations

import inspect
import shutil
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from . import __version__
from .config import Config
from .devices import gpu_worker_layout, release_memory
from .errors import ConfigError, DiskFull, Interrupted, disk_full
from .io.bigtiff import BIGTIFF_MODES, COMPRESSIONS, ZarrSource
from .io.color import INTENTS
from .io.lazy import open_image
from .io.read import load_image
from .index.ivf import set_threads
from .io.output import OutputSpec, output_spec, write_result
from .io.write import SUPPORTED_OUTPUT_SUFFIXES, output_paths
from .plan import Plan, build_denoisers, build_index, make_plan
from .refstream import ArrayRegions, write_reference_pyramid
from .sample.c2f import sample_coarse_to_fine
from .sample.hooks import Hooks, scale_starts, start_step
from .sample.schedule import warm_step
from .store import RunDir, fingerprint
from .tiles import STOP, Executor, release, sample_tiled

Progress = Callable[[dict], None]


@torch.no_grad()
def generate(
    reference: np.ndarray,
    cfg: Config,
    *,
    progress: Progress | None = None,
    plan: Plan | None = None,
    hooks: Hooks | None = None,
    clamp: bool = True,
) -> list[np.ndarray]:
    """Generate cfg.samples images (C, H, W) float32 in [-1, 1] from a reference (C, H, W) in [-1, 1].

    Sample k uses seed cfg.seed + k, so sample k is the same whatever cfg.samples is. hooks: an
    application's (`sample.hooks.Hooks`); None = unconditional sampling. clamp=False leaves the result
    unclamped (latents are not bounded by [-1, 1]).
    """
    ref = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32))
    plan = plan or make_plan(cfg, tuple(ref.shape[-2:]), ref.shape[0])
    denoisers = build_denoisers(ref, plan, cfg, hooks)
    results = []
    for k in range(cfg.samples):
        def callback(info: dict, k: int = k) -> None:
            if progress is not None:
                progress({"event": "step", "sample": k, "scale": info["scale"], "t": info["t"]})

        x = sample_coarse_to_fine(
            denoisers, plan.out_sizes, channels=ref.shape[0], steps=cfg.steps, eta=cfg.eta,
            seed=cfg.seed + k, blend_last_step=cfg.blend_last_step, callback=callback, hooks=hooks,
            warm=warm_step(cfg.warm_start, cfg.steps),
        )
        results.append((x.clamp(-1.0, 1.0) if clamp else x).cpu().numpy())
    return results


@dataclass(frozen=True)
class RunOptions:
    """How a run is executed and written; none of these change the pixels (bar bit_depth's quantisation).

    out_of_core: None = automatic (when the output does not fit in one tile, or for .zarr output).
    """

    tile_size: int = 1024
    workers: int = 0                 # 0 = one task per core
    scheduler: str = "threads"       # threads | processes | distributed
    address: str | None = None       # join an existing dask scheduler (implies distributed)
    cluster: object | None = None    # ClusterSettings: run the tiles in Slurm worker jobs (sidpipe.cluster)
    jobs: int = 4                    # with cluster: at most this many worker jobs
    workdir: Path | None = None      # run directory (default: <OUT>.sidpipe next to the output)
    keep_workdir: bool = False
    overwrite: bool = False
    out_of_core: bool | None = None
    compression: str = "zlib"        # TIFF output: zlib | zstd | lzw | jpeg | none
    bit_depth: int = 8
    dpi: float | None = None
    # print production (sidpipe.io.output): checked with the reference's profile by output_spec before any compute
    output_profile: Path | None = None  # convert to this RGB/CMYK ICC profile while writing
    intent: str | None = None        # perceptual | relative | saturation | absolute (None: relative)
    bpc: bool = False                # black point compensation
    bigtiff: str = "auto"            # auto | always | never
    pyramid: bool = True             # reduced levels in TIFF SubIFDs
    proof: Path | None = None        # soft-proof JPEG through the output profile
    gamut_warning: bool = False      # mark out-of-gamut pixels in the proof
    size_unit: str | None = None     # the unit --size was given in (shown on the plan line)
    vae: Path | None = None          # --codec vae: the VAE's folder or .safetensors file (sidpipe.codec.vae)
    vae_config: str | None = None    # its config when vae is a single file: a shipped name or a folder

    def __post_init__(self) -> None:
        if self.tile_size < 64 or self.tile_size % 16:
            raise ConfigError(f"--tile-size must be a multiple of 16 and >= 64, got {self.tile_size}")
        if self.workers < 0:
            raise ConfigError("--workers must be >= 0")
        if self.jobs < 1:
            raise ConfigError("--jobs must be >= 1")
        if self.cluster is not None and self.address:
            raise ConfigError("--cluster and --address exclude each other")
        if self.scheduler not in ("threads", "processes", "distributed"):
            raise ConfigError(f"--scheduler must be threads, processes or distributed, got {self.scheduler!r}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"--compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")
        if self.bigtiff not in BIGTIFF_MODES:
            raise ConfigError(f"--bigtiff must be one of {', '.join(BIGTIFF_MODES)}, got {self.bigtiff!r}")
        if self.intent is not None and self.intent not in INTENTS:
            raise ConfigError(f"--intent must be one of {', '.join(INTENTS)}, got {self.intent!r}")
        if self.bit_depth not in (8, 16):
            raise ConfigError(f"--bit-depth must be 8 or 16, got {self.bit_depth}")
        if self.compression == "jpeg" and self.bit_depth != 8:
            raise ConfigError("--compression jpeg needs --bit-depth 8")
        if self.dpi is not None and self.dpi <= 0:
            raise ConfigError("--dpi must be > 0")

    def output_spec(self, input_path: Path, out: Path, size: tuple[int, int], channels: int) -> tuple[OutputSpec, str]:
        """The checked output spec of a run with result `size` (H, W), and its plan line (see `output_spec`)."""
        return output_spec(input_path, out, size=size, channels=channels, compression=self.compression,
                           bit_depth=self.bit_depth, dpi=self.dpi, profile=self.output_profile, intent=self.intent,
                           bpc=self.bpc, bigtiff=self.bigtiff, pyramid=self.pyramid, proof=self.proof,
                           gamut_warning=self.gamut_warning, size_unit=self.size_unit)


def check_output(out: Path) -> None:
    """Refuse an output path we cannot write before any heavy work starts."""
    if out.suffix.lower() not in SUPPORTED_OUTPUT_SUFFIXES + (".zarr",):
        raise ConfigError(f"unsupported output type {out.suffix or '(none)'!r}; "
                          f"use one of {', '.join(SUPPORTED_OUTPUT_SUFFIXES + ('.zarr',))}")
    if not out.parent.exists():
        raise ConfigError(f"output folder does not exist: {out.parent}")


# The signal that stopped the run: SIGTERM (Slurm's preemption / scancel / time limit) or SIGUSR1 (the
# warning a batch task asks for with --signal=B:USR1@N, after which `sidpipe run --requeue` requeues it).
STOPPED_BY = {"signal": "SIGTERM"}


def _on_sigterm(signum, frame) -> None:
    # The flag makes the stop stick even if this exception lands in a finaliser run by the garbage
    # collector (Python ignores exceptions raised there): the tile loop checks it after every tile.
    STOPPED_BY["signal"] = signal.Signals(signum).name
    STOP.set()
    raise Interrupted(STOPPED_BY["signal"])


@dataclass(frozen=True)
class Latent:
    """A latent-mode run (`cfg.codec == "vae"`): the tiled VAE, the reference's crop to whole latent
    pixels (y0, y1, x0, x1, centred), the requested output size in pixels, and the config in latent
    units (width/height = the output's latent size, ceil(pixels / factor); decoded, then cropped)."""

    tiled: object                     # sidpipe.codec.tiled.TiledCodec
    crop: tuple[int, int, int, int]
    out_px: tuple[int, int]
    cfg: Config

    @property
    def channels(self) -> int:
        return self.tiled.codec.latent_channels

    def sample(self, k: int) -> Latent:
        return Latent(self.tiled, self.crop, self.out_px, self.cfg.replace(seed=self.cfg.seed + k, samples=1))

    def sample_tile(self, tile_size: int) -> int:
        """The sampler's tile in latent px for `--tile-size` px: tile_size / factor, rounded up to whole
        query blocks (a tile must be a union of the fixed query blocks for tiled == in memory)."""
        b = self.cfg.query_block
        return max(b, -(-(tile_size // self.tiled.codec.factor) // b) * b)

    @property
    def vae_tile(self) -> int:
        """Encode/decode tile in latent px: `vae_tile`, or auto: 128 for a tiny decoder (its halo costs
        (64 + 2 x 19)^2 / 64^2 = 2.5x at 64; measured 1.6-2.4x faster decodes at 128), 64 for an
        AutoencoderKL, whose 128-channel full-resolution activations would need GBs at 128."""
        return self.cfg.vae_tile or (128 if self.tiled.codec.kind == "tiny" else 64)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """An application's image (C, H, W) in [-1, 1] (analogy's structure, i2i's content) as a latent of the
        output's latent size, through the reference's encoder: resized to the output's pixel size if it is
        not at it, edge-padded at the bottom and right to whole latent pixels (where the decoded result is
        cropped) and encoded in tiles with the same settings as the reference."""
        from .codec.vae import as_rgb
        from .pyramid import resize

        (oh, ow), f = self.out_px, self.tiled.codec.factor
        x = as_rgb(image.float())
        if tuple(x.shape[-2:]) != (oh, ow):
            x = resize(x, (oh, ow)).clamp(-1.0, 1.0)
        pad = (0, self.cfg.width * f - ow, 0, self.cfg.height * f - oh)
        x = torch.nn.functional.pad(x[None], pad, mode="replicate")[0]
        return self.tiled.encode(x.contiguous(), **self.coding("encode"))

    def coding(self, what: str) -> dict:
        """Tile settings of the encoder or decoder (`TiledCodec.encode`/`decode` keyword arguments)."""
        c = self.cfg
        return {"tile": self.vae_tile, "stats_tile": c.vae_stats_tile, "max_stat_tiles": c.vae_stats_tiles,
                "max_tokens": c.vae_attention_tokens}


def latent_hooks(make_hooks: Callable) -> bool:
    """Whether an application's hooks builder also runs in latent mode: it takes `encode`, the function that
    turns its own images (pixels) into latents (`Latent.encode_image`), and is called as
    make_hooks(plan, encode=...) there; make_hooks(plan) in pixel mode."""
    return "encode" in inspect.signature(make_hooks).parameters


def latent_setup(cfg: Config, options: RunOptions, ref_hw: tuple[int, int]) -> Latent | None:
    """Load the VAE of a `--codec vae` run (None for a pixel run); bad VAE inputs raise before any work."""
    if cfg.codec != "vae":
        if options.vae is not None or options.vae_config is not None:
            raise ConfigError("--vae/--vae-config are for --codec vae (or --preset latent / gigapixel)")
        return None
    if options.vae is None:
        raise ConfigError("--codec vae needs --vae PATH (a diffusers VAE folder, or a .safetensors file with "
                          "--vae-config); see README 'Latent mode'")
    from .codec import load_vae
    from .codec.tiled import TiledCodec
    from .codec.vae import latent_crop
    from .devices import resolve_device

    codec = load_vae(options.vae, options.vae_config, resolve_device(cfg.device))
    f = codec.factor
    h, w = ref_hw
    crop = latent_crop(h, w, f)
    out_w = cfg.width or (w if not cfg.height else round(w * cfg.height / h))
    out_h = cfg.height or (h if not cfg.width else round(h * cfg.width / w))
    lat_cfg = cfg.replace(width=-(-out_w // f), height=-(-out_h // f))
    return Latent(TiledCodec(codec), crop, (out_h, out_w), lat_cfg)


def run(input_path: Path, out: Path, cfg: Config, *, progress: Progress | None = None,
        options: RunOptions | None = None, make_hooks: Callable[[Plan], Hooks] | None = None) -> list[Path]:
    """Read the reference, generate cfg.samples images and write them; returns the written paths.

    make_hooks: an application's hooks for the run's plan (`sidpipe.apps`); it checks its own inputs and
    raises a SidpipeError before anything is written."""
    options = options or RunOptions()
    check_output(out)
    started = time.perf_counter()
    with open_image(input_path) as image:  # header only: the shape (and a clear error for a bad file)
        channels, height, width = image.shape
    latent = latent_setup(cfg, options, (height, width))
    if latent is None:
        plan = make_plan(cfg, (height, width), channels)
        oh, ow = plan.out_sizes[0]
        out_channels = channels
    else:
        if make_hooks is not None and not latent_hooks(make_hooks):
            raise ConfigError("this application runs in pixel space; --codec vae is for `sidpipe run`, "
                              "`analogy` and `i2i`")
        y0, y1, x0, x1 = latent.crop
        f = latent.tiled.codec.factor
        plan = make_plan(latent.cfg, ((y1 - y0) // f, (x1 - x0) // f), latent.channels)
        (oh, ow), out_channels = latent.out_px, 3
    if make_hooks is None:
        hooks = None
    else:
        hooks = make_hooks(plan) if latent is None else make_hooks(plan, encode=latent.encode_image)
    tiled = options.out_of_core
    if tiled is None:
        tiled = (oh * ow > options.tile_size**2 or out.suffix.lower() == ".zarr" or options.workdir is not None
                 or options.cluster is not None)
    if not tiled and out.suffix.lower() == ".zarr":
        raise ConfigError(".zarr output is written by the out-of-core pipeline only")
    spec, output_line = options.output_spec(input_path, out, (oh, ow), out_channels)
    layout = gpu_worker_layout(plan.device, options.scheduler, options.workers or torch.get_num_threads(),
                               address=options.address)
    if progress is not None:
        event = {"event": "plan", "plan": plan, "samples": cfg.samples, "steps": cfg.steps,
                 "starts": scale_starts(hooks, plan.num_scales, cfg.steps, warm_step(cfg.warm_start, cfg.steps)),
                 "tiled": tiled, "tile": options.tile_size if latent is None else latent.sample_tile(options.tile_size),
                 "channels": channels if latent is None else latent.channels,
                 "workers": options.jobs if options.cluster is not None else layout[1],
                 "scheduler": "slurm" if options.cluster is not None else layout[0],
                 "output": output_line}
        if latent is not None:
            dec = latent.tiled.decoder
            event["codec"] = (f"codec: {latent.tiled.codec.describe()}; decoder receptive field {dec.receptive_field} "
                              f"latent px (measured), decode tiles {latent.vae_tile} + halo {dec.halo}")
        progress(event)
    paths = output_paths(out, cfg.samples)
    if tiled:
        STOP.clear()
        STOPPED_BY["signal"] = "SIGTERM"
        main = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, _on_sigterm) for sig in (signal.SIGTERM, signal.SIGUSR1)} if main else {}
        try:
            for k, path in enumerate(paths):
                run_out_of_core(input_path, None, path, cfg.replace(seed=cfg.seed + k, samples=1), plan,
                                options, progress=progress, spec=spec, hooks=hooks,
                                latent=None if latent is None else latent.sample(k))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    elif latent is None:
        images = generate(load_image(input_path), cfg, progress=progress, plan=plan, hooks=hooks)
        for path, image in zip(paths, images):
            write_result(ArrayRegions(image), path, spec, zarr.open_group(zarr.storage.MemoryStore(), mode="w"))
    else:
        for path, image in zip(paths, generate_latent(input_path, latent, plan, progress=progress, hooks=hooks)):
            write_result(ArrayRegions(image), path, spec, zarr.open_group(zarr.storage.MemoryStore(), mode="w"))
    if progress is not None:
        progress({"event": "done", "paths": paths, "seconds": time.perf_counter() - started})
    return paths


def generate_latent(input_path: Path, latent: Latent, plan: Plan, *, progress: Progress | None = None,
                    hooks: Hooks | None = None) -> list[np.ndarray]:
    """In memory: encode the reference in tiles, sample latents (with an application's `hooks`), decode each
    in tiles; (3, H, W) in [-1, 1]."""
    from .codec.vae import as_rgb

    y0, y1, x0, x1 = latent.crop
    x = as_rgb(torch.from_numpy(load_image(input_path)[:, y0:y1, x0:x1]))
    tc = latent.tiled
    z_ref = tc.encode(x.contiguous(), **latent.coding("encode"))
    images = generate(z_ref.numpy(), latent.cfg, progress=progress, plan=plan, hooks=hooks, clamp=False)
    oh, ow = latent.out_px
    return [tc.decode(torch.from_numpy(z), **latent.coding("decode"))[:, :oh, :ow].numpy() for z in images]


def run_out_of_core(input_path: Path, reference: np.ndarray | None, out: Path, cfg: Config, plan: Plan,
                    options: RunOptions, *, progress: Progress | None = None, spec: OutputSpec | None = None,
                    hooks: Hooks | None = None, latent: Latent | None = None) -> Path:
    """One sample through the run directory: reference pyramid and indexes on disk, tiled sampling over
    zarr, streamed output. Resumes whatever a previous, interrupted run of the same job had finished.

    reference: the image already in memory (C, H, W), or None to read input_path region by region
    (`open_image`) while the reference pyramid is written, never holding it whole. spec: the checked
    output spec (default: `RunOptions.output_spec` of this output). hooks: an application's (its
    `identity` joins the run directory's). latent: a latent-mode run (see `Latent`; sidpipe.codec.stream):
    the reference is encoded in tiles, sampled in latent space, and the result decoded in tiles before
    it is written."""
    run_dir = options.workdir or out.with_name(out.name + ".sidpipe")
    identity = {"config": cfg.to_dict(), "input": fingerprint(input_path), "output_size": list(plan.out_sizes[0])}
    if hooks is not None:
        identity["app"] = hooks.identity
    sample_cfg = cfg
    if latent is not None:
        from .codec.stream import check_latent_channels

        check_latent_channels(run_dir, latent.channels, options.overwrite)
        codec = latent.tiled.codec
        identity["vae"] = {"kind": codec.kind, "latent_channels": codec.latent_channels, "weights": codec.fingerprint}
        identity["output_pixels"] = list(latent.out_px)
        sample_cfg = latent.cfg
    run = None
    try:
        with open_image(input_path) if reference is None else nullcontext(reference) as source:
            channels = source.shape[0] if latent is None else latent.channels
            extra = {
                "plan": {"ref_sizes": plan.ref_sizes, "out_sizes": plan.out_sizes, "device": plan.device.type,
                         "precision": plan.precision, "indexes": plan.indexes, "patches": plan.patches},
                "layout": {"tile": options.tile_size if latent is None else latent.sample_tile(options.tile_size),
                           "channels": channels},
                "versions": {"sidpipe": __version__, "torch": torch.__version__, "zarr": zarr.__version__},
            }
            # Locked until the end (or this process's death): one driver per run directory.
            run = RunDir.open(run_dir, identity, extra, overwrite=options.overwrite)
            if not run.done("reference"):
                if latent is None:
                    write_reference_pyramid(source, plan.ref_sizes, run.reference(), chunk=1024, progress=progress)
                else:
                    from .codec.stream import ArraySource, check_stop_flag, encode_reference

                    coded = encode_reference(run, source, latent.tiled, crop=latent.crop, stop=check_stop_flag(STOP),
                                             progress=progress, **latent.coding("encode"))
                    write_reference_pyramid(ArraySource(coded), plan.ref_sizes, run.reference(), chunk=1024,
                                            progress=progress)
                run.mark("reference")
        if hooks is not None and hooks.store is not None:
            # the application's images and masks into the run directory: tasks carry a path, not the arrays
            hooks = hooks.store(run.path / "hooks.zarr", not run.done("hooks"))
            run.mark("hooks")
        _drive(run, input_path, out, sample_cfg, plan, options, channels, progress, spec, hooks, latent)
    except Exception as exc:
        full = disk_full(exc)
        if full is not None:
            raise DiskFull(str(full.filename or (run.path if run is not None else run_dir))) from None
        raise
    finally:
        if run is not None:
            run.close()
    return out


def _drive(run: RunDir, input_path: Path, out: Path, cfg: Config, plan: Plan, options: RunOptions,
           channels: int, progress: Progress | None, spec: OutputSpec | None, hooks: Hooks | None,
           latent: Latent | None = None) -> None:
    """Indexes, tiled sampling and the output of `run_out_of_core`, once the run directory is open and locked."""
    tile = run.manifest()["layout"]["tile"]  # a resumed run keeps the tiling its arrays were made with
    for s, kind in enumerate(plan.indexes):
        if kind == "ivf" and not run.done(f"index-s{s}") and start_step(hooks, s, cfg.steps) > 0:
            if progress is not None:
                progress({"event": "index", "scale": s, "patches": plan.patches[s]})
            level = torch.from_numpy(run.reference()[str(s)][...])
            build_index(level, cfg, plan.device).save(run.index_path(s))
            del level
            release_memory()  # the built index is on disk now; its freed lists would otherwise stay resident
            run.mark(f"index-s{s}")
    cores = torch.get_num_threads()
    if options.cluster is not None:
        executor = Executor("slurm", options.jobs, cluster=options.cluster, log_dir=run.path / "slurm-logs",
                            progress=progress)
    else:
        scheduler, workers = gpu_worker_layout(plan.device, "distributed" if options.address else options.scheduler,
                                               options.workers or cores, address=options.address)
        executor = Executor(scheduler, workers, options.address, pin_gpus=plan.device.type == "cuda")
    try:
        sample_tiled(run, cfg, plan, channels=channels, tile=tile, executor=executor, seed=cfg.seed,
                     progress=progress, hooks=hooks)
    finally:
        executor.close()
        # In-process workers set torch/faiss threads per task: give the process its own count back, so
        # a next sample (or anything else in this process) again sees all the cores.
        release(str(run.path))
        torch.set_num_threads(cores)
        set_threads(cores)
    if latent is None:
        if spec is None:
            spec, _ = options.output_spec(input_path, out, plan.out_sizes[0], channels)
        write_output(run, out, spec, progress=progress)
    else:
        from .codec.stream import check_stop_flag, decode_result

        decoded = decode_result(run, run.state()["s0/x0"], latent.tiled, out_size=latent.out_px,
                                stop=check_stop_flag(STOP), progress=progress, **latent.coding("decode"))
        if spec is None:
            spec, _ = options.output_spec(input_path, out, latent.out_px, 3)
        write_output(run, out, spec, progress=progress, source=ZarrSource(decoded))
    if not options.keep_workdir:
        shutil.rmtree(run.path, ignore_errors=True)


def write_output(run: RunDir, out: Path, spec: OutputSpec, *, progress: Progress | None = None,
                 source: ZarrSource | None = None) -> None:
    """Stream x_{0,0} from the run's state (or `source`: a latent run's decoded image) into the output file
    (TIFF, OME-Zarr, or PNG/JPEG) as `spec` says."""

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress({"event": "write", "done": done, "total": total})

    write_result(source or ZarrSource(run.state()["s0/x0"]), out, spec, zarr.open_group(run.path / "levels.zarr", mode="w"),
                 progress=report)
