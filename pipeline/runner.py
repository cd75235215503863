"""`run(cfg)`: wires reading, the pyramid, the per-scale denoisers, the sampler and writing. No maths here."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .denoise import PatchDenoiser
from .devices import resolve_device, resolve_precision
from .errors import ConfigError, ImageError
from .io.read import load_image
from .io.write import SUPPORTED_OUTPUT_SUFFIXES, output_paths, save_image
from .pyramid import auto_num_scales, reference_pyramid, scale_sizes
from .sample.c2f import sample_coarse_to_fine

Progress = Callable[[dict], None]


@dataclass(frozen=True)
class Plan:
    """What a run will compute: per-scale sizes (index 0 = finest) and the resolved compute settings."""

    ref_sizes: list[tuple[int, int]]
    out_sizes: list[tuple[int, int]]
    device: torch.device
    precision: str
    index: str

    @property
    def num_scales(self) -> int:
        return len(self.ref_sizes)

    def describe(self) -> str:
        lines = [f"{self.num_scales} scales, device {self.device.type}, precision {self.precision}, index {self.index}"]
        for s in range(self.num_scales - 1, -1, -1):
            (rh, rw), (oh, ow) = self.ref_sizes[s], self.out_sizes[s]
            lines.append(f"  scale {s}: reference {rw}x{rh} -> output {ow}x{oh}")
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
    if cfg.index == "ivf":
        raise ConfigError("--index ivf is not available yet (approximate nearest neighbours are planned); use exact")
    device = resolve_device(cfg.device)
    return Plan(ref_sizes, out_sizes, device, resolve_precision(cfg.precision, device), "exact")


def build_denoisers(reference: torch.Tensor, plan: Plan, cfg: Config) -> list[PatchDenoiser]:
    """One closed-form denoiser per scale, each holding that scale's reference patches."""
    pyramid = reference_pyramid(reference, plan.ref_sizes)
    return [
        PatchDenoiser(
            level.to(plan.device), patch_size=cfg.patch_size, rho=cfg.rho, truncate=cfg.fold_truncate,
            precision=plan.precision, query_block=cfg.query_block,
        )
        for level in pyramid
    ]


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
