"""Patch indexes: which reference patches a noisy query attends to.

Two kinds share one `search(descriptors, k) -> (distances, ids)` interface over the stride-`s`
patches of one reference scale (ids are raster positions on that patch grid, see `PatchGrid`):

* `ExactIndex` (`exact.py`): brute force in streamed key blocks, torch. Ground truth for recall.
* `IVFIndex` (`ivf.py`): FAISS IVF-Flat (or IVF-PQ, optional PCA) built once per scale, saved with
  `faiss.write_index` and loaded memory-mapped by whoever denoises; moved to a GPU when one is present.

The exact *denoiser* (`denoise.PatchDenoiser`) does not search at all: it takes the softmax over every
patch. The k-NN denoiser (`denoise.KNNDenoiser`) takes it over the k patches an index returns.
"""

from .exact import ExactIndex
from .grid import PatchGrid, gather_patches
from .ivf import IVFIndex, IVFParams

__all__ = ["ExactIndex", "IVFIndex", "IVFParams", "PatchGrid", "gather_patches"]
