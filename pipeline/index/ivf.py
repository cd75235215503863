"""FAISS IVF patch index: built once per scale, saved, loaded (memory-mapped) by every denoiser.

The descriptors are the raw patches (d = C*p*p), optionally reduced by a PCA pre-transform; the
coarse quantizer has nlist ~ sqrt(N) cells; the cells hold the full vectors (IVF-Flat) or PQ codes
(IVF-PQ, for very large N). A *refined* index (PCA + IVF + a flat copy of the full vectors, faiss
IndexRefineFlat) searches in the PCA space, then faiss re-ranks k_factor * k candidates by their
true distance: fast where the full vectors fit in memory. Where the index itself does not return
true distances (PCA or PQ without refinement), the k-NN denoiser recomputes them from the reference
image, so PCA/PQ only decide *which* patches are candidates.
"""

from __future__ import annotations

import copy
import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..devices import one_torch_thread, single_threaded
from ..errors import ConfigError
from .grid import PatchGrid, gather_patches

ADD_CHUNK = 65536  # patches gathered and added per faiss.add call (bounds the build's extra memory)


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a declared dependency
        raise ConfigError("the IVF index needs faiss: pip install faiss-cpu (or a faiss GPU build)") from None
    # Above this many queries faiss computes coarse-quantizer distances with BLAS, whose rounding changes
    # with the thread count: a query near a cell boundary then lands in another cell and the result
    # depends on how many workers share the cores. Per-pair SIMD distances are thread-invariant and, at
    # nlist ~ sqrt(N), no slower here (balloons, measured side by side).
    faiss.cvar.distance_compute_blas_threshold = SEARCH_BLAS_THRESHOLD
    return faiss


SEARCH_BLAS_THRESHOLD = 1 << 30  # queries above which faiss would use BLAS for distances (see _faiss)
BUILD_BLAS_THRESHOLD = 20        # faiss's own default: training and adding (once, by one process) use BLAS


@dataclass(frozen=True)
class IVFParams:
    """How an IVF index is built and searched.

    nlist: coarse cells (0 = round(sqrt(N))). nprobe: cells visited per query. pca: reduce the
    descriptors to this many dimensions first (0 = off). pq: IVF-PQ with this many 8-bit sub-quantizers
    (0 = IVF-Flat; must divide the descriptor dimension). train_factor: training points per cell
    (the issue's 30-256; faiss wants >= 39). seed: which patches are sampled for training.
    refine: keep a flat copy of the full vectors and let faiss re-rank the candidates of the PCA/PQ
    search by true distance (the search's k_factor says how many: k_factor * k).
    """

    nlist: int = 0
    nprobe: int = 1
    pca: int = 0
    pq: int = 0
    train_factor: int = 64
    seed: int = 0
    refine: bool = False

    def resolved_nlist(self, n: int) -> int:
        nlist = self.nlist or round(math.sqrt(n))
        return max(1, min(nlist, n // 39 or 1))

    def factory(self, dim: int, n: int) -> str:
        pre = f"PCA{self.pca}," if self.pca else ""
        d = self.pca or dim
        if self.pq and d % self.pq:
            raise ConfigError(f"pq={self.pq} must divide the descriptor dimension {d}")
        post = ",RFlat" if self.refine else ""
        return f"{pre}IVF{self.resolved_nlist(n)},{f'PQ{self.pq}x8' if self.pq else 'Flat'}{post}"


def _one_omp_thread() -> None:
    # torch sets a new thread's OpenMP thread count to its own on the thread's first torch call, and torch
    # and faiss can share one libgomp (torch loads its libgomp globally): let torch do that first.
    torch.get_num_threads()
    _faiss().omp_set_num_threads(1)


_PROJECTOR: ThreadPoolExecutor | None = None
_PROJECTOR_LOCK = threading.Lock()


def _projector() -> ThreadPoolExecutor:
    """Helper threads, one intra-op thread each, for the PCA of queries (as many as the cores, so tasks
    running at once do not wait for each other)."""
    global _PROJECTOR
    with _PROJECTOR_LOCK:
        if _PROJECTOR is None:
            _PROJECTOR = ThreadPoolExecutor(max(2, os.cpu_count() or 1), initializer=one_torch_thread,
                                            thread_name_prefix="sidpipe-pca")
        return _PROJECTOR


def _pca_rows(q: np.ndarray, a: torch.Tensor, b: torch.Tensor, rounded: bool) -> np.ndarray:
    with torch.no_grad():
        y = (torch.from_numpy(q).double() @ a).add_(b)
        return (y.float() if rounded else y).numpy()


def set_threads(n: int) -> None:
    """Give faiss the same number of OpenMP threads as torch, so the two never oversubscribe the cores."""
    _faiss().omp_set_num_threads(max(1, n))


class IVFIndex:
    """A trained and filled faiss IVF index over the patches of one reference scale.

    Build with `IVFIndex.build`, or `IVFIndex.load` a saved one. `search` takes (n, d) float32
    descriptors (the noisy patches divided by alpha) and returns squared distances and patch ids.
    """

    kind = "ivf"

    def __init__(self, index, grid: PatchGrid, params: IVFParams, *, on_gpu: bool = False) -> None:
        self.index, self.grid, self.params = index, grid, params
        self.ntotal = int(index.ntotal)
        self.on_gpu = on_gpu
        # IVF-Flat (and a refined index) returns ||q - y||^2 computed pair by pair in float32: the k-NN
        # denoiser can use it as the true distance. PCA or PQ distances are approximate and are recomputed.
        self.refined = params.refine
        self.exact_distances = params.refine or (not params.pca and not params.pq)
        self.approximate = not self.exact_distances  # candidates chosen by approximate distances: re-rank more
        self._set_nprobe(params.nprobe)
        self._unpack()
        self.keep: np.ndarray | None = None  # see `restrict`
        self._selector = None

    def restrict(self, keep: np.ndarray) -> IVFIndex:
        """This index searching only the patches with keep[id] True (an application's excluded reference
        patches, `hooks.Hooks.exclude`): faiss skips the others while it scans its lists (an id selector
        in the search parameters), so no rebuild is needed and the saved index stays the whole one."""
        keep = np.ascontiguousarray(keep, dtype=bool).reshape(-1)
        if keep.shape[0] != self.ntotal:
            raise ValueError(f"keep has {keep.shape[0]} entries for an index of {self.ntotal} patches")
        if self.on_gpu:
            raise ValueError("excluding reference patches is not supported on a GPU index")
        faiss = _faiss()
        out = copy.copy(self)
        out.keep = keep
        out._bitmap = np.packbits(keep, bitorder="little")
        out._selector = faiss.IDSelectorBitmap(keep.shape[0], faiss.swig_ptr(out._bitmap))
        return out

    def _unpack(self) -> None:
        """Reach the parts of a PCA index (CPU): its transform, its IVF and a refined index's flat vectors.

        `search` applies the PCA itself: faiss applies it with a float32 GEMM whose rounding of a row
        changes with the batch around it and the thread count (measured: 8k of 20k queries' distances
        differed when the same queries were searched with another batch alignment), which would make a
        tile's result differ from the whole image's.
        """
        self._pca = None
        if not self.params.pca or self.on_gpu:
            return
        faiss = _faiss()
        top = self.index
        base = faiss.downcast_index(top.base_index) if self.refined else top
        self._flat = faiss.downcast_index(top.refine_index) if self.refined else None
        pre = faiss.downcast_index(base)
        lt = faiss.downcast_VectorTransform(pre.chain.at(0))
        a = faiss.vector_to_array(lt.A).reshape(lt.d_out, lt.d_in)
        b = faiss.vector_to_array(lt.b) if lt.have_bias else np.zeros(lt.d_out, dtype=np.float32)
        self._pca = (torch.from_numpy(a.T.astype(np.float64)), torch.from_numpy(b.astype(np.float64)))
        self._ivf = faiss.downcast_index(pre.index)

    def _project(self, q: np.ndarray, rounded: bool = True) -> np.ndarray:
        """The PCA of queries, computed in float64 on one intra-op thread and rounded to float32.

        One thread: a float64 GEMM's rows change in their last bits with the thread count (measured: 4.3M
        of 5.2M values of balloons' finest-scale queries between 1 and 2 threads), which survives the
        rounding to float32 where a value straddles a rounding boundary (~1e-9 of the values: none of
        those 5.2M, but thousands in a gigapixel run). A row's float64 result may also change with the
        batch around it; that too survives the rounding only at such a boundary."""
        return _projector().submit(_pca_rows, q, *self._pca, rounded).result()

    def _set_nprobe(self, nprobe: int) -> None:
        faiss = _faiss()
        ivf = faiss.extract_index_ivf(self.index)
        ivf.nprobe = max(1, min(nprobe, ivf.nlist))

    @property
    def nlist(self) -> int:
        return int(_faiss().extract_index_ivf(self.index).nlist)

    @classmethod
    def build(cls, image: torch.Tensor, grid: PatchGrid, params: IVFParams = IVFParams()) -> IVFIndex:
        """Train on a random sample of train_factor * nlist patches, then add every patch in chunks.

        faiss builds on one OpenMP thread (a helper thread's own setting, `devices.single_threaded`): its
        OpenBLAS rounds the PCA covariance and eigenvectors, the k-means distances and the cells the
        patches are added to differently with another thread count (measured on balloons' finest scale,
        40k patches: PCA matrices 0.33 apart, k-means centroids 0.20 apart, 168 of 40k patches in other
        cells between 1 and 2 threads), and the index decides which patches every query sees.
        """
        return single_threaded(cls._build, image, grid, params, initializer=_one_omp_thread)

    @classmethod
    def _build(cls, image: torch.Tensor, grid: PatchGrid, params: IVFParams) -> IVFIndex:
        faiss = _faiss()
        image = image.float().cpu()
        n = grid.size
        index = faiss.index_factory(grid.dim, params.factory(grid.dim, n))
        nlist = params.resolved_nlist(n)
        rng = np.random.default_rng(params.seed)
        n_train = min(n, max(39, params.train_factor) * nlist)
        if params.pq:
            n_train = min(n, max(n_train, 256 * 39))  # PQ codebooks (256 centroids) need enough points too
        if params.pca:
            n_train = min(n, max(n_train, 4 * grid.dim))  # the PCA needs more points than dimensions
        train_ids = np.sort(rng.choice(n, size=n_train, replace=False))
        train = gather_patches(image, grid, torch.from_numpy(train_ids)).numpy()
        # k-means and the cell assignment of 10^7 patches are GEMM-sized: let faiss use BLAS while building
        # (one-threaded BLAS: the same bits with any number of cores).
        faiss.cvar.distance_compute_blas_threshold = BUILD_BLAS_THRESHOLD
        try:
            index.train(np.ascontiguousarray(train, dtype=np.float32))
            del train
            for start in range(0, n, ADD_CHUNK):
                chunk = grid.descriptors(image, start, min(n, start + ADD_CHUNK)).numpy()
                index.add(np.ascontiguousarray(chunk, dtype=np.float32))
        finally:
            faiss.cvar.distance_compute_blas_threshold = SEARCH_BLAS_THRESHOLD
        return cls(index, grid, params)

    def search(self, descriptors: np.ndarray | torch.Tensor, k: int,
               nprobe: int | None = None, k_factor: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(n, d) float32 -> (distances, ids), each (n, k); ids are -1 where fewer than k were found.

        nprobe overrides the index's own for this call only (thread-safe: passed as search parameters);
        k_factor: a refined index re-ranks k_factor * k candidates (ignored by the others).
        """
        q = descriptors.cpu().numpy() if isinstance(descriptors, torch.Tensor) else descriptors
        q = np.ascontiguousarray(q, dtype=np.float32)
        if self.on_gpu:
            k = min(k, 2048)  # faiss GPU limit for k and nprobe
        faiss = _faiss()
        params = faiss.SearchParametersIVF(nprobe=min(nprobe or self.params.nprobe, self.nlist))
        if self._selector is not None:
            params.sel = self._selector
        if self._pca is None:  # IVF-Flat / IVF-PQ without PCA (or on a GPU): faiss does it all
            if self.on_gpu and self.params.pca:  # pragma: no cover - needs a GPU
                params = faiss.SearchParametersPreTransform(index_params=params)
            return self.index.search(q, k, params=params)
        m = k * max(1, k_factor) if self.refined else k
        dist, ids = self._ivf.search(self._project(q), m, params=params)
        if not self.refined:
            return dist, ids
        # Re-rank the m candidates by true distance on the stored full vectors (faiss, pair by pair).
        found = ids >= 0
        safe = np.where(found, ids, 0)
        true = np.empty(ids.shape, dtype=np.float32)
        self._flat.compute_distance_subset(len(q), faiss.swig_ptr(q), m, faiss.swig_ptr(true), faiss.swig_ptr(safe))
        true[~found] = np.inf
        order = np.argsort(true, axis=1, kind="stable")[:, :k]
        dist, ids = np.take_along_axis(true, order, 1), np.take_along_axis(ids, order, 1)
        return dist, np.where(np.isfinite(dist), ids, -1)

    # -- persistence -------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write `path` (faiss index) and `path.json` (grid and parameters) atomically; returns path."""
        faiss = _faiss()
        path = Path(path)
        index = faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(index, str(tmp))
        meta_tmp = path.with_name(path.name + ".json.tmp")
        meta_tmp.write_text(json.dumps({"grid": asdict(self.grid), "params": asdict(self.params), "ntotal": self.ntotal}))
        os.replace(meta_tmp, path.with_name(path.name + ".json"))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = True) -> IVFIndex:
        """Read an index saved by `save`, memory-mapping its lists where faiss can."""
        faiss = _faiss()
        path = Path(path)
        meta = json.loads(path.with_name(path.name + ".json").read_text())
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(path), flags)
        return cls(index, PatchGrid(**meta["grid"]), IVFParams(**meta["params"]))

    # -- GPU ---------------------------------------------------------------------------------------

    def to_device(self, device: torch.device) -> IVFIndex:
        """Move the index to the GPU when device is CUDA and faiss has GPU support; else unchanged.

        One GPU index per process: faiss GPU indexes are not thread-safe, so callers keep one thread
        per GPU. nprobe is capped at 2048 (faiss GPU limit).
        """
        faiss = _faiss()
        if device.type != "cuda" or not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            return self
        if self.refined:  # a CPU layout (the plan never makes one for CUDA): search it where it is
            return self
        res = faiss.StandardGpuResources()  # pragma: no cover - needs a GPU
        gpu = faiss.index_cpu_to_gpu(res, device.index or 0, self.index)  # pragma: no cover
        moved = IVFIndex(gpu, self.grid, IVFParams(**{**asdict(self.params), "nprobe": min(self.params.nprobe, 2048)}),
                         on_gpu=True)  # pragma: no cover
        moved._gpu_resources = res  # pragma: no cover
        return moved  # pragma: no cover
