"""Exact k-nearest-patch search in streamed key blocks (torch, float32): the ground truth for IVF."""

from __future__ import annotations

import numpy as np
import torch

from .grid import PatchGrid


class ExactIndex:
    """Brute-force L2 search over the patches of `grid` in `image`, `key_block` keys at a time.

    Memory is O(queries * (k + key_block)), never O(queries * N).
    """

    kind = "exact"
    exact_distances = False  # distances come from ||q||^2 - 2 q.y + ||y||^2: the denoiser recomputes them
    approximate = False      # ... but the k found are the true nearest: no re-ranking needed

    def __init__(self, image: torch.Tensor, grid: PatchGrid, *, key_block: int = 8192) -> None:
        self.image, self.grid, self.key_block = image.float(), grid, key_block
        self.ntotal = grid.size

    @torch.no_grad()
    def search(self, descriptors: np.ndarray | torch.Tensor, k: int, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(n, d) queries -> (squared L2 distances, ids), each (n, k), nearest first (nprobe is ignored)."""
        q = torch.as_tensor(np.asarray(descriptors, dtype=np.float32)).to(self.image.device)
        k = min(k, self.ntotal)
        best_d = torch.full((q.shape[0], 0), float("inf"), device=q.device)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=q.device)
        qn = q.pow(2).sum(1, keepdim=True)
        for start in range(0, self.ntotal, self.key_block):
            stop = min(self.ntotal, start + self.key_block)
            y = self.grid.descriptors(self.image, start, stop)
            d = (qn - 2.0 * q @ y.T + y.pow(2).sum(1)[None]).clamp_min(0.0)
            ids = torch.arange(start, stop, device=q.device).expand(q.shape[0], -1)
            all_d, all_i = torch.cat([best_d, d], 1), torch.cat([best_i, ids], 1)
            best_d, pick = all_d.topk(k, dim=1, largest=False)
            best_i = all_i.gather(1, pick)
        return best_d.cpu().numpy(), best_i.cpu().numpy()
