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

import torch

from .patches import band_rows, border_band, fold, patch_grid, unfold, window_radius


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


class PatchDenoiser:
    """The reference patch set Y_s of one scale, prepared for the closed-form image denoiser.

    Args:
        reference: (C, H, W) float32 reference image at this scale, H and W >= patch_size.
        patch_size: p.
        rho, truncate: fold window std and truncation (see `patches.window_radius`).
        precision: "fp32" or "bf16": dtype of the two matrix products of the fast path (logits,
            bias, softmax and normalisation stay float32).
        impl: "fast" or "naive".
        query_block: queries are processed in blocks of query_block x query_block patch positions.
        naive_dtype: dtype of the naive path (float64 for tests).
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
        naive_dtype: torch.dtype = torch.float64,
    ) -> None:
        if impl not in ("fast", "naive"):
            raise ValueError(f"impl must be fast or naive, got {impl!r}")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        c, h, w = reference.shape
        if h < patch_size or w < patch_size:
            raise ValueError(f"reference {h}x{w} is smaller than the patch size {patch_size}")
        self.p, self.rho, self.impl, self.block = patch_size, rho, impl, query_block
        self.channels = c
        self.radius = window_radius(patch_size, rho, truncate)
        self.band = border_band(patch_size, self.radius)
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.naive_dtype = naive_dtype
        device = reference.device
        y = unfold(reference.float(), patch_size)  # (N, d)
        self.num_patches = y.shape[0]
        if impl == "naive":
            self.keys = y.to(naive_dtype)
            return
        # Centre on the mean patch; keys in the compute dtype, their norms from the rounded keys so the
        # distance is exact for the patches actually used.
        self.mean = y.mean(0)
        keys = (y - self.mean).to(self.dtype)
        # Keys augmented with -||y||^2/2 (hi, lo, hi, lo) and two ones columns; see _attend.
        half_norm = self._split(-0.5 * keys.float().pow(2).sum(1))
        ones = torch.ones(y.shape[0], 2, dtype=self.dtype, device=device)
        self.keys_aug = torch.cat([keys, half_norm, half_norm, ones], 1)
        ones = torch.ones(y.shape[0], 1, device=device)
        lo, hi = self.p // 2 - self.radius, self.p // 2 + self.radius + 1
        box = y.view(-1, c, patch_size, patch_size)[:, :, lo:hi, lo:hi].reshape(y.shape[0], -1)
        # A trailing ones column makes the second product also return the softmax normaliser.
        self.values_box = torch.cat([box, ones], 1).to(self.dtype)
        self.values_full = torch.cat([y, ones], 1).to(self.dtype) if self.band > 0 else self.values_box

    # -- patch level -------------------------------------------------------------------------------

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

    def denoise_patches(self, queries: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """Denoise (B, d) patches to whole (B, d) patches (the patch-level PATCHDENOISE)."""
        if self.impl == "naive":
            return naive_patch_denoise(queries.to(self.naive_dtype), self.keys, alpha, sigma)
        # With an empty border band the box is the whole patch, so values_full covers both cases.
        return self._attend(queries.float(), self.values_full, alpha, sigma)

    # -- image level -------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """IMGDENOISE: denoise every stride-1 patch of x (C, H, W) and fold them back; returns (C, H, W)."""
        c, h, w = x.shape
        p = self.p
        hp, wp = patch_grid(h, w, p)
        if hp < 1 or wp < 1:
            raise ValueError(f"image {h}x{w} is smaller than the patch size {p}")
        dtype = self.naive_dtype if self.impl == "naive" else torch.float32
        est = torch.zeros(c, p, p, hp, wp, dtype=dtype, device=x.device)
        rows_band = band_rows(hp, h, p, self.band)
        cols_band = band_rows(wp, w, p, self.band)
        lo, hi = p // 2 - self.radius, p // 2 + self.radius + 1
        b = self.block
        for i0 in range(0, hp, b):
            i1 = min(hp, i0 + b)
            for j0 in range(0, wp, b):
                j1 = min(wp, j0 + b)
                region = x[:, i0:i1 + p - 1, j0:j1 + p - 1]
                q = unfold(region, p)  # (bh*bw, d), raster order within the block
                bh, bw = i1 - i0, j1 - j0
                if self.impl == "naive":
                    out = self.denoise_patches(q, alpha, sigma)
                    est[:, :, :, i0:i1, j0:j1] = out.T.reshape(c, p, p, bh, bw).to(dtype)
                    continue
                edge = (rows_band[i0:i1, None] | cols_band[None, j0:j1]).reshape(-1)
                inner = ~edge
                if bool(inner.any()):
                    box = self._attend(q[inner], self.values_box, alpha, sigma)  # (n, C*w*w)
                    blk = est[:, lo:hi, lo:hi, i0:i1, j0:j1]
                    view = blk.reshape(c, hi - lo, hi - lo, bh * bw)
                    view[..., inner] = box.T.reshape(c, hi - lo, hi - lo, -1)
                    est[:, lo:hi, lo:hi, i0:i1, j0:j1] = view.reshape(blk.shape)
                if bool(edge.any()):
                    full = self._attend(q[edge], self.values_full, alpha, sigma)  # (n, C*p*p)
                    blk = est[:, :, :, i0:i1, j0:j1]
                    view = blk.reshape(c, p, p, bh * bw)
                    view[..., edge] = full.T.reshape(c, p, p, -1)
                    est[:, :, :, i0:i1, j0:j1] = view.reshape(blk.shape)
        return fold(est, h, w, self.rho, self.radius).to(x.dtype if self.impl == "fast" else dtype)


def flops_per_call(num_queries: int, num_keys: int, channels: int, patch_size: int, radius: int) -> float:
    """Multiply-add FLOPs (x2) of one fast image-denoiser call, counting both matrix products."""
    d = channels * patch_size**2
    dv = channels * (2 * radius + 1) ** 2 + 1
    return 2.0 * num_queries * num_keys * (d + dv)


