"""Text-guided style and content with CLIP (seed paper Figs 1, S16; SinDDM Figs 2, 5, 7, 8).

The CLIP loss and its views are in `apps.clip`. The guidance changes the denoiser's estimate x_hat at a
step (hook `transform`); the noise estimate and the step use the guided x_hat.

text-style (the seed paper's official `text_style.py`): the reference, at each guided scale, is inverted
with its own denoiser to noise level l (0.3) and reconstructed deterministically with that denoiser, every
step's x_hat guided:
    x_m = x_hat on the scale's first step, else (1 - lambda) x_prev + lambda x_hat  (lambda 0.1: momentum)
    g = grad of -L_CLIP at x_m, soft-thresholded to the top f (0.5) of pixels by energy |g| (mask m,
        recomputed at every step): g <- max(|g| - q, 0) g / |g|, q = the (1 - f) quantile of |g|
    x_hat <- clamp(x_m + gamma (sigma_t / sigma_k) (|x_m m| / |g m|) g m, -1, 1)   (gamma 1), x_prev <- x_hat
Official: one scale, p = 7, T = 200, eta 0, fp32; the preset `text-style` has exactly that.

text-content (SinDDM `clip_content`): unconditional coarse-to-fine sampling; every scale but the coarsest
guided, lambda 0.2, f 0.5, gamma 0.5 (constant); the mask is made once, from the first guided step's
gradient (which is also the only one soft-thresholded), and then kept, resized with the momentum state to
each finer scale; inside the mask x_hat <- (1 - lambda) x_prev + lambda x_hat before the gradient step; the
finest scale's last 3 steps are unguided. With --roi x,y,w,h (SinDDM `clip_roi`): the reference's box alone
gets 100 plain normalised gradient steps (gamma 0.1, low-resolution templates, no mask), is pasted back,
and the finest scale is denoised from the noise level SinDDM uses (3 of its 100 cosine steps: l = 0.055 by
signal-to-noise ratio) with the reference kept outside the box grown by the steps' receptive radius.

Large outputs: guidance runs only at scales of at most GUIDE_MAX_PIXELS output pixels. Those scales are
computed in memory, whole, when the hooks are built (once per sample seed), and the sampler gets their
results as fixed scales; the finer scales run unguided through either sampler (tiled or in memory):
text-style's from the reference noised to l (SDEdit) and blended with the guided result below, text-content's
from noise as in `sidpipe run`. Strength 0 switches guidance (and its momentum) off: the result is then the
plain reconstruction (style) or the plain sample (content), bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import Config
from ..errors import ConfigError
from ..io.read import load_image
from ..noise import noise_region
from ..patches import window_radius
from ..plan import Plan, make_denoiser
from ..pyramid import reference_pyramid, resize
from ..sample.c2f import sample_scale
from ..sample.hooks import Box, Hooks
from ..sample.invert import invert
from ..sample.schedule import alpha_sigma, noise_level_step
from .clip import TEMPLATES_HR, TEMPLATES_LR, Augment, Clip, generator
from .masks import KnownRegion, as_tensor, dilate, file_digest

# Guidance runs at scales of at most this many output pixels (~1 MP); finer scales are unguided.
GUIDE_MAX_PIXELS = 1 << 20
# SinDDM's ROI finish: 3 of its 100 cosine steps, as a flow-matching noise level of equal SNR.
ROI_LEVEL = 0.055
# Generator keys of the ROI iterations (no sampling step is negative).
ROI_KEY = -2


@dataclass(frozen=True)
class Guidance:
    """How hard each step is pushed toward the prompt."""

    strength: float          # gamma
    fill: float = 0.5        # f: fraction of pixels guided (the energy mask)
    momentum: float = 0.1    # lambda: weight of the new estimate against the previous guided one
    views: int = 16          # augmented views per loss
    stop: int = 0            # text-content: the finest scale's last `stop` steps are unguided

    def check(self) -> None:
        if not self.strength >= 0.0:
            raise ConfigError(f"--strength must be >= 0, got {self.strength}")
        if not 0.0 < self.fill <= 1.0:
            raise ConfigError(f"--fill must be in (0, 1], got {self.fill}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ConfigError(f"--momentum must be in [0, 1], got {self.momentum}")
        if self.views < 1:
            raise ConfigError(f"--views must be >= 1, got {self.views}")
        if self.stop < 0:
            raise ConfigError(f"--stop-guidance must be >= 0, got {self.stop}")


def energy_mask(grad: torch.Tensor, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-threshold a gradient (C, H, W) to the top `fill` of pixels by energy (the norm over channels).

    Returns (sparse gradient, bool mask (H, W)): mask = energy > q, q the (1 - fill) quantile (nearest rank);
    the sparse gradient keeps each pixel's direction with its energy reduced by q (zero outside the mask)."""
    energy = grad.norm(dim=0)
    q = torch.quantile(energy.flatten().double(), 1.0 - fill, interpolation="nearest").to(energy.dtype)
    mask = energy > q
    unit = torch.where(energy > 0, grad / energy.clamp_min(torch.finfo(energy.dtype).tiny), torch.zeros_like(grad))
    return (energy - q).clamp_min(0.0) * unit, mask


def _norm_ratio(x: torch.Tensor, g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """|x m| / |g m| (0 when the masked gradient vanishes)."""
    ng = torch.linalg.vector_norm(g * mask)
    return torch.where(ng > 0, torch.linalg.vector_norm(x * mask) / ng.clamp_min(1e-30), torch.zeros_like(ng))


class Guide:
    """CLIP guidance of x_hat for one sample: the loss's model, prompt embeddings and the momentum state."""

    def __init__(self, clip: Clip, targets: torch.Tensor, guidance: Guidance, seed: int) -> None:
        self.clip, self.targets, self.g, self.seed = clip, targets, guidance, seed
        self.augment = Augment(views=guidance.views)

    def gradient(self, x: torch.Tensor, scale: int, t: int) -> torch.Tensor:
        """grad of -L_CLIP at x (C, H, W), float32; views and template subset keyed by (seed, scale, t)."""
        with torch.enable_grad():
            xg = x.detach().float().clone().requires_grad_(True)
            loss = self.clip.loss(xg, self.targets, generator(self.seed, scale, t), self.augment)
            (grad,) = torch.autograd.grad(-loss, xg)
        return grad.to(x.device)


class StyleGuide(Guide):
    """The official text-style step (energy mask recomputed at every step, strength scaled by sigma_t / sigma_k)."""

    def __init__(self, *args, k: int, steps: int) -> None:
        super().__init__(*args)
        self.k, self.steps = k, steps
        self.prev: dict[int, torch.Tensor] = {}
        self.masks: list[torch.Tensor] = []  # every step's energy mask (for inspection and tests)

    def transform(self, scale: int, t: int, box: Box, read) -> torch.Tensor:
        x_hat = read(box).float()
        lam = self.g.momentum
        x_m = x_hat if scale not in self.prev else (1 - lam) * self.prev[scale] + lam * x_hat
        grad, mask = energy_mask(self.gradient(x_m, scale, t), self.g.fill)
        self.masks.append(mask)
        m = mask[None].float()
        gamma_t = self.g.strength * alpha_sigma(t, self.steps)[1] / alpha_sigma(self.k, self.steps)[1]
        out = (x_m + gamma_t * _norm_ratio(x_m, grad, m) * grad * m).clamp(-1.0, 1.0)
        self.prev[scale] = out
        return out


class ContentGuide(Guide):
    """SinDDM's content step (one mask from the first gradient, kept and resized across scales)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.mask: torch.Tensor | None = None   # float (1, H, W) at the current scale
        self.prev: torch.Tensor | None = None
        self.first_mask: torch.Tensor | None = None  # the bool mask as made (for tests)

    def enter(self, size: tuple[int, int]) -> None:
        """A new (finer) scale: the mask and the momentum state resized to it (bilinear, as SinDDM)."""
        if self.mask is not None and tuple(self.mask.shape[-2:]) != tuple(size):
            self.mask = F.interpolate(self.mask[None], size=size, mode="bilinear", align_corners=False)[0]
            self.prev = F.interpolate(self.prev[None], size=size, mode="bilinear", align_corners=False)[0]

    def transform(self, scale: int, t: int, box: Box, read) -> torch.Tensor:
        x_hat = read(box).float().clamp(-1.0, 1.0)
        if scale == 0 and t <= self.g.stop:
            return read(box)
        if self.mask is not None:
            lam = self.g.momentum
            x_hat = x_hat * (1 - self.mask) + ((1 - lam) * self.prev + lam * x_hat) * self.mask
        grad = self.gradient(x_hat, scale, t)
        if self.mask is None:
            grad, mask = energy_mask(grad, self.g.fill)
            self.first_mask = mask
            self.mask = mask[None].float()
        out = (x_hat + self.g.strength * _norm_ratio(x_hat, grad, self.mask) * grad * self.mask).clamp(-1.0, 1.0)
        self.prev = out
        return out


def guided_scales(plan: Plan) -> list[int]:
    """The scales computed in memory (and guided): those of at most GUIDE_MAX_PIXELS output pixels."""
    small = [s for s, (h, w) in enumerate(plan.out_sizes) if h * w <= GUIDE_MAX_PIXELS]
    if not small:
        raise ConfigError(f"the coarsest scale ({plan.out_sizes[-1][1]}x{plan.out_sizes[-1][0]}) is larger than "
                          f"{GUIDE_MAX_PIXELS} px: raise num_scales (--set num_scales=N)")
    return small


def scales_for(cfg: Config, height: int, width: int) -> Config:
    """With num_scales 1 (text-style's preset) and an output above GUIDE_MAX_PIXELS: enough scales (factor
    `scale_factor`) for the coarsest to be at most GUIDE_MAX_PIXELS (the finer ones run unguided)."""
    if cfg.num_scales != 1 or height * width <= GUIDE_MAX_PIXELS:
        return cfg
    n = 1
    while (height / cfg.scale_factor ** n) * (width / cfg.scale_factor ** n) > GUIDE_MAX_PIXELS:
        n += 1
    return cfg.replace(num_scales=n + 1)


class TextJob:
    """Hooks of text-style / text-content (without --roi): in-memory guided scales, fixed for the sampler."""

    def __init__(self, kind: str, ref: torch.Tensor, clip: Clip, text: str, guidance: Guidance, cfg: Config,
                 plan: Plan, level: float) -> None:
        self.kind, self.clip, self.guidance, self.cfg, self.plan, self.level = kind, clip, guidance, cfg, plan, level
        self.small = guided_scales(plan)
        self.low = min(self.small)
        self.k = noise_level_step(level, cfg.steps) if kind == "style" else cfg.steps
        self.levels = reference_pyramid(ref, plan.ref_sizes)
        if kind == "content" and plan.num_scales < 2:
            raise ConfigError("text-content guides every scale but the coarsest: it needs at least 2 scales "
                              "(--set num_scales=N, or a smaller coarsest_ratio)")
        if kind == "style" and any(tuple(r) != tuple(o) for r, o in zip(plan.ref_sizes, plan.out_sizes)):
            raise ConfigError("text-style keeps the reference's size: do not give --size")
        self.targets = clip.text_embeddings(text, TEMPLATES_HR) if guidance.strength > 0 else None
        self.results: dict[int, dict[int, torch.Tensor]] = {}
        self.guides: dict[int, Guide] = {}
        self.denoisers: dict[int, Callable] = {}
        self.report: Callable[[str], None] | None = None

    def compute(self, seed: int) -> dict[int, torch.Tensor]:
        """x_{s,0} of every in-memory scale for this seed (coarsest first, each blended with the one below)."""
        cfg, plan = self.cfg, self.plan
        guide: Guide | None = None
        if self.targets is not None:
            args = (self.clip, self.targets, self.guidance, seed)
            guide = StyleGuide(*args, k=self.k, steps=cfg.steps) if self.kind == "style" else ContentGuide(*args)
            self.guides[seed] = guide
        out: dict[int, torch.Tensor] = {}
        coarse = None
        coarsest = plan.num_scales - 1
        for s in sorted(self.small, reverse=True):
            if s not in self.denoisers:  # shared by the samples (seeds)
                self.denoisers[s] = make_denoiser(self.levels[s], plan.indexes[s], cfg, plan, scale=s)
            denoise = self.denoisers[s]
            h, w = plan.out_sizes[s]
            if self.kind == "style":
                x, _ = invert(self.levels[s].to(plan.device), denoise, level=self.level,
                              steps=cfg.steps, seed=seed, scale=s)
            else:
                x = noise_region(self.levels[s].shape[0], 0, h, 0, w, seed=seed, scale=s, step=cfg.steps).to(plan.device)
            if self.report is not None:
                guided = 0 if guide is None or (self.kind == "content" and s == coarsest) else self.k
                if self.kind == "content" and s == 0:
                    guided -= min(self.guidance.stop, guided)
                self.report(f"text-{self.kind}: seed {seed}, scale {s} ({w}x{h}) in memory: "
                            + ("inversion, then " if self.kind == "style" else "") + f"{self.k} step(s), {guided} guided")
            hooks = None
            if guide is not None and (self.kind == "style" or s != coarsest):
                if isinstance(guide, ContentGuide):
                    guide.enter((h, w))
                hooks = Hooks(transform=guide.transform)
            below = None if coarse is None else coarse.to(plan.device)
            coarse = sample_scale(denoise, x, steps=cfg.steps, eta=cfg.eta, seed=seed, scale=s, coarse=below,
                                  blend_last_step=cfg.blend_last_step, start_step=self.k, hooks=hooks).cpu()
            out[s] = coarse
        return out

    def start(self, scale: int) -> int:
        return 0 if scale >= self.low else self.k

    def init(self, scale: int, t0: int, box: Box, seed: int) -> torch.Tensor | None:
        y0, y1, x0, x1 = box
        if scale >= self.low:
            if seed not in self.results:
                self.results[seed] = self.compute(seed)
            return self.results[seed][scale][:, y0:y1, x0:x1].clone()
        if self.kind == "content":
            return None
        a, s = alpha_sigma(self.k, self.cfg.steps)  # unguided finer scale: the reference noised to l (SDEdit)
        level = self.levels[scale]
        return a * level[:, y0:y1, x0:x1] + s * noise_region(level.shape[0], y0, y1, x0, x1, seed=seed, scale=scale,
                                                             step=self.k)

    def __getstate__(self) -> dict:
        # workers of another process get the finished results (computed by `prepare`), never the model
        return {**self.__dict__, "clip": None, "guides": {}, "denoisers": {}, "report": None}

    def prepare(self, seeds: range) -> None:
        for seed in seeds:
            if seed not in self.results:
                self.results[seed] = self.compute(seed)

    def hooks(self, identity: dict) -> Hooks:
        return Hooks(start=self.start, init=self.init, identity={**identity, "guided_scales": self.small})


class RoiEdit:
    """text-content --roi: the box edited by CLIP alone, pasted into REF, the finest scale finished nearby."""

    def __init__(self, ref: torch.Tensor, rect: tuple[int, int, int, int], clip: Clip, text: str,
                 guidance: Guidance, iters: int, cfg: Config, plan: Plan, level: float) -> None:
        x, y, w, h = rect
        self.ref, self.rect, self.cfg, self.plan = ref, rect, cfg, plan
        self.k = noise_level_step(level, cfg.steps)
        self.iters, self.guidance, self.clip = iters, guidance, clip
        self.targets = clip.text_embeddings(text, TEMPLATES_LR) if guidance.strength > 0 and iters > 0 else None
        p = cfg.patch_size
        self.radius = self.k * (p // 2 + window_radius(p, cfg.rho, cfg.fold_truncate))
        box = torch.zeros(ref.shape[-2:], dtype=torch.bool)
        box[y:y + h, x:x + w] = True
        self.hole = dilate(box, self.radius) if self.radius > 0 else box
        self.edited: dict[int, torch.Tensor] = {}
        self.regions: dict[int, KnownRegion] = {}
        self.fixed: dict[tuple[int, int], torch.Tensor] = {}
        self.report: Callable[[str], None] | None = None

    def edit(self, seed: int) -> torch.Tensor:
        """REF with the box replaced by its CLIP-edited version (SinDDM: normalised gradient steps, clamped)."""
        x, y, w, h = self.rect
        crop = self.ref[:, y:y + h, x:x + w].clone().float()
        if self.targets is not None:
            if self.report is not None:
                self.report(f"text-content --roi: {self.iters} CLIP steps on the {w}x{h} box, in memory")
            guide = Guide(self.clip, self.targets, self.guidance, seed)
            for i in range(self.iters):
                grad = guide.gradient(crop, ROI_KEY, i)
                ones = torch.ones_like(crop[:1])
                crop = (crop + self.guidance.strength * _norm_ratio(crop, grad, ones) * grad).clamp(-1.0, 1.0)
        out = self.ref.clone()
        out[:, y:y + h, x:x + w] = crop
        return out

    def region(self, seed: int) -> KnownRegion:
        if seed not in self.regions:
            self.edited[seed] = self.edit(seed)
            self.regions[seed] = KnownRegion(self.edited[seed], self.hole, list(self.plan.out_sizes), self.cfg.steps)
        return self.regions[seed]

    def start(self, scale: int) -> int:
        return self.k if scale == 0 else 0

    def init(self, scale: int, t0: int, box: Box, seed: int) -> torch.Tensor:
        y0, y1, x0, x1 = box
        self.region(seed)
        if scale > 0:  # the coarser scales are the edited reference, fixed
            key = (seed, scale)
            if key not in self.fixed:
                self.fixed[key] = resize(self.edited[seed], self.plan.out_sizes[scale])
            return self.fixed[key][:, y0:y1, x0:x1].clone()
        a, s = alpha_sigma(self.k, self.cfg.steps)
        edited = self.edited[seed][:, y0:y1, x0:x1]
        return a * edited + s * noise_region(edited.shape[0], y0, y1, x0, x1, seed=seed, scale=0, step=self.k)

    def replace(self, scale: int, t_prev: int, box: Box, x: torch.Tensor, seed: int) -> torch.Tensor:
        return self.region(seed).replace(scale, t_prev, box, x, seed)

    def prepare(self, seeds: range) -> None:
        for seed in seeds:
            self.region(seed)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "clip": None, "report": None}

    def hooks(self, identity: dict, seeds: range) -> Hooks:
        # paste and active take no seed: the edit is per seed, so one run directory holds one seed's hooks
        seed = seeds[0]
        region = self.region(seed)
        return Hooks(start=self.start, init=self.init, replace=self.replace, paste=region.paste,
                     active=region.active, identity={**identity, "radius": self.radius, "k": self.k})


def load_reference(path: Path) -> torch.Tensor:
    return as_tensor(load_image(path))


def make(kind: str, ref_path: Path, clip_dir: Path, text: str, guidance: Guidance, cfg: Config, *,
         level: float | None = None, roi: tuple[int, int, int, int] | None = None, iters: int = 100,
         device: str = "cpu", report: Callable[[str], None] | None = None) -> Callable[[Plan], Hooks]:
    """Hooks of `sidpipe text-style` (kind "style") / `sidpipe text-content` (kind "content") for REF's plan.

    Every input is checked here, before any compute: the text, the guidance values, the noise level and
    the CLIP folder (loaded). report: optional, told (one line) what the in-memory guided part is doing."""
    if not text.strip():
        raise ConfigError("--text is empty: give a prompt, e.g. --text \"Van Gogh style\"")
    guidance.check()
    if level is not None:
        noise_level_step(level, cfg.steps)
    if iters < 0:
        raise ConfigError(f"--iters must be >= 0, got {iters}")
    clip = Clip(clip_dir, device)

    def build(plan: Plan) -> Hooks:
        ref = load_reference(ref_path)
        identity = {"app": f"text-{kind}", "ref": file_digest(ref_path), "text": text, "clip": clip.digest(),
                    "guidance": dataclasses.asdict(guidance), "level": level}
        seeds = range(cfg.seed, cfg.seed + cfg.samples)
        if roi is not None:
            from .roi import check_box

            x, y, w, h = roi
            check_box(roi, ref.shape[-1], ref.shape[-2], "--roi")
            if w * h > GUIDE_MAX_PIXELS:
                raise ConfigError(f"--roi {w}x{h} is larger than {GUIDE_MAX_PIXELS} px: CLIP guidance runs up to ~1 MP")
            if tuple(plan.out_sizes[0]) != tuple(ref.shape[-2:]):
                raise ConfigError("text-content --roi edits the reference: do not give --size")
            if cfg.samples > 1:
                raise ConfigError("text-content --roi draws one sample per run: use --seed for another")
            job = RoiEdit(ref, roi, clip, text, guidance, iters, cfg, plan, ROI_LEVEL if level is None else level)
            job.report = report
            job.prepare(seeds)
            return job.hooks({**identity, "roi": list(roi), "iters": iters}, seeds)
        job = TextJob(kind, ref, clip, text, guidance, cfg, plan, 1.0 if level is None else level)
        job.report = report
        job.prepare(seeds)
        return job.hooks(identity)

    return build
