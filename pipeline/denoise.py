"""The closed-form patch denoiser (paper Eq. 2) and the image denoiser built on it (Alg. 1, IMGDENOISE).

Two implementations share one interface, `denoiser(x, alpha, sigma) -> x_hat` on (C, H, W) images:

* `naive`: Eq. 2 written literally (explicit squared distances, softmax, weighted sum of whole
  patches), float64 by default. It is the reference the tests compare against.
* `fast`: the same maths as scaled dot-product attention. The distance expands to
  ||x - a y||^2 = ||x||^2 - 2a x.y + a^2 ||y||^2, so the logits are (a/s^2) x.y - (a^2/2s^2) ||y||^2
  (+ a per-query constant that the softmax ignores): one matrix product with the reference patches
  as keys, a per-key bias added in float32, a row softmax, and a second product with the values.
  Both patch sets are centred on the mean patch first (distances are unchanged), which keeps the
  dot products small. Only the centre (2r+1)^2 window of each patch carries weight in the fold, so
  the value matrix is that window, except for the few queries whose patch reaches the border band.
  Queries run in fixed blocks of patch positions on a global grid, so a query's arithmetic never
  depends on what else is being denoised (needed for tiled == whole-image results).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from .devices import one_torch_thread, single_threaded
from .patches import Folder, band_rows, border_band, patch_grid, query_positions, regular_runs, unfold, window_radius


def naive_patch_denoise(queries: torch.Tensor, keys: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """Eq. 2 literally: sum_j N(x; a y_j, s^2 I) y_j / sum_j N(x; a y_j, s^2 I).

    Args:
        queries: (B, d) noisy patches x.
        keys: (N, d) clean reference patches y_j (same dtype as queries).
        alpha, sigma: the schedule at this step; alpha = 0 gives the mean patch.

    Returns:
        (B, d) denoised patches, in the queries' dtype.
    """
    if alpha == 0.0:
        return keys.mean(0, keepdim=True).expand(queries.shape[0], -1).clone()
    out = torch.empty_like(queries)
    step = max(1, 2**22 // max(1, keys.shape[0] * 4))
    for i in range(0, queries.shape[0], step):
        x = queries[i:i + step]
        dist2 = ((x[:, None, :] - alpha * keys[None, :, :]) ** 2).sum(-1)  # (b, N)
        w = torch.softmax(-dist2 / (2.0 * sigma**2), dim=1)
        out[i:i + step] = w @ keys
    return out


class ImageDenoiser:
    """IMGDENOISE (Alg. 1) around a patch-level estimator: unfold queries in fixed blocks, fold back.

    Queries are the patch positions of x on a global grid (every position, or every `query_stride`-th
    plus the last row/column), taken in blocks of `query_block` x `query_block` positions. Each block is
    estimated and folded on its own (`patches.Folder`), so memory is O(image) and a query's arithmetic
    never depends on what else is denoised. Subclasses implement `_estimate`.

    Args:
        reference: (C, H, W) float32 reference image at this scale, H and W >= patch_size.
        patch_size, rho, truncate: patch size and fold window (see `patches.window_radius`).
        query_block: block side in patch positions.
        query_stride: denoise every s-th patch position (1 = all, as in the paper).
    """

    fold_dtype = torch.float32
    # True when a query's estimate does not depend on which other queries are estimated with it (no GEMM
    # over the batch): a rectangle then estimates only the positions its fold needs, not whole blocks.
    batch_invariant = False
    # True when a block's estimate must not depend on the number of intra-op threads (its matrix products
    # are GEMMs: MKL and oneDNN split a product's reduction between threads, so 1 and 2 threads round
    # differently, in fp32 and bf16 alike). Such blocks are estimated on one intra-op thread each, by as
    # many helper threads as the caller has intra-op threads: a tile task (fewer threads) then computes
    # every block exactly as the whole image does.
    thread_invariant = False

    def __init__(self, reference: torch.Tensor, *, patch_size: int = 15, rho: float = 0.2, truncate: float = 3.0,
                 query_block: int = 32, query_stride: int = 1) -> None:
        c, h, w = reference.shape
        if h < patch_size or w < patch_size:
            raise ValueError(f"reference {h}x{w} is smaller than the patch size {patch_size}")
        if query_stride < 1:
            raise ValueError("query_stride must be >= 1")
        self.p, self.rho, self.block, self.stride = patch_size, rho, query_block, query_stride
        self.channels = c
        self.radius = window_radius(patch_size, rho, truncate)
        if query_stride > 2 * self.radius + 1:
            raise ValueError(f"query_stride {query_stride} leaves pixels uncovered: the fold window is "
                             f"{2 * self.radius + 1} px wide")
        self.band = border_band(patch_size, self.radius)
        lo, hi = patch_size // 2 - self.radius, patch_size // 2 + self.radius + 1
        box = torch.zeros(c, patch_size, patch_size, dtype=torch.bool)
        box[:, lo:hi, lo:hi] = True
        self.box_columns = box.reshape(-1).nonzero()[:, 0]  # columns of a flat patch inside the window

    def _estimate(self, queries: torch.Tensor, full: bool, alpha: float, sigma: float) -> torch.Tensor:
        """(B, d) noisy patches -> (B, C*k*k) denoised values, k = p if full else the window 2r+1."""
        raise NotImplementedError

    def denoise_patches(self, queries: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """Denoise (B, d) patches to whole (B, d) patches (the patch-level PATCHDENOISE)."""
        return self._estimate(queries, True, alpha, sigma)

    def _block_estimate(self, q: torch.Tensor, edge: torch.Tensor, alpha: float, sigma: float,
                        path_edge: torch.Tensor | None = None) -> torch.Tensor:
        """Estimates of one block of queries: the window only, or whole patches if any query reaches the
        border band (then the others are zero outside the window, where their weight is zero anyway).
        path_edge: the edge flags of the whole block when q is part of it (the path is the whole block's)."""
        pe = edge if path_edge is None else path_edge
        if not bool(pe.any()) and self.fold_dtype != torch.float64:
            return self._estimate(q, False, alpha, sigma).to(self.fold_dtype)
        if self.fold_dtype == torch.float64 or bool(pe.all()):
            return self._estimate(q, True, alpha, sigma).to(self.fold_dtype)
        est = torch.zeros(q.shape[0], q.shape[1], dtype=self.fold_dtype, device=q.device)
        if bool(edge.any()):
            est[edge] = self._estimate(q[edge], True, alpha, sigma).to(est.dtype)
        inner = ~edge
        if bool(inner.any()):
            est[inner.nonzero()[:, :1], self.box_columns[None, :]] = \
                self._estimate(q[inner], False, alpha, sigma).to(est.dtype)
        return est

    def _to_grid(self, est: torch.Tensor, c: int, nr: int, nc: int) -> torch.Tensor:
        """(nr*nc, C*k*k) -> (C, k, k, nr, nc) for the Folder."""
        k = self.p if est.shape[1] == c * self.p**2 else 2 * self.radius + 1
        return est.T.reshape(c, k, k, nr, nc)

    def _position_range(self, full: tuple[int, int], box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """Patch positions (rows [a, b], cols [c, d], inclusive) whose fold can reach output rectangle box."""
        (h, w), p = full, self.p
        y0, y1, x0, x1 = box
        hp, wp = patch_grid(h, w, p)
        if self.band > 0 and (y0 < self.band or y1 > h - self.band or x0 < self.band or x1 > w - self.band):
            lo = hi = None  # on the border band whole patches are folded: any overlapping patch counts
            a, b, c, d = y0 - p + 1, y1 - 1, x0 - p + 1, x1 - 1
        else:
            lo, hi = p // 2 - self.radius, p // 2 + self.radius
            a, b, c, d = y0 - hi, y1 - 1 - lo, x0 - hi, x1 - 1 - lo
        return max(a, 0), min(b, hp - 1), max(c, 0), min(d, wp - 1)

    def _blocks(self, full: tuple[int, int], box: tuple[int, int, int, int]) -> list[tuple[int, ...]]:
        """The query blocks of the global grid that the fold of `box` needs, in the fixed order the whole
        image is folded in: (i0, nr, j0, nc) of the positions to estimate, then (i0, nr, j0, nc) of the
        whole block. A batch-invariant denoiser estimates only the positions whose fold reaches `box`
        (at query stride 4 whole 128-px blocks around a 1024-px tile were 1.56x the tile's work); a
        pixel of `box` still sums the same contributions in the same order."""
        h, w = full
        hp, wp = patch_grid(h, w, self.p)
        if hp < 1 or wp < 1:
            raise ValueError(f"image {h}x{w} is smaller than the patch size {self.p}")
        a, b, c, d = self._position_range(full, box)
        st, blk, trim = self.stride, self.block, self.batch_invariant
        rows, cols = query_positions(hp, st), query_positions(wp, st)

        def runs(pos: torch.Tensor, lo: int, hi: int) -> list[tuple[int, int, int, int]]:
            out = []
            for k in range(0, len(pos), blk):
                for start, n in regular_runs(pos[k:k + blk], st):
                    if start <= hi and start + (n - 1) * st >= lo:
                        first = max(0, -(-(lo - start) // st)) if trim else 0   # run indices kept
                        last = min(n - 1, (hi - start) // st) if trim else n - 1
                        out.append((start + first * st, last - first + 1, start, n))
            return out

        col_runs = runs(cols, c, d)
        return [(i0, nr, j0, nc, fi, fn, fj, fm) for i0, nr, fi, fn in runs(rows, a, b)
                for j0, nc, fj, fm in col_runs]

    def support(self, full: tuple[int, int], box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """Input rectangle (y0, y1, x0, x1) of x that `denoise_box(..., box)` reads."""
        blocks = self._blocks(full, box)
        st, p = self.stride, self.p
        y0 = min(b[0] for b in blocks)
        y1 = max(b[0] + (b[1] - 1) * st + p for b in blocks)
        x0 = min(b[2] for b in blocks)
        x1 = max(b[2] + (b[3] - 1) * st + p for b in blocks)
        return y0, y1, x0, x1

    @torch.no_grad()
    def denoise_box(self, x: torch.Tensor, origin: tuple[int, int], full: tuple[int, int],
                    box: tuple[int, int, int, int], alpha: float, sigma: float) -> torch.Tensor:
        """Rectangle `box` (y0, y1, x0, x1) of IMGDENOISE(x_t) for an image of size `full`, from the part
        x of x_t starting at pixel `origin` and covering at least `support(full, box)`.

        The same query blocks are estimated and folded in the same order as for the whole image, so the
        result equals the whole image's rectangle bit for bit."""
        c = x.shape[0]
        (h, w), p, st = full, self.p, self.stride
        blocks = self._blocks(full, box)
        sy0, sy1, sx0, sx1 = self.support(full, box)
        folder = Folder(c, sy1 - sy0, sx1 - sx0, p, self.rho, self.radius, dtype=self.fold_dtype,
                        device=x.device, origin=(sy0, sx0), full=full)
        hp, wp = patch_grid(h, w, p)
        rows_band, cols_band = band_rows(hp, h, p, self.band), band_rows(wp, w, p, self.band)
        oy, ox = origin
        def edges(i0: int, nr: int, j0: int, nc: int) -> torch.Tensor:
            return (rows_band[i0:i0 + (nr - 1) * st + 1:st][:, None]
                    | cols_band[j0:j0 + (nc - 1) * st + 1:st][None, :]).reshape(-1)

        def estimate(blk: tuple[int, ...]) -> torch.Tensor:
            i0, nr, j0, nc, fi, fn, fj, fm = blk
            with torch.no_grad():  # grad mode is per thread
                region = x[:, i0 - oy:i0 - oy + (nr - 1) * st + p, j0 - ox:j0 - ox + (nc - 1) * st + p]
                q = F.unfold(region[None], p, stride=st)[0].T  # (nr*nc, d), raster order
                edge = edges(i0, nr, j0, nc)
                path_edge = None if (fn, fm) == (nr, nc) else edges(fi, fn, fj, fm)
                return self._block_estimate(q, edge, alpha, sigma, path_edge)

        def fold(blk: tuple[int, ...], est: torch.Tensor) -> None:
            folder.add(self._to_grid(est, c, blk[1], blk[3]), blk[0], blk[2], st)

        if self.thread_invariant and x.device.type == "cpu":
            # Blocks on one intra-op thread each, by as many helpers as this thread has, folded in order;
            # at most 2 per helper in flight (memory).
            n = max(1, torch.get_num_threads())
            with ThreadPoolExecutor(n, initializer=one_torch_thread) as pool:
                pending: deque = deque()
                for blk in blocks:
                    pending.append((blk, pool.submit(estimate, blk)))
                    if len(pending) >= 2 * n:
                        b, f = pending.popleft()
                        fold(b, f.result())
                while pending:
                    b, f = pending.popleft()
                    fold(b, f.result())
        else:
            for blk in blocks:
                fold(blk, estimate(blk))
        y0, y1, x0, x1 = box
        out = folder.result()[:, y0 - sy0:y1 - sy0, x0 - sx0:x1 - sx0]
        return out.to(self.fold_dtype if self.fold_dtype == torch.float64 else x.dtype)

    def __call__(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """IMGDENOISE: denoise the patches of x (C, H, W) and fold them back; returns (C, H, W)."""
        h, w = x.shape[-2:]
        return self.denoise_box(x, (0, 0), (h, w), (0, h, 0, w), alpha, sigma)


class PatchDenoiser(ImageDenoiser):
    """The exact closed-form denoiser: every query attends to every reference patch of the scale.

    Args (besides `ImageDenoiser`'s):
        precision: "fp32" or "bf16": dtype of the two matrix products of the fast path (logits,
            bias, softmax and normalisation stay float32).
        impl: "fast" or "naive".
        naive_dtype: dtype of the naive path (float64 for tests).
        keep: optional bool (H - p + 1, W - p + 1): only the reference patches whose top-left corner is
            True form the dataset (an application's excluded patches, `hooks.Hooks.exclude`).
    """

    def __init__(
        self,
        reference: torch.Tensor,
        *,
        patch_size: int = 15,
        rho: float = 0.2,
        truncate: float = 3.0,
        precision: str = "fp32",
        impl: str = "fast",
        query_block: int = 16,
        query_stride: int = 1,
        naive_dtype: torch.dtype = torch.float64,
        keep: torch.Tensor | None = None,
    ) -> None:
        if impl not in ("fast", "naive"):
            raise ValueError(f"impl must be fast or naive, got {impl!r}")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        super().__init__(reference, patch_size=patch_size, rho=rho, truncate=truncate,
                         query_block=query_block, query_stride=query_stride)
        self.impl = impl
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.naive_dtype = naive_dtype
        y = unfold(reference.float(), patch_size)  # (N, d)
        if keep is not None:
            y = y[keep.reshape(-1).to(y.device)]
            if y.shape[0] == 0:
                raise ValueError("every reference patch of this scale is excluded")
        self.num_patches = y.shape[0]
        if impl == "naive":
            self.fold_dtype = naive_dtype
            self.keys = y.to(naive_dtype)
            return
        self.thread_invariant = True
        single_threaded(self._prepare, y)  # the reductions below on one thread too (see thread_invariant)

    def _prepare(self, y: torch.Tensor) -> None:
        device = y.device
        # Centre on the mean patch; keys in the compute dtype, their norms from the rounded keys so the
        # distance is exact for the patches actually used.
        self.mean = y.mean(0)
        keys = (y - self.mean).to(self.dtype)
        # Keys augmented with -||y||^2/2 (hi, lo, hi, lo) and two ones columns; see _attend.
        half_norm = self._split(-0.5 * keys.float().pow(2).sum(1))
        ones = torch.ones(y.shape[0], 2, dtype=self.dtype, device=device)
        self.keys_aug = torch.cat([keys, half_norm, half_norm, ones], 1)
        ones = torch.ones(y.shape[0], 1, device=device)
        # A trailing ones column makes the second product also return the softmax normaliser.
        self.values_box = torch.cat([y[:, self.box_columns.to(device)], ones], 1).to(self.dtype)
        self.values_full = torch.cat([y, ones], 1).to(self.dtype)

    def _split(self, v: torch.Tensor) -> torch.Tensor:
        """(n,) float32 -> (n, 2) in the compute dtype whose row sums equal v to ~2^-16 relative."""
        hi = v.to(self.dtype)
        lo = (v - hi.float()).to(self.dtype)
        return torch.stack([hi, lo], 1)

    def _attend(self, queries: torch.Tensor, values: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """Fast Eq. 2 for (B, d) float32 queries; returns (B, dv) float32 (values without the ones column).

        One product gives the logits l_ij = (a/s^2) (x.y_j - (a/2)||y_j||^2 - r_i), with the row offset
        r_i = (||x_i||^2 - s^2 d) / (2a): l_ij = -(||x_i - a y_j||^2 - s^2 d) / (2 s^2), the squared
        distance less the noise energy of a true match. Logits near each row's maximum stay small, so
        the product's rounded output (bf16 keeps 8 bits) loses little where the softmax weight is. The
        scalars a/s^2, a^2/(2 s^2) and r ride in extra columns split into hi + lo parts.
        """
        if alpha == 0.0:  # uniform weights: the mean of the values
            mean = values.float().mean(0)
            return mean[None, :-1].expand(queries.shape[0], -1).clone()
        scale = alpha / sigma**2
        q = queries - alpha * self.mean
        r = (q.pow(2).sum(1) - sigma**2 * q.shape[1]) / (2.0 * alpha)
        n = q.shape[0]
        bias_coef = self._split(torch.full((1,), alpha * scale, device=q.device))  # (1, 2): hi, lo of a^2/s^2
        q_aug = torch.cat([
            (scale * q).to(self.dtype),
            bias_coef[:, [0, 0, 1, 1]].expand(n, 4),
            self._split(-scale * r),
        ], 1)
        logits = q_aug @ self.keys_aug.T  # (B, N) in the compute dtype
        weights = torch.softmax(logits, dim=1)  # float32 inside, output in the compute dtype
        out = (weights @ values).float()
        return out[:, :-1] / out[:, -1:]

    def _estimate(self, queries: torch.Tensor, full: bool, alpha: float, sigma: float) -> torch.Tensor:
        if self.impl == "naive":
            out = naive_patch_denoise(queries.to(self.naive_dtype), self.keys, alpha, sigma)
            return out if full else out[:, self.box_columns]
        return self._attend(queries.float(), self.values_full if full else self.values_box, alpha, sigma)


def flops_per_call(num_queries: int, num_keys: int, channels: int, patch_size: int, radius: int) -> float:
    """Multiply-add FLOPs (x2) of one fast image-denoiser call, counting both matrix products."""
    d = channels * patch_size**2
    dv = channels * (2 * radius + 1) ** 2 + 1
    return 2.0 * num_queries * num_keys * (d + dv)




class KNNDenoiser(ImageDenoiser):
    """The closed-form denoiser restricted to the k nearest reference patches (paper Sec. 3.5).

    For a noisy patch x at (alpha, sigma) the index is searched with x / alpha, then the softmax of Eq. 2
    is taken over the k patches found, with their *true* distances ||x - alpha y_j||^2 recomputed in
    float32 from the reference image (so PCA or PQ in the index only choose candidates). alpha = 0 gives
    the mean patch of the dataset, as the exact denoiser does. With k = N and an exact index this is the
    exact denoiser.

    Args (besides `ImageDenoiser`'s):
        index: an `ExactIndex` or `IVFIndex` over `grid` patches of `reference`.
        k: neighbours per query.
        final_nprobe, final_sigma: IVF cells to visit when sigma <= final_sigma (the last step, whose
            estimate is the output and where the softmax is sharp); 0 = the index's own nprobe.
        rerank: an approximate index (PCA/PQ) proposes rerank * k candidates; the k truly nearest are kept
            (re-ranked here from the reference image, or by faiss itself in a refined index).
        final_rerank: rerank at the last step (0 = rerank).
    """

    def __init__(self, reference: torch.Tensor, index, *, k: int = 5, patch_size: int = 15, rho: float = 0.2,
                 truncate: float = 3.0, query_block: int = 32, query_stride: int = 1,
                 final_nprobe: int = 0, final_sigma: float = 0.0, rerank: int = 4, final_rerank: int = 0) -> None:
        super().__init__(reference, patch_size=patch_size, rho=rho, truncate=truncate,
                         query_block=query_block, query_stride=query_stride)
        from .index.grid import PatchReader

        if index.grid.patch_size != patch_size or (index.grid.height, index.grid.width) != tuple(reference.shape[-2:]):
            raise ValueError("the index was built for a different reference scale or patch size")
        self.index, self.k, self.grid = index, k, index.grid
        # A CPU faiss IVF index searches each query on its own (its BLAS path is off, see index/ivf.py) and
        # every later step works row by row: estimates do not depend on the batch, so a rectangle
        # estimates only the positions it needs. (An exact index's GEMM, or a GPU index, may round a
        # row differently with other rows: those keep whole blocks.)
        self.batch_invariant = getattr(index, "kind", "") == "ivf" and not getattr(index, "on_gpu", False)
        self.final_nprobe, self.final_sigma = final_nprobe, final_sigma
        # Indexes whose distances are approximate (PCA, PQ) return rerank * k candidates; the k nearest
        # by true distance are kept (a refined index does this inside faiss).
        self.exact_distances = bool(getattr(index, "exact_distances", False))
        self.refined = bool(getattr(index, "refined", False))
        self.rerank, self.final_rerank = max(1, rerank), max(1, final_rerank or rerank)
        self.approximate = bool(getattr(index, "approximate", False))
        lo = patch_size // 2 - self.radius
        self.reader = PatchReader(reference, self.grid, window=(lo, 2 * self.radius + 1))
        self.num_patches = index.ntotal
        keep = getattr(index, "keep", None)
        if keep is None:
            self.mean = self.reader.mean_patch()  # the estimate at alpha = 0
        else:  # an index restricted to some patches: the mean of those
            ids = torch.from_numpy(np.flatnonzero(keep)).to(reference.device)
            if ids.numel() == 0:
                raise ValueError("every reference patch of this scale is excluded")
            total = torch.zeros(self.grid.dim, dtype=torch.float64, device=reference.device)
            for i in range(0, ids.numel(), 65536):
                total += self.reader.read(ids[i:i + 65536]).double().sum(0)
            self.mean = (total / ids.numel()).float()

    def _estimate(self, queries: torch.Tensor, full: bool, alpha: float, sigma: float) -> torch.Tensor:
        q = queries.float()
        if alpha == 0.0:
            mean = self.mean if full else self.mean[self.box_columns]
            return mean[None].expand(q.shape[0], -1).clone()
        last = sigma <= self.final_sigma
        nprobe = self.final_nprobe if self.final_nprobe and last else None
        rerank = self.final_rerank if last else self.rerank
        if self.refined:  # faiss re-ranks rerank * k candidates by true distance
            dist, ids = self.index.search(q / alpha, self.k, nprobe=nprobe, k_factor=rerank)
        else:
            dist, ids = self.index.search(q / alpha, self.k * rerank if self.approximate else self.k, nprobe=nprobe)
        ids = torch.from_numpy(ids).to(q.device)
        found = ids >= 0
        ids = ids.clamp_min(0)
        if self.exact_distances:
            # The index returned ||x/a - y_j||^2 computed directly (IVF-Flat): ||x - a y_j||^2 = a^2 that.
            dist = alpha**2 * torch.from_numpy(dist).to(q.device)
            values = self.reader.read(ids, window=not full)                # (B, k, dv)
        else:
            # PCA/PQ distances only chose the candidates: the true ||x - a y||^2, from the image.
            y = self.reader.read(ids)                                      # (B, m, d)
            # (q - a y)^2 summed, in place on one temporary: 3x faster than the plain expression, same bits.
            dist = y.mul(-alpha).add_(q[:, None, :]).pow_(2).sum(-1).masked_fill_(~found, float("inf"))
            if dist.shape[1] > self.k:
                dist, pick = torch.topk(dist, self.k, dim=1, largest=False, sorted=True)
                ids = torch.gather(ids, 1, pick)
                found = torch.isfinite(dist)
                y = torch.gather(y, 1, pick[:, :, None].expand(-1, -1, y.shape[2]))
            values = y if full else y[:, :, self.box_columns]
        logits = (-dist / (2.0 * sigma**2)).masked_fill(~found, float("-inf"))
        w = torch.softmax(logits, dim=1)
        out = torch.bmm(w[:, None, :], values)[:, 0]
        lost = ~found.any(1)  # no candidate at all (only with tiny nprobe): fall back to the mean patch
        if bool(lost.any()):
            out[lost] = (self.mean if full else self.mean[self.box_columns])[None]
        return out
