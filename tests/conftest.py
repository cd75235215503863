"""Shared fixtures: small real images, loaded through sidpipe's own reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sidpipe.io.read import load_image
from sidpipe.pyramid import resize

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
BALLOONS = ROOT / "examples" / "balloons.png"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def balloons() -> np.ndarray:
    return load_image(BALLOONS)


@pytest.fixture(scope="session")
def small_ref(balloons) -> torch.Tensor:
    """balloons.png shrunk to 37 x 49 (odd, non-square): big enough for p = 7..15, small enough for float64."""
    return resize(torch.from_numpy(balloons), (37, 49))
