"""ROI-guided generation (SinDDM Fig. 9, Eq. 2): put the content of a source box of the reference into one
or more destination boxes of the output.

At every scale but the finest (SinDDM's paper; its code does the coarsest only), after each denoiser call
x_hat <- m (1 - eta) x_hat + m eta x_target + (1 - m) x_hat, where m is a destination box at that scale and
x_target the reference's source box resized into it (from the reference at that scale's output-relative
size), eta = 0.8. Pointwise: tiled runs give the in-memory result."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import ConfigError
from ..io.read import load_image
from ..plan import Plan
from ..pyramid import resize
from ..sample.hooks import Box, Hooks, Reader
from .masks import as_tensor

ETA = 0.8

Rect = tuple[int, int, int, int]  # x, y, w, h (command-line order)


def check_box(rect: Rect, width: int, height: int, option: str) -> None:
    x, y, w, h = rect
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ConfigError(f"{option} {x},{y},{w},{h} is not a box inside the {width}x{height} image")


def scaled(rect: Rect, full: tuple[int, int], size: tuple[int, int]) -> Box:
    """A box (x, y, w, h) of the finest output scale as (y0, y1, x0, x1) at an output scale of `size`."""
    x, y, w, h = rect
    fy, fx = size[0] / full[0], size[1] / full[1]
    y0, x0 = round(y * fy), round(x * fx)
    return y0, max(y0 + 1, round((y + h) * fy)), x0, max(x0 + 1, round((x + w) * fx))


class Guide:
    """Per scale (but the finest): the destination mask and the target image on the whole output."""

    def __init__(self, ref: torch.Tensor, src: Rect, dsts: list[Rect], sizes: list[tuple[int, int]], eta: float) -> None:
        self.eta = eta
        x, y, w, h = src
        crop = ref[:, y:y + h, x:x + w]
        self.masks: dict[int, torch.Tensor] = {}
        self.targets: dict[int, torch.Tensor] = {}
        for s, size in enumerate(sizes):
            if s == 0 and len(sizes) > 1:
                continue
            mask = torch.zeros(size, dtype=torch.bool)
            target = torch.zeros(ref.shape[0], *size)
            for d in dsts:
                y0, y1, x0, x1 = scaled(d, sizes[0], size)
                mask[y0:y1, x0:x1] = True
                target[:, y0:y1, x0:x1] = resize(crop, (y1 - y0, x1 - x0))
            self.masks[s], self.targets[s] = mask, target

    def transform(self, scale: int, t: int, box: Box, read: Reader) -> torch.Tensor:
        x_hat = read(box)
        if scale not in self.masks:
            return x_hat
        y0, y1, x0, x1 = box
        m = self.masks[scale][y0:y1, x0:x1][None]
        return torch.where(m, (1 - self.eta) * x_hat + self.eta * self.targets[scale][:, y0:y1, x0:x1], x_hat)


def make(ref_path, src: Rect, dsts: list[Rect], eta: float = ETA) -> Callable[[Plan], Hooks]:
    """Hooks of `sidpipe roi REF --src x,y,w,h --dst x,y,w,h [--dst ...]`."""
    if not dsts:
        raise ConfigError("give at least one --dst x,y,w,h")

    def build(plan: Plan) -> Hooks:
        ref = as_tensor(load_image(ref_path))
        check_box(src, ref.shape[2], ref.shape[1], "--src")
        oh, ow = plan.out_sizes[0]
        for d in dsts:
            check_box(d, ow, oh, "--dst")
        g = Guide(ref, src, dsts, plan.out_sizes, eta)
        return Hooks(transform=g.transform, identity={"app": "roi", "src": list(src), "dst": [list(d) for d in dsts],
                                                      "eta": eta})

    return build
