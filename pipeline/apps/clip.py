"""CLIP from a local folder (transformers), the augmented image views and the text-guidance loss.

The text commands (`sidpipe text-style`, `sidpipe text-content`) steer the sampler with the gradient of a
CLIP loss, as the seed paper's official text-style code and SinDDM do (both take the loss from Text2LIVE):

- The model is a Hugging Face CLIP checkpoint folder (`config.json` with model_type "clip", weights as
  `model.safetensors` or `pytorch_model.bin`, the tokenizer as `tokenizer.json` or `vocab.json` +
  `merges.txt`), e.g. `openai/clip-vit-base-patch32` downloaded elsewhere and copied in. It is loaded with
  `local_files_only=True`: sidpipe never reaches the network. OpenAI's original `.pt` files and open_clip
  checkpoints are not read (open_clip needs torchvision, which does not import beside the CPU torch here).
- The text embedding of a prompt is one embedding per prompt template ("photo of {}.", ...: the
  high-resolution list of 14, or the low-resolution list of 26 for SinDDM's ROI edits).
- L_CLIP(image) = mean over a random subset of the template embeddings (its size uniform in 1..n, drawn with
  replacement, as the official loss does) of 1.2 (1 - mean over V augmented views of cos(view, text)).
- The V views (16 by default): view 0 is the whole image with its short side resized to CLIP's input size
  (long side at most 320/224 of it); the others are random crops of 0.6-1 of each side resized to view 0's
  size. Each view is then flipped (p 0.5), rotated +-15 deg and shifted +-10 % (p 0.8), warped by a random
  perspective of distortion 0.4 (p 0.5), colour-jittered (brightness, contrast, saturation 0.9-1.1, hue
  +-0.1 turn; p 0.7) and made gray (p 0.15); the corners a warp exposes are white. The official views come
  from torchvision, which sidpipe does not use: these are the same transforms written with `grid_sample`
  (bilinear), with hue turned in YIQ space instead of HSV, and jitter applied in a fixed order.
- All randomness comes from a `torch.Generator` the caller seeds, so a loss is reproducible.
- Everything here runs in float32 (the official code: bf16 is visibly worse for the guidance gradient).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError

TEMPLATES_HR = (
    "photo of {}.", "high quality photo of {}.", "a photo of {}.", "the photo of {}.", "image of {}.",
    "an image of {}.", "high quality image of {}.", "a high quality image of {}.", "the {}.", "a {}.",
    "{}.", "{}", "{}!", "{}...",
)
TEMPLATES_LR = (
    "photo of {}.", "low quality photo of {}.", "low resolution photo of {}.", "low-res photo of {}.",
    "blurry photo of {}.", "pixelated photo of {}.", "a photo of {}.", "the photo of {}.", "image of {}.",
    "an image of {}.", "low quality image of {}.", "a low quality image of {}.", "low resolution image of {}.",
    "a low resolution image of {}.", "low-res image of {}.", "a low-res image of {}.", "blurry image of {}.",
    "a blurry image of {}.", "pixelated image of {}.", "a pixelated image of {}.", "the {}.", "a {}.", "{}.",
    "{}", "{}!", "{}...",
)
# CLIP's pixel normalisation (used when the folder has no preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LOSS_SCALE = 1.2
# Views: the long side of a view is at most this times its short side (the official 320 / 224).
MAX_ASPECT = 320 / 224


@dataclass(frozen=True)
class Augment:
    """The official view augmentations (Text2LIVE's), as probabilities and ranges."""

    views: int = 16
    crop_min: float = 0.6
    flip: float = 0.5
    affine: float = 0.8
    degrees: float = 15.0
    translate: float = 0.1
    perspective: float = 0.5
    distortion: float = 0.4
    jitter: float = 0.7
    jitter_amount: float = 0.1
    gray: float = 0.15


def _weights_file(folder: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def check_folder(folder: Path) -> None:
    """A readable CLIP checkpoint folder, or a ConfigError naming what is missing (one line)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"CLIP folder not found: {folder}")
    config = folder / "config.json"
    if not config.is_file():
        raise ConfigError(f"{folder} is not a CLIP checkpoint folder: {config} is missing")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{config} is not a readable config.json ({exc.__class__.__name__})") from None
    if model_type != "clip":
        raise ConfigError(f"{folder} is not a CLIP checkpoint: its config.json says model_type {model_type!r}, not 'clip'")
    if _weights_file(folder) is None:
        raise ConfigError(f"{folder} has no CLIP weights: {folder / 'model.safetensors'} (or pytorch_model.bin) is missing")
    if not (folder / "tokenizer.json").is_file() and not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        raise ConfigError(f"{folder} has no CLIP tokenizer: {folder / 'tokenizer.json'} "
                          "(or vocab.json and merges.txt) is missing")


class Clip:
    """A CLIP model and tokenizer loaded from a local folder; float32, on `device`, no gradients on weights."""

    def __init__(self, folder: Path, device: str | torch.device = "cpu") -> None:
        folder = Path(folder)
        check_folder(folder)
        import logging

        from transformers import CLIPModel, CLIPTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        logging.getLogger("transformers").setLevel(logging.ERROR)
        try:
            self.model = CLIPModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
            self.tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as exc:  # a damaged or foreign checkpoint: one line, not a traceback
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise ConfigError(f"cannot load the CLIP checkpoint in {folder}: {why}") from None
        self.model = self.model.float().eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.folder = folder
        self.size = int(self.model.config.vision_config.image_size)
        mean, std = CLIP_MEAN, CLIP_STD
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            try:
                cfg = json.loads(pre.read_text())
                mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
            except (OSError, ValueError):
                pass
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)[:, None, None]

    def digest(self) -> str:
        """A short hash of the checkpoint's config and weights (part of a run directory's identity)."""
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        for path in (self.folder / "config.json", _weights_file(self.folder)):
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()

    @torch.no_grad()
    def text_embeddings(self, text: str, templates: tuple[str, ...] = TEMPLATES_HR) -> torch.Tensor:
        """(len(templates), D): the prompt in every template, embedded by the text tower."""
        if not text.strip():
            raise ConfigError("--text is empty: give a prompt, e.g. --text \"Van Gogh style\"")
        prompts = [t.format(text) for t in templates]
        limit = int(self.model.config.text_config.max_position_embeddings)
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        out = self.model.text_model(input_ids=tokens["input_ids"].to(self.device),
                                    attention_mask=tokens["attention_mask"].to(self.device))
        return self.model.text_projection(out.pooler_output).float()

    def image_embeddings(self, views: torch.Tensor) -> torch.Tensor:
        """(V, D) embeddings of views (V, 3, h, w) in [0, 1] (any size: positions are interpolated)."""
        x = (views - self.mean) / self.std
        out = self.model.vision_model(pixel_values=x, interpolate_pos_encoding=True)
        return self.model.visual_projection(out.pooler_output)

    def loss(self, image: torch.Tensor, targets: torch.Tensor, generator: torch.Generator,
             augment: Augment = Augment()) -> torch.Tensor:
        """L_CLIP of one image (C, H, W) in [-1, 1] (differentiable w.r.t. it) against text embeddings."""
        rgb = image.float().to(self.device)
        if rgb.shape[0] == 1:
            rgb = rgb.expand(3, -1, -1)
        views = augment_views((rgb + 1) * 0.5, self.size, generator, augment)
        emb = self.image_embeddings(views)
        n = int(torch.randint(1, len(targets) + 1, (1,), generator=generator))
        chosen = targets[torch.randint(len(targets), (n,), generator=generator)]
        cos = F.cosine_similarity(emb[:, None, :], chosen[None, :, :].to(emb), dim=-1)  # (V, n)
        return (LOSS_SCALE * (1 - cos.mean(0))).mean()


def _uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def _chance(generator: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=generator)) < p


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def view_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(h, w) of view 0: the short side `short` with the aspect kept, unless the long side would then exceed
    MAX_ASPECT * short: then the long side is that and the short side shrinks (torchvision's max_size rule)."""
    cap = int(MAX_ASPECT * short)
    lo, hi = min(h, w), max(h, w)
    new_lo, new_hi = short, round(hi * short / lo)
    if new_hi > cap:
        new_lo, new_hi = max(1, round(lo * cap / hi)), cap
    return (new_lo, new_hi) if h <= w else (new_hi, new_lo)


def _homography(src: list[tuple[float, float]], dst: list[tuple[float, float]]) -> torch.Tensor:
    """3x3 H with H @ (x, y, 1) ~ dst for the four src -> dst point pairs (float64)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    sol = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64))
    return torch.cat([sol, torch.ones(1, dtype=torch.float64)]).reshape(3, 3)


def _warp(x: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Resample x (C, h, w) at inverse @ (output pixel centre); outside the image: white (1)."""
    _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                            indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1) @ inverse.T
    sx, sy = pts[..., 0] / pts[..., 2], pts[..., 1] / pts[..., 2]
    grid = torch.stack([sx / w * 2 - 1, sy / h * 2 - 1], -1).to(x.dtype)
    return F.grid_sample((x - 1)[None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)[0] + 1


def _affine_matrix(g: torch.Generator, h: int, w: int, a: Augment) -> torch.Tensor:
    """Inverse map (output -> input pixel coordinates) of a random rotation about the centre plus a shift."""
    angle = math.radians(_uniform(g, -a.degrees, a.degrees))
    tx, ty = _uniform(g, -a.translate, a.translate) * w, _uniform(g, -a.translate, a.translate) * h
    cx, cy = w / 2, h / 2
    c, s = math.cos(angle), math.sin(angle)
    forward = torch.tensor([[c, -s, cx + tx - c * cx + s * cy], [s, c, cy + ty - s * cx - c * cy], [0, 0, 1]],
                           dtype=torch.float64)
    return torch.linalg.inv(forward)


def _perspective_matrix(g: torch.Generator, h: int, w: int, a: Augment) -> torch.Tensor:
    """Inverse map of a random perspective: each corner moved inwards by up to distortion/2 of the size."""
    dx, dy = a.distortion * w / 2, a.distortion * h / 2
    corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]
    signs = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
    moved = [(x + sx * _uniform(g, 0, dx), y + sy * _uniform(g, 0, dy)) for (x, y), (sx, sy) in zip(corners, signs)]
    return _homography(moved, corners)  # output corner -> input corner


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]


def _hue(x: torch.Tensor, turn: float) -> torch.Tensor:
    """Rotate the chroma of RGB x by `turn` of a full circle in YIQ space."""
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=x.dtype)
    c, s = math.cos(2 * math.pi * turn), math.sin(2 * math.pi * turn)
    rot = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=x.dtype)
    m = torch.linalg.inv(yiq) @ rot @ yiq
    return torch.einsum("ij,jhw->ihw", m, x)


def _jitter(x: torch.Tensor, g: torch.Generator, a: Augment) -> torch.Tensor:
    lo, hi = 1 - a.jitter_amount, 1 + a.jitter_amount
    x = (x * _uniform(g, lo, hi)).clamp(0, 1)                                  # brightness
    mean = _gray(x).mean()
    x = (mean + (x - mean) * _uniform(g, lo, hi)).clamp(0, 1)                  # contrast
    gray = _gray(x)
    x = (gray + (x - gray) * _uniform(g, lo, hi)).clamp(0, 1)                  # saturation
    return _hue(x, _uniform(g, -a.jitter_amount, a.jitter_amount)).clamp(0, 1)  # hue


def _augment_one(x: torch.Tensor, g: torch.Generator, a: Augment) -> torch.Tensor:
    _, h, w = x.shape
    if _chance(g, a.flip):
        x = x.flip(-1)
    if _chance(g, a.affine):
        x = _warp(x, _affine_matrix(g, h, w, a))
    if _chance(g, a.perspective):
        x = _warp(x, _perspective_matrix(g, h, w, a))
    if _chance(g, a.jitter):
        x = _jitter(x, g, a)
    if _chance(g, a.gray):
        x = _gray(x).expand(3, -1, -1)
    return x


def augment_views(image: torch.Tensor, short: int, generator: torch.Generator, augment: Augment = Augment()) -> torch.Tensor:
    """(V, 3, h, w) augmented views of an RGB image (3, H, W) in [0, 1] (see the module docstring)."""
    _, h, w = image.shape
    size = view_size(h, w, short)
    views = [_augment_one(_resize(image, size), generator, augment)]
    for _ in range(augment.views - 1):
        s = _uniform(generator, augment.crop_min, 1.0)
        ch, cw = max(1, int(h * s)), max(1, int(w * s))
        y0 = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
        x0 = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
        views.append(_augment_one(_resize(image[:, y0:y0 + ch, x0:x0 + cw], size), generator, augment))
    return torch.stack(views)


def generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from integers (seed, scale, step, ...)."""
    g = torch.Generator()
    value = 0x5EED
    for k in key:
        value = (value * 1_000_003 + (int(k) & 0xFFFFFFFF)) % (1 << 62)
    return g.manual_seed(value)
