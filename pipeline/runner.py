"""`run(cfg)`: wires reading, the pyramid, the per-scale denoisers, the sampler and writing. No maths here."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .denoise import ImageDenoiser, KNNDenoiser, PatchDenoiser
from .devices import resolve_device, resolve_precision
from .errors import ConfigError, ImageError
from .index import IVFIndex, IVFParams, PatchGrid
from .index.ivf import set_threads
from .io.read import load_image
from .io.write import SUPPORTED_OUTPUT_SUFFIXES, output_paths, save_image
from .patches import window_radius
from .pyramid import auto_num_scales, reference_pyramid, scale_sizes
from .sample.c2f import sample_coarse_to_fine
from .sample.schedule import alpha_sigma

Progress = Callable[[dict], None]

# `--index auto` switches a scale to IVF at this many reference patches. CPU: the measured crossover of
# exact bf16 and IVF per call on this 2-core machine (benchmarks/bench_index.py); GPU: the official rule.
CPU_IVF_THRESHOLD = 2000
GPU_IVF_THRESHOLD = 250_000


@dataclass(frozen=True)
class Plan:
    """What a run will compute: per-scale sizes (index 0 = finest) and the resolved compute settings."""

    ref_sizes: list[tuple[int, int]]
    out_sizes: list[tuple[int, int]]
    device: torch.device
    precision: str
    indexes: list[str]            # per scale (index 0 = finest): "exact" or "ivf"
    patches: list[int]            # reference patches per scale (in the index, after dataset_stride)

    @property
    def num_scales(self) -> int:
        return len(self.ref_sizes)

    def describe(self) -> str:
        lines = [f"{self.num_scales} scales, device {self.device.type}, precision {self.precision}"]
        for s in range(self.num_scales - 1, -1, -1):
            (rh, rw), (oh, ow) = self.ref_sizes[s], self.out_sizes[s]
            lines.append(f"  scale {s}: reference {rw}x{rh} -> output {ow}x{oh}, "
                         f"{self.indexes[s]} index over {self.patches[s]} patches")
        return "\n".join(lines)


def make_plan(cfg: Config, ref_hw: tuple[int, int]) -> Plan:
    """Check sizes against the patch size and resolve scales, device, precision and index."""
    h, w = ref_hw
    p = cfg.patch_size
    if min(h, w) < 2 * p:
        raise ImageError(f"reference is {w}x{h}; it must be at least 2*patch_size = {2 * p} px on each side")
    out_w = cfg.width or (w if not cfg.height else round(w * cfg.height / h))
    out_h = cfg.height or (h if not cfg.width else round(h * cfg.width / w))
    if min(out_h, out_w) < p:
        raise ConfigError(f"output size {out_w}x{out_h} is smaller than the patch size {p}")
    n = cfg.num_scales or auto_num_scales(h, w, p, cfg.coarsest_ratio, cfg.scale_factor)
    ref_sizes = scale_sizes(h, w, n, cfg.scale_factor)
    if min(ref_sizes[-1]) < p:
        raise ConfigError(
            f"num_scales={n} makes the coarsest reference scale {ref_sizes[-1][1]}x{ref_sizes[-1][0]}, "
            f"smaller than the patch size {p}")
    out_sizes = scale_sizes(out_h, out_w, n, cfg.scale_factor, min_side=p)
    window = 2 * window_radius(p, cfg.rho, cfg.fold_truncate) + 1
    if cfg.query_stride > window:
        raise ConfigError(f"query_stride={cfg.query_stride} would leave pixels uncovered: the fold window is {window} px "
                          f"wide (p={p}, rho={cfg.rho}); use at most {window}")
    device = resolve_device(cfg.device)
    patches = [PatchGrid(1, rh, rw, p, cfg.dataset_stride).size for rh, rw in ref_sizes]
    indexes = resolve_indexes(cfg, patches, device)
    return Plan(ref_sizes, out_sizes, device, resolve_precision(cfg.precision, device), indexes, patches)


def resolve_indexes(cfg: Config, patches: list[int], device: torch.device) -> list[str]:
    """Exact or IVF per scale: `index_scales` entries, else `index`; auto compares the scale's patch count
    with `ivf_threshold` (0 = the device default: the measured CPU crossover, or the official 250k on a GPU)."""
    per_scale = cfg.scale_indexes()
    if len(per_scale) > len(patches):
        raise ConfigError(f"index_scales lists {len(per_scale)} scales but the run has {len(patches)}")
    threshold = cfg.ivf_threshold or (GPU_IVF_THRESHOLD if device.type == "cuda" else CPU_IVF_THRESHOLD)
    kinds = []
    for s, n in enumerate(patches):
        kind = per_scale[s] if s < len(per_scale) else cfg.index
        if kind == "auto":
            kind = "ivf" if n >= threshold else "exact"
        kinds.append(kind)
    return kinds


def ivf_params(cfg: Config) -> IVFParams:
    return IVFParams(nlist=cfg.nlist, nprobe=cfg.nprobe, pca=cfg.pca, pq=cfg.pq, train_factor=cfg.train_factor)


def build_denoisers(reference: torch.Tensor, plan: Plan, cfg: Config) -> list[ImageDenoiser]:
    """One closed-form denoiser per scale: exact, or k-NN over that scale's IVF index."""
    pyramid = reference_pyramid(reference, plan.ref_sizes)
    set_threads(torch.get_num_threads())
    common = dict(patch_size=cfg.patch_size, rho=cfg.rho, truncate=cfg.fold_truncate,
                  query_block=cfg.query_block, query_stride=cfg.query_stride)
    denoisers: list[ImageDenoiser] = []
    for level, kind in zip(pyramid, plan.indexes):
        if kind == "exact":
            denoisers.append(PatchDenoiser(level.to(plan.device), precision=plan.precision, **common))
            continue
        grid = PatchGrid(level.shape[0], level.shape[1], level.shape[2], cfg.patch_size, cfg.dataset_stride)
        index = IVFIndex.build(level, grid, ivf_params(cfg)).to_device(plan.device)
        last_sigma = alpha_sigma(1, cfg.steps)[1]
        denoisers.append(KNNDenoiser(level.to(plan.device), index, k=cfg.knn, final_nprobe=cfg.nprobe_last,
                                     final_sigma=last_sigma * (1 + 1e-9), **common))
    return denoisers


@torch.no_grad()
def generate(
    reference: np.ndarray,
    cfg: Config,
    *,
    progress: Progress | None = None,
    plan: Plan | None = None,
) -> list[np.ndarray]:
    """Generate cfg.samples images (C, H, W) float32 in [-1, 1] from a reference (C, H, W) in [-1, 1].

    Sample k uses seed cfg.seed + k, so sample k is the same whatever cfg.samples is.
    """
    ref = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32))
    plan = plan or make_plan(cfg, tuple(ref.shape[-2:]))
    denoisers = build_denoisers(ref, plan, cfg)
    results = []
    for k in range(cfg.samples):
        def callback(info: dict, k: int = k) -> None:
            if progress is not None:
                progress({"event": "step", "sample": k, "scale": info["scale"], "t": info["t"]})

        x = sample_coarse_to_fine(
            denoisers, plan.out_sizes, channels=ref.shape[0], steps=cfg.steps, eta=cfg.eta,
            seed=cfg.seed + k, blend_last_step=cfg.blend_last_step, callback=callback,
        )
        results.append(x.clamp(-1.0, 1.0).cpu().numpy())
    return results


def check_output(out: Path) -> None:
    """Refuse an output path we cannot write before any heavy work starts."""
    if out.suffix.lower() not in SUPPORTED_OUTPUT_SUFFIXES:
        raise ConfigError(f"unsupported output type {out.suffix or '(none)'!r}; use one of {', '.join(SUPPORTED_OUTPUT_SUFFIXES)}")
    if not out.parent.exists():
        raise ConfigError(f"output folder does not exist: {out.parent}")


def run(input_path: Path, out: Path, cfg: Config, *, progress: Progress | None = None) -> list[Path]:
    """Read the reference, generate cfg.samples images and write them; returns the written paths."""
    check_output(out)
    started = time.perf_counter()
    reference = load_image(input_path)
    plan = make_plan(cfg, reference.shape[-2:])
    if progress is not None:
        progress({"event": "plan", "plan": plan, "samples": cfg.samples, "steps": cfg.steps})
    images = generate(reference, cfg, progress=progress, plan=plan)
    paths = output_paths(out, cfg.samples)
    for path, image in zip(paths, images):
        save_image(path, image)
    if progress is not None:
        progress({"event": "done", "paths": paths, "seconds": time.perf_counter() - started})
    return paths
