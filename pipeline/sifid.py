"""Optional SIFID (single-image FID) from a user-supplied InceptionV3 weights file.

sidpipe ships no network weights and never downloads any. SIFID (Shaham et al.,
SinGAN) compares the distributions of the 64-channel feature vectors that
InceptionV3 produces at its first max-pooling layer, one vector per spatial
position, by the Frechet distance between Gaussians fitted to them.

Only the trunk up to that layer is needed (three 3x3 conv + batch-norm + ReLU
blocks and a 3x3/2 max pool), so it is built here in plain torch and loaded from
a state dict that uses the torchvision / pytorch-fid key names
(``Conv2d_1a_3x3.conv.weight``, ``Conv2d_1a_3x3.bn.running_mean``, ...); the rest
of the file (the deeper layers) is ignored. Images go in at their own
resolution, in [-1, 1] (the input range pytorch-fid's network expects after its
own normalisation). This implementation has not been checked against published
SIFID numbers here (no weights are available on this machine): compare SIFID
values only with values computed by this same code and weights file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SidpipeError

__all__ = ["SIFIDUnavailable", "SIFID", "load_sifid", "frechet_distance", "NOT_AVAILABLE"]

NOT_AVAILABLE = "not available: needs --inception-weights FILE"

# (name, in channels, out channels, stride, padding) of the trunk up to the first max pool.
_BLOCKS = (
    ("Conv2d_1a_3x3", 3, 32, 2, 0),
    ("Conv2d_2a_3x3", 32, 32, 1, 0),
    ("Conv2d_2b_3x3", 32, 64, 1, 1),
)
_BN_EPS = 1e-3


class SIFIDUnavailable(SidpipeError):
    """The weights file is missing, unreadable or does not hold an InceptionV3 trunk."""


def _tensor_dict(obj) -> dict:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise SIFIDUnavailable("inception weights file does not hold a state dict")
    # Tolerate wrappers that prefix every key (e.g. "module." or "net.").
    out = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            for block, *_ in _BLOCKS:
                pos = key.find(block + ".")
                if pos >= 0:
                    out[key[pos:]] = value
    return out


class SIFID:
    """The InceptionV3 trunk to the first max pool, and SIFID between two images."""

    def __init__(self, state: dict) -> None:
        self.params = []
        for name, cin, cout, _stride, _pad in _BLOCKS:
            keys = {k: f"{name}.{k}" for k in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")}
            missing = [v for v in keys.values() if v not in state]
            if missing:
                raise SIFIDUnavailable(f"inception weights file lacks {missing[0]} (not an InceptionV3 state dict?)")
            w = state[keys["conv.weight"]].float()
            if tuple(w.shape) != (cout, cin, 3, 3):
                raise SIFIDUnavailable(f"inception weights: {name}.conv.weight has shape {tuple(w.shape)}, "
                                       f"expected {(cout, cin, 3, 3)}")
            bn = [state[keys[k]].float().reshape(-1) for k in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")]
            if any(t.numel() != cout for t in bn):
                raise SIFIDUnavailable(f"inception weights: {name}.bn has the wrong size")
            self.params.append((w, *bn))

    @torch.no_grad()
    def features(self, img) -> np.ndarray:
        """(N, 64) float64 feature vectors of a (C, H, W) [-1, 1] image (gray is repeated to RGB)."""
        x = torch.as_tensor(np.asarray(img, dtype=np.float32))
        if x.ndim != 3:
            raise ValueError(f"expected (C, H, W), got {tuple(x.shape)}")
        if x.shape[0] == 1:
            x = x.repeat(3, 1, 1)
        if min(x.shape[1:]) < 11:
            raise ValueError("SIFID needs images of at least 11x11 pixels")
        x = x[None]
        for (w, gamma, beta, mean, var), (_, _, _, stride, pad) in zip(self.params, _BLOCKS):
            x = F.conv2d(x, w, stride=stride, padding=pad)
            x = F.batch_norm(x, mean, var, gamma, beta, training=False, eps=_BN_EPS)
            x = F.relu(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        return x[0].reshape(x.shape[1], -1).t().double().numpy()

    def __call__(self, sample, reference) -> float:
        """SIFID(sample, reference): Frechet distance of the two feature distributions (0 for identical images)."""
        a, b = self.features(sample), self.features(reference)
        return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """|mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)), with the usual small-eps fallback."""
    from scipy import linalg

    diff = np.asarray(mu1) - np.asarray(mu2)
    covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():
        off = np.eye(cov1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov1 + off) @ (cov2 + off))
    covmean = np.real(covmean)
    return float(max(0.0, diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean)))


def load_sifid(path: str | os.PathLike) -> SIFID:
    """Load the trunk from a torch state-dict file (torchvision or pytorch-fid InceptionV3 key names)."""
    path = Path(path)
    if not path.is_file():
        raise SIFIDUnavailable(f"inception weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip or format errors of many types
        raise SIFIDUnavailable(f"cannot read inception weights file {path}: {type(exc).__name__}") from None
    return SIFID(_tensor_dict(obj))
