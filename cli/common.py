"""Options shared by `sidpipe run` and the application commands (inpaint, outpaint, retarget, ...).

`shared_options(preset)` adds run's options (output, seed, samples, steps, presets, --set, tiles,
workers, scheduler, output formats, print production) to a command, so each is declared once; the
command receives them as one `SharedOptions` and runs its job with `run_job`.
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Optional, get_type_hints

import typer

from sidpipe.cluster import load_settings, split_overrides
from sidpipe.config import Config, load_config, parse_set, preset_cluster
from sidpipe.errors import Interrupted, SidpipeError
from sidpipe.io.units import parse_size as parse_print_size

from . import fail
from .options import Codec, VaeConfig, VaePath
from .progress import Reporter

# --size, for the commands that take one (run, retarget, outpaint).
SizeOption = Annotated[Optional[str], typer.Option(help="Output size WxH in pixels, or with a unit and --dpi: "
                                                   "300x200cm, 40x30in, 900x600mm (default: the reference's size).")]


def _shared(
    *,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file; its extension picks the format (.png, .tif, .jpg).")],
    seed: Annotated[Optional[int], typer.Option(help="Random seed; sample k uses seed + k.")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Number of images; >1 writes OUT-stem_000.ext, _001, ...")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Diffusion steps T per scale.")] = None,
    eta: Annotated[Optional[float], typer.Option(help="Stochasticity in [0, 1] (0 = deterministic DDIM).")] = None,
    patch_size: Annotated[Optional[int], typer.Option("--patch-size", help="Patch size p (odd).")] = None,
    preset: Annotated[str, typer.Option(help="Preset from configs/ (name) or a YAML file.")] = "default",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any config key: --set key=value (repeatable).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda")] = None,
    index: Annotated[Optional[str], typer.Option(help="Nearest-neighbour search: auto | exact | ivf")] = None,
    codec: Codec = None,
    vae: VaePath = None,
    vae_config: VaeConfig = None,
    tile_size: Annotated[int, typer.Option("--tile-size", help="Compute tile side (px) of the out-of-core pipeline; "
                                           "outputs larger than one tile run out of core.")] = 1024,
    workers: Annotated[int, typer.Option(help="Tiles computed at once (0 = one per core).")] = 0,
    scheduler: Annotated[str, typer.Option(help="threads | processes | distributed (a LocalCluster)")] = "threads",
    address: Annotated[Optional[str], typer.Option(help="Join an existing dask scheduler, e.g. tcp://host:8786.")] = None,
    cluster: Annotated[Optional[str], typer.Option(help="slurm: compute the tiles in Slurm worker jobs (settings: "
                                                   "configs/cluster/slurm.yaml, site/user files, --set cluster.KEY=V).")] = None,
    jobs: Annotated[int, typer.Option(help="With --cluster: at most this many worker jobs.")] = 4,
    workdir: Annotated[Optional[Path], typer.Option(help="Run directory (default: OUT.sidpipe beside the output); "
                                                    "giving one forces the out-of-core pipeline.")] = None,
    keep_workdir: Annotated[bool, typer.Option("--keep-workdir", help="Keep the run directory after success.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Discard an unfinished run of a different job.")] = False,
    compression: Annotated[str, typer.Option(help="TIFF compression: zlib | zstd | lzw | jpeg | none")] = "zlib",
    bit_depth: Annotated[int, typer.Option("--bit-depth", help="8 or 16 bits per channel.")] = 8,
    dpi: Annotated[Optional[float], typer.Option(help="Resolution written to the output (dots per inch); "
                                                 "turns a --size in mm/cm/in into pixels.")] = None,
    # print production (README "Print production")
    output_profile: Annotated[Optional[Path], typer.Option("--output-profile", help="Convert to this RGB or CMYK ICC "
                              "profile while writing (CMYK: .tif only).")] = None,
    intent: Annotated[Optional[str], typer.Option(help="perceptual | relative | saturation | absolute "
                                                  "(default relative).")] = None,
    bpc: Annotated[bool, typer.Option("--bpc", help="Black point compensation.")] = False,
    bigtiff: Annotated[str, typer.Option(help="auto | always | never (auto: BigTIFF only above 4 GiB).")] = "auto",
    no_pyramid: Annotated[bool, typer.Option("--no-pyramid", help="No reduced levels (SubIFDs) in TIFF output.")] = False,
    proof: Annotated[Optional[Path], typer.Option(help="Soft proof JPEG (<= 2048 px) through the output profile.")] = None,
    gamut_warning: Annotated[bool, typer.Option("--gamut-warning", help="Mark out-of-gamut pixels in the proof.")] = False,
    requeue: Annotated[bool, typer.Option("--requeue", help="Inside a Slurm job: on SIGUSR1 (sbatch "
                                          "--signal=B:USR1@SECONDS) checkpoint, then `scontrol requeue` the job, "
                                          "which resumes when it starts again (sidpipe batch sets it).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """The shared options (only its signature is used)."""


@dataclass(frozen=True)
class SharedOptions:
    """The values of `_shared`'s options for one command call."""

    out: Path
    seed: Optional[int]
    samples: Optional[int]
    steps: Optional[int]
    eta: Optional[float]
    patch_size: Optional[int]
    preset: str
    set_: Optional[list[str]]
    device: Optional[str]
    index: Optional[str]
    codec: Optional[str]
    vae: Optional[Path]
    vae_config: Optional[str]
    tile_size: int
    workers: int
    scheduler: str
    address: Optional[str]
    cluster: Optional[str]
    jobs: int
    workdir: Optional[Path]
    keep_workdir: bool
    overwrite: bool
    compression: str
    bit_depth: int
    dpi: Optional[float]
    output_profile: Optional[Path]
    intent: Optional[str]
    bpc: bool
    bigtiff: str
    no_pyramid: bool
    proof: Optional[Path]
    gamut_warning: bool
    requeue: bool
    quiet: bool

    def config(self, size: str | None = None) -> tuple[Config, str | None]:
        """The job's config (preset, then --set, then the flags, then --size) and --size's unit."""
        overrides, _ = split_overrides(parse_set(self.set_ or []))
        flags = {"seed": self.seed, "samples": self.samples, "steps": self.steps, "eta": self.eta,
                 "patch_size": self.patch_size, "device": self.device, "index": self.index, "codec": self.codec}
        overrides.update({k: v for k, v in flags.items() if v is not None})
        size_unit = None
        if size is not None:
            (overrides["width"], overrides["height"]), size_unit = parse_print_size(size, self.dpi)
        return load_config(self.preset, overrides), size_unit

    def cluster_settings(self):
        """--cluster's settings (shipped < site < user < preset `cluster:` < --set cluster.KEY=V), or None."""
        _, cluster_overrides = split_overrides(parse_set(self.set_ or []))
        if self.cluster is None:
            if cluster_overrides:
                raise SidpipeError("--set cluster.* needs --cluster slurm")
            return None
        if self.cluster != "slurm":
            raise SidpipeError(f"--cluster supports slurm, got {self.cluster!r}")
        return load_settings(preset_cluster(self.preset), cluster_overrides)

    def run_options(self, size_unit: str | None):
        from sidpipe.runner import RunOptions

        return RunOptions(tile_size=self.tile_size, workers=self.workers, scheduler=self.scheduler,
                          address=self.address, cluster=self.cluster_settings(), jobs=self.jobs, workdir=self.workdir, keep_workdir=self.keep_workdir,
                          overwrite=self.overwrite, compression=self.compression, bit_depth=self.bit_depth,
                          dpi=self.dpi, output_profile=self.output_profile, intent=self.intent, bpc=self.bpc,
                          bigtiff=self.bigtiff, pyramid=not self.no_pyramid, proof=self.proof,
                          gamut_warning=self.gamut_warning, size_unit=size_unit, vae=self.vae,
                          vae_config=self.vae_config)


def shared_options(preset: str = "default") -> Callable[[Callable], Callable]:
    """Decorator: the command gets run's shared options (default preset `preset`) after its own, and is
    called with them gathered in `shared: SharedOptions`."""
    template = inspect.signature(_shared)
    template_hints = get_type_hints(_shared, include_extras=True)

    def decorate(fn: Callable) -> Callable:
        hints = get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=hints[p.name]) for p in inspect.signature(fn).parameters.values()
               if p.name != "shared"]
        shared = [p.replace(annotation=template_hints[p.name], default=preset if p.name == "preset" else p.default)
                  for p in template.parameters.values()]
        names = [p.name for p in shared]

        @functools.wraps(fn)
        def command(**kwargs):
            return fn(**{k: v for k, v in kwargs.items() if k not in names},
                      shared=SharedOptions(**{n: kwargs[n] for n in names}))

        del command.__wrapped__  # Typer reads the signature and annotations set here
        params = sorted(own + shared, key=lambda p: p.kind)  # arguments first, then the options
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    assert [f.name for f in fields(SharedOptions)] == list(template.parameters)
    return decorate


def run_job(shared: SharedOptions, input: Path, *, size: str | None = None,
            app: Callable[[Config], tuple[Config, Callable | None]] | None = None) -> None:
    """Check the inputs, build the config and the application's hooks (`app(cfg) -> (cfg, make_hooks)`,
    run inside the error handling: a bad argument is one line and exit 1), and run the job."""
    from sidpipe.runner import run

    reporter = Reporter(quiet=shared.quiet)
    try:
        cfg, size_unit = shared.config(size)
        if not input.is_file():
            raise SidpipeError(f"input not found: {input}")
        make_hooks = None
        if app is not None:
            cfg, make_hooks = app(cfg)
        run(input, shared.out, cfg, progress=reporter, options=shared.run_options(size_unit), make_hooks=make_hooks)
    except SidpipeError as exc:
        reporter.close()
        if isinstance(exc, Interrupted):
            stopped(shared.requeue)
        fail(str(exc))
    except Exception:
        # SIGTERM raises Interrupted wherever the main thread is: inside a library that wraps or
        # replaces the exception (an import, a finaliser, a C extension's callback) it arrives as
        # something else. The handler's flag says what really happened.
        from sidpipe.errors import DiskFull, disk_full
        from sidpipe.tiles import STOP

        full = disk_full(sys.exc_info()[1])
        if full is not None:  # the in-memory path's output, or anything outside the run directory's guard
            reporter.close()
            fail(str(DiskFull(str(full.filename or shared.out))))
        if not STOP.is_set():
            raise
        reporter.close()
        stopped(shared.requeue)


def stopped(requeue: bool) -> None:
    """The run stopped on a signal, its finished tiles on disk: one line, exit 1; with --requeue after a
    SIGUSR1 inside a Slurm job, requeue the job first (it resumes from the run directory)."""
    from sidpipe.runner import STOPPED_BY

    name = STOPPED_BY["signal"]
    message = str(Interrupted(name))
    job = os.environ.get("SLURM_JOB_ID")
    if requeue and name == "SIGUSR1" and job:
        if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the requeue ends this job with SIGTERM: we are leaving
        try:
            res = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
            ok, why = res.returncode == 0, res.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            ok, why = False, str(exc)
        message = (f"stopped by SIGUSR1 (time limit near); finished tiles are kept; requeued Slurm job {job}: "
                   "it resumes when it starts again") if ok else f"{message} (scontrol requeue {job} failed: {why})"
    fail(message)
