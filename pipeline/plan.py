"""What a run computes: the per-scale plan (sizes, device, precision, index kind) and the denoisers it needs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import Config
from .denoise import ImageDenoiser, KNNDenoiser, PatchDenoiser
from .devices import resolve_device, resolve_precision
from .errors import ConfigError, ImageError
from .index import IVFIndex, IVFParams, PatchGrid
from .index.ivf import set_threads
from .patches import window_radius
from .pyramid import auto_num_scales, reference_pyramid, scale_sizes
from .sample.hooks import Hooks, keep_mask, start_step
from .sample.schedule import alpha_sigma

# `--index auto` switches a scale to IVF at this many reference patches. CPU: the measured crossover of
# exact bf16 and IVF per call on this 2-core machine (benchmarks/bench_index.py); GPU: the official rule.
CPU_IVF_THRESHOLD = 2000
GPU_IVF_THRESHOLD = 250_000
# PCA pre-transform dimensions `index_memory` steps through (then PCA 64 + PQ codes, 2 dims per byte).
AUTO_PCA = (64, 32)
# An IVF index grows its lists while being built (std::vector doubling): an 11M-patch PCA64 build peaked at
# 1.4x the final index size beyond the process's baseline (measured). The budget covers the build.
BUILD_OVERHEAD = 1.5
# `rerank_last: 0` (auto): candidates re-ranked per neighbour at the last step by a refined index (faiss re-ranks
# on its stored vectors, cheaply). Measured on balloons' finest scale, PCA128, nprobe 8, alpha 0.9: recall@5 0.77
# with 4, 0.95 with 16 (IVF-Flat 0.98). Indexes re-ranked from the image keep `rerank` (16 would cost an
# 11-MP reference's finest 1024^2 tile +10 s at the last step, 10 -> 20 s, measured).
REFINED_RERANK_LAST = 16
# `query_stride: 0` (auto) per scale: denoise every patch position up to 2^17 output pixels (~360^2), every
# 2nd up to 2^19 (~720^2), every 4th above (capped at the fold window). See docs/large-outputs.md.
AUTO_QUERY_STRIDES = ((1 << 17, 1), (1 << 19, 2), (None, 4))


@dataclass(frozen=True)
class Plan:
    """What a run will compute: per-scale sizes (index 0 = finest) and the resolved compute settings."""

    ref_sizes: list[tuple[int, int]]
    out_sizes: list[tuple[int, int]]
    device: torch.device
    precision: str
    indexes: list[str]            # per scale (index 0 = finest): "exact" or "ivf"
    patches: list[int]            # reference patches per scale (in the index, after dataset_stride)
    index_specs: tuple[str, ...] = ()  # per scale: faiss factory string of an IVF scale, else ""
    query_strides: tuple[int, ...] = ()  # per scale: denoise every s-th patch position
    index_sizes: tuple[int, ...] = ()  # per scale: bytes of an IVF scale's index (`index_bytes`), else 0

    def query_stride(self, scale: int) -> int:
        return self.query_strides[scale] if scale < len(self.query_strides) else 1

    @property
    def num_scales(self) -> int:
        return len(self.ref_sizes)

    def describe(self) -> str:
        lines = [f"{self.num_scales} scales, device {self.device.type}, precision {self.precision}"]
        for s in range(self.num_scales - 1, -1, -1):
            (rh, rw), (oh, ow) = self.ref_sizes[s], self.out_sizes[s]
            spec = f" ({self.index_specs[s]})" if s < len(self.index_specs) and self.index_specs[s] else ""
            stride = f", query stride {self.query_stride(s)}" if self.query_stride(s) > 1 else ""
            lines.append(f"  scale {s}: reference {rw}x{rh} -> output {ow}x{oh}, "
                         f"{self.indexes[s]} index{spec} over {self.patches[s]} patches{stride}")
        return "\n".join(lines)


def make_plan(cfg: Config, ref_hw: tuple[int, int], channels: int = 3) -> Plan:
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
    strides = resolve_query_strides(cfg, out_sizes)
    device = resolve_device(cfg.device)
    patches = [PatchGrid(1, rh, rw, p, cfg.dataset_stride).size for rh, rw in ref_sizes]
    indexes = resolve_indexes(cfg, patches, device)
    dim = channels * p * p
    params = [ivf_params(cfg, n, dim, device) if kind == "ivf" else None for kind, n in zip(indexes, patches)]
    specs = tuple(prm.factory(dim, n) if prm else "" for prm, n in zip(params, patches))
    sizes = tuple(index_bytes(n, dim, prm.pca, prm.pq, prm.refine) if prm else 0 for prm, n in zip(params, patches))
    return Plan(ref_sizes, out_sizes, device, resolve_precision(cfg.precision, device), indexes, patches, specs,
                strides, sizes)


def resolve_query_strides(cfg: Config, out_sizes: list[tuple[int, int]]) -> tuple[int, ...]:
    """Query stride per scale: `query_stride`, or with 0 (auto) by the scale's output size (AUTO_QUERY_STRIDES),
    never wider than the fold window (else some pixels would get no estimate)."""
    window = 2 * window_radius(cfg.patch_size, cfg.rho, cfg.fold_truncate) + 1
    if cfg.query_stride > window:
        raise ConfigError(f"query_stride={cfg.query_stride} would leave pixels uncovered: the fold window is {window} px "
                          f"wide (p={cfg.patch_size}, rho={cfg.rho}); use at most {window}")
    if cfg.query_stride:
        return tuple(cfg.query_stride for _ in out_sizes)
    strides = []
    for h, w in out_sizes:
        stride = next(s for limit, s in AUTO_QUERY_STRIDES if limit is None or h * w <= limit)
        strides.append(min(stride, window))
    return tuple(strides)


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


def index_bytes(n: int, dim: int, pca: int = 0, pq: int = 0, refine: bool = False) -> int:
    """Bytes an IVF index holds for n vectors of dimension dim: the stored codes (4 bytes per dimension,
    after the PCA if any, or one byte per PQ sub-quantizer) and an 8-byte id each, the full vectors of a
    refined index, and the small parts: ~sqrt(n) centroids, the PCA matrices, the PQ codebooks."""
    d = pca or dim
    per_vector = (pq or 4 * d) + 8 + (4 * dim if refine else 0)
    small = 4 * d * math.isqrt(n) + (8 * dim * dim if pca else 0) + (4 * 256 * d if pq else 0)
    return n * per_vector + small


def ivf_params(cfg: Config, n: int = 0, dim: int = 0, device: torch.device | str = "cpu") -> IVFParams:
    """IVF settings of a scale with n patches of dimension dim. Unless pca or pq is set, an index whose
    full vectors (4 bytes per dim + an 8-byte id), grown by BUILD_OVERHEAD while being built, would exceed
    `index_memory` GiB gets a PCA pre-transform to the largest AUTO_PCA dims that fits, and if none fits,
    PCA to AUTO_PCA[0] with PQ codes (one byte per 2 dims); the k-NN denoiser then re-ranks its candidates
    by true distance. On a CPU, an index whose full vectors fit with `refine_pca`-dim PCA codes beside
    them is a refined one: searched in the PCA space, re-ranked by faiss on the full vectors (measured
    on balloons: ~3x faster than IVF-Flat at nprobe 8 for a recall of 0.95 instead of 0.98)."""
    pca, pq, refine = cfg.pca, cfg.pq, False
    budget = cfg.index_memory * 2**30 / BUILD_OVERHEAD
    if not pca and not pq:  # the user's choice wins
        if index_bytes(n, dim) > budget:
            fits = [m for m in AUTO_PCA if m < dim and index_bytes(n, dim, m) <= budget]
            if fits:
                pca = fits[0]
            elif dim > AUTO_PCA[0]:
                pca, pq = AUTO_PCA[0], AUTO_PCA[0] // 2
        elif (torch.device(device).type == "cpu" and 0 < cfg.refine_pca < dim
              and n >= 4 * dim  # enough points to train the PCA
              and index_bytes(n, dim, cfg.refine_pca, refine=True) <= budget):
            pca, refine = cfg.refine_pca, True
    return IVFParams(nlist=cfg.nlist, nprobe=cfg.nprobe, pca=pca, pq=pq, train_factor=cfg.train_factor, refine=refine)


def build_index(level: torch.Tensor, cfg: Config, device: torch.device | str = "cpu") -> IVFIndex:
    """The IVF index of one reference scale (C, H, W), for searching on `device`."""
    grid = PatchGrid(level.shape[0], level.shape[1], level.shape[2], cfg.patch_size, cfg.dataset_stride)
    return IVFIndex.build(level, grid, ivf_params(cfg, grid.size, grid.dim, device))


def make_denoiser(level: torch.Tensor, kind: str, cfg: Config, plan: Plan,
                  index: IVFIndex | None = None, scale: int = 0, keep: torch.Tensor | None = None) -> ImageDenoiser:
    """The closed-form denoiser of scale `scale`: exact, or k-NN over its IVF index (built if not given).

    keep: optional bool (H - p + 1, W - p + 1) over the level's patch positions: only those patches are in
    the dataset (`hooks.keep_mask`); the exact denoiser drops the others, the IVF index skips them."""
    common = dict(patch_size=cfg.patch_size, rho=cfg.rho, truncate=cfg.fold_truncate,
                  query_block=cfg.query_block, query_stride=plan.query_stride(scale))
    if keep is not None and not bool(keep.any()):
        raise ConfigError(f"every reference patch of scale {scale} is excluded (the mask covers the whole reference)")
    if kind == "exact":
        return PatchDenoiser(level.to(plan.device), precision=plan.precision, keep=keep, **common)
    index = index or build_index(level, cfg, plan.device)
    if keep is not None:
        st = cfg.dataset_stride
        index = index.restrict(keep[::st, ::st].cpu().numpy())
    index = index.to_device(plan.device)
    last_sigma = alpha_sigma(1, cfg.steps)[1]
    final_rerank = cfg.rerank_last or (REFINED_RERANK_LAST if getattr(index, "refined", False) else cfg.rerank)
    return KNNDenoiser(level.to(plan.device), index, k=cfg.knn, final_nprobe=cfg.nprobe_last,
                       final_sigma=last_sigma * (1 + 1e-9), rerank=cfg.rerank, final_rerank=final_rerank, **common)


def build_denoisers(reference: torch.Tensor, plan: Plan, cfg: Config, hooks: Hooks | None = None) -> list[ImageDenoiser]:
    """One closed-form denoiser per scale (index 0 = finest); hooks may exclude reference patches. A scale
    an application fixes (`Hooks.start` 0) is never denoised and gets None."""
    set_threads(torch.get_num_threads())
    pyramid = reference_pyramid(reference, plan.ref_sizes)
    out = []
    for s, (level, kind) in enumerate(zip(pyramid, plan.indexes)):
        if start_step(hooks, s, cfg.steps) == 0:
            out.append(None)
            continue
        keep = keep_mask(hooks, s, tuple(level.shape[-2:]), cfg.patch_size)
        out.append(make_denoiser(level, kind, cfg, plan, scale=s, keep=keep))
    return out
