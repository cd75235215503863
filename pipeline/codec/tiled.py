"""Encode and decode with a VAE in tiles, giving the whole-image result (no seams, no tone steps).

Only two things in a diffusers VAE are non-local: the GroupNorms (statistics over the whole image) and
the mid-block self-attention (every latent position attends to every other). Everything else (3x3
convs, 1x1 shortcuts, SiLU, nearest upsampling, residual adds) is local, so a tile computed with a halo
at least the network's receptive field, with the GroupNorms and the attention fed *global* quantities,
equals the whole-image computation on its core (up to float rounding, ~1e-6).

* **Receptive field, measured** (`TiledNet.measure_receptive_field`): an impulse at the centre of a
  random input changes the output only within the receptive field (statistics frozen and attention
  keys/values frozen, so both are pointwise); the halo is the largest distance seen, never a constant.
* **GroupNorm with global statistics** (`StatNorm`): a statistics pass, layer by layer: round r runs
  every statistics tile up to the first GroupNorm without statistics, sums x and x^2 (float64) over
  the tile's *core* only, then freezes that layer's mean and variance; the next round goes one layer
  further. Statistics tiles have their own fixed grid (`stats_tile` input cells), independent of the
  decode tile, so the result does not depend on the decode tiling. Each tile keeps the output of its
  last finished block (`Checkpoint`: conv_in, resnets, attention, up/downsamplers; up to `cache_bytes`
  in all), so a round resumes there instead of re-running the tile from its input: the pass costs about
  one decode of the statistics tiles plus a re-run of one block per GroupNorm. Exact when the grid has at most
  `max_stat_tiles` tiles; above that a stratified sample of `max_stat_tiles` tiles (the image cut into
  that many near-equal strata, the centre tile of each), which every decode tile then shares: no
  tile-to-tile tone steps, only a small global offset against an (infeasible) whole decode.
* **Attention independent of the tile grid** (`GlobalAttention`): keys and values are the mid-block
  attention's normalised input at the positions of a fixed global grid of stride s, gathered during
  the statistics pass; queries are the tile's own positions. s = 1 (exact global attention, as the
  whole decode computes it) while the latent has at most `max_tokens` positions; above, s is the
  smallest stride that keeps the keys within `max_tokens` (a strided subsample of keys and values:
  the same for every tile whatever the tiling; not checked against real weights).

Units: a net maps input cells to output cells by `up / down` (decoder 8 / 1: latent px -> 8 px;
encoder 1 / 8: px -> latent px). Boxes are (y0, y1, x0, x1) in input cells; encoder boxes are multiples
of 8 px (`Downsample2D` pads right/bottom by one, so tiles must sit on its grid).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .vae import VAECodec

Box = tuple[int, int, int, int]
Reader = Callable[[int, int, int, int], torch.Tensor]  # (y0, y1, x0, x1) -> (C, h, w) float32


_RF_CACHE: dict[tuple, int] = {}
_RF_LOCK = threading.RLock()  # one receptive-field measurement at a time (it switches oneDNN off process-wide)


class _Stop(Exception):
    """Raised inside the net once the layer being collected has seen this tile (the rest is not needed)."""


@dataclass
class _Tile:
    """Where the running tile sits: input origin, input size and core box (tile-local), all in input cells."""

    origin: tuple[int, int]
    size: tuple[int, int]
    core: Box


@dataclass
class NetState:
    """Frozen global quantities of one net over one image: GroupNorm (mean, rstd) per layer and the
    attention's keys/values (tokens, channels) per attention layer. Saved to the run directory so that a
    resumed decode uses the very same numbers."""

    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    kv: dict[str, torch.Tensor] = field(default_factory=dict)
    mode: str = "global"      # "global" | "native" (every tile its own statistics: the negative control)

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for k, (m, r) in self.stats.items():
            out[f"stats/{k}/mean"], out[f"stats/{k}/rstd"] = m.cpu().numpy(), r.cpu().numpy()
        for k, v in self.kv.items():
            out[f"kv/{k}"] = v.float().cpu().numpy()
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], device: torch.device, dtype: torch.dtype) -> NetState:
        state = cls()
        for name, value in arrays.items():
            kind, _, rest = name.partition("/")
            if kind == "stats":
                key, _, what = rest.rpartition("/")
                mean, rstd = state.stats.get(key, (None, None))
                t = torch.from_numpy(value).to(device)
                state.stats[key] = (t, rstd) if what == "mean" else (mean, t)
            elif kind == "kv":
                state.kv[rest] = torch.from_numpy(value).to(device, dtype)
        return state


class StatNorm(torch.nn.Module):
    """A GroupNorm that uses the owner's frozen global statistics (or collects them, or runs natively)."""

    def __init__(self, norm: torch.nn.GroupNorm, owner: TiledNet, key: str) -> None:
        super().__init__()
        self.norm, self.key = norm, key
        object.__setattr__(self, "_owner", owner)  # not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner = self._owner
        state = owner.state
        g = self.norm.num_groups
        if state is None or state.mode == "native":
            if owner.capture is not None:  # one whole-input pass: its own statistics are the global ones
                v = x.double().reshape(x.shape[0], g, -1)
                mean, var = v.mean((0, 2)), v.var((0, 2), unbiased=False)
                owner.capture.stats[self.key] = (mean.float(), (1.0 / torch.sqrt(var + self.norm.eps)).float())
            return self.norm(x)
        if self.key not in state.stats:
            if not owner.collecting:
                raise RuntimeError(f"GroupNorm {self.key} has no statistics")
            owner.collect(self.key, x, g)
            raise _Stop()
        mean, rstd = state.stats[self.key]
        b, c = x.shape[:2]
        y = x.reshape(b, g, -1)
        y = ((y - mean.to(y.dtype)[None, :, None]) * rstd.to(y.dtype)[None, :, None]).reshape(x.shape)
        shape = (1, c) + (1,) * (x.ndim - 2)
        if self.norm.affine:
            y = y * self.norm.weight.reshape(shape) + self.norm.bias.reshape(shape)
        return y


class Checkpoint(torch.nn.Module):
    """A block of the net (conv_in, a resnet, the attention, an up/downsampler) whose output the statistics
    pass keeps per statistics tile, so that the next round resumes after it instead of from the input."""

    def __init__(self, inner: torch.nn.Module, owner: TiledNet) -> None:
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "_owner", owner)

    def forward(self, *args, **kwargs):
        return self._owner.checkpoint(self.inner, args, kwargs)


class GlobalAttention:
    """Attention processor for a VAE mid-block: the tile's queries against global keys/values."""

    def __init__(self, owner: TiledNet, key: str, native: Any) -> None:
        self.owner, self.key, self.native = owner, key, native

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        owner = self.owner
        state = owner.state
        if state is None or state.mode == "native":
            if owner.capture is not None:  # one whole-input pass: keys and values of every position
                b, c, h, w = hidden_states.shape
                normed = attn.group_norm(hidden_states) if attn.group_norm is not None else hidden_states
                tokens = normed[0].reshape(c, h * w).t()
                owner.capture.kv[f"{self.key}/k"], owner.capture.kv[f"{self.key}/v"] = attn.to_k(tokens), attn.to_v(tokens)
            return self.native(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        b, c, h, w = hidden_states.shape
        if f"{self.key}/k" not in state.kv:
            if not owner.collecting:
                raise RuntimeError(f"attention {self.key} has no keys/values")
            owner.collect_tokens(self.key, hidden_states)
            if attn.group_norm is not None:
                attn.group_norm(hidden_states)  # collects its statistics and stops (they are missing too)
            raise _Stop()
        normed = attn.group_norm(hidden_states) if attn.group_norm is not None else hidden_states
        tokens = normed.reshape(b, c, h * w).transpose(1, 2)
        query = attn.to_q(tokens)
        key = state.kv[f"{self.key}/k"].to(query.dtype)[None]
        value = state.kv[f"{self.key}/v"].to(query.dtype)[None]
        heads = attn.heads
        d = key.shape[-1] // heads
        query = query.view(b, -1, heads, d).transpose(1, 2)
        key = key.view(1, -1, heads, d).transpose(1, 2).expand(b, -1, -1, -1)
        value = value.view(1, -1, heads, d).transpose(1, 2).expand(b, -1, -1, -1)
        out = F.scaled_dot_product_attention(query, key, value)
        out = out.transpose(1, 2).reshape(b, -1, heads * d).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class TiledNet:
    """One half of a VAE (encoder or decoder) run tile by tile with halos and frozen global quantities."""

    def __init__(self, module: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor], *, up: int, down: int,
                 in_channels: int, device: torch.device, dtype: torch.dtype, name: str, fingerprint: str = "") -> None:
        self.fingerprint = fingerprint or str(id(module))
        self.module, self.fn, self.up, self.down = module, fn, up, down
        self.in_channels, self.device, self.dtype, self.name = in_channels, device, dtype, name
        self.state: NetState | None = None
        self.collecting = False
        self.capture: NetState | None = None
        self.cache_bytes = 2 << 30      # statistics pass: kept activations (one per statistics tile) at most
        self._cache: dict[int, tuple[int, torch.Tensor]] = {}
        self._cached = 0
        self._ck = 0
        self._tile_id: int | None = None
        self.max_input: tuple[int, int] = (0, 0)   # largest (h, w) ever fed to the net (input cells)
        self._tile: _Tile | None = None
        self._acc: dict[str, list] = {}
        self._tokens: dict[str, Any] = {}
        self._stride = 1
        self._full = (0, 0)
        self.norms: list[str] = []
        self._modules_by_key: dict[str, torch.nn.Module] = {}
        self.attentions: list[str] = []
        self._install()
        self._rf: int | None = None

    @property
    def receptive_field(self) -> int:
        """Measured on first use (`measure_receptive_field`), in input cells; remembered per weights file
        in this process (a second load of the same VAE does not measure again)."""
        if self._rf is None:
            key = (self.fingerprint, self.name, str(self.device), str(self.dtype))
            with _RF_LOCK:
                if key not in _RF_CACHE:
                    _RF_CACHE[key] = self.measure_receptive_field()
                self._rf = _RF_CACHE[key]
        return self._rf

    @property
    def halo(self) -> int:
        """The tile halo: the receptive field rounded up to whole `down` cells (encoder: 8 px)."""
        return -(-self.receptive_field // self.down) * self.down

    # Installing the wrappers -----------------------------------------------------------------------
    def _install(self) -> None:
        from diffusers.models.attention_processor import Attention, AttnProcessor2_0

        for name, mod in list(self.module.named_modules()):
            for child_name, child in list(mod.named_children()):
                full = f"{name}.{child_name}" if name else child_name
                if isinstance(child, torch.nn.GroupNorm):
                    wrapped = StatNorm(child, self, full)
                    setattr(mod, child_name, wrapped)
                    self.norms.append(full)
                    self._modules_by_key[full] = wrapped
        for name, mod in self.module.named_modules():
            if isinstance(mod, Attention):
                mod.set_processor(GlobalAttention(self, name, AttnProcessor2_0()))
                self.attentions.append(name)
                self._modules_by_key[name] = mod
        if self.norms:  # checkpoints in the order the forward calls them (see `checkpoint`)
            from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D

            kinds = (ResnetBlock2D, Attention, Upsample2D, Downsample2D)
            for name, mod in list(self.module.named_modules()):
                for child_name, child in list(mod.named_children()):
                    if isinstance(child, kinds) or (mod is self.module and child_name == "conv_in"):
                        setattr(mod, child_name, Checkpoint(child, self))

    def checkpoint(self, inner: torch.nn.Module, args, kwargs):
        """Run a checkpointed block. In the statistics pass, blocks are numbered in call order per tile;
        a tile whose block k finished in an earlier round returns that output for blocks 0..k (the
        blocks between are not evaluated: only the last one's output is used, by block k + 1)."""
        if not self.collecting or self._tile_id is None:
            return inner(*args, **kwargs)
        k, self._ck = self._ck, self._ck + 1
        cached = self._cache.get(self._tile_id)
        if cached is not None and k <= cached[0]:
            return cached[1]
        out = inner(*args, **kwargs)  # may raise _Stop: the cache stays at the last finished block
        size = out.numel() * out.element_size()
        old = 0 if cached is None else cached[1].numel() * cached[1].element_size()
        if self._cached - old + size <= self.cache_bytes:
            self._cache[self._tile_id] = (k, out)
            self._cached += size - old
        return out

    @property
    def is_local(self) -> bool:
        """No GroupNorm and no attention (TAESD/TAEF1): tiles need only the halo."""
        return not self.norms and not self.attentions

    # Running one tile ---------------------------------------------------------------------------------
    def _run(self, x: torch.Tensor, tile: _Tile, tile_id: int | None = None) -> torch.Tensor | None:
        self._tile, self._tile_id, self._ck = tile, tile_id, 0
        h, w = x.shape[-2:]
        self.max_input = (max(self.max_input[0], h), max(self.max_input[1], w))
        try:
            with torch.no_grad():
                # contiguous: a strided view can take another conv algorithm (other rounding) than the
                # contiguous block a zarr read gives, and tiled == in-memory must hold to the bit
                return self.fn(x[None].to(self.device, self.dtype).contiguous())[0]
        except _Stop:
            return None
        finally:
            self._tile, self._tile_id = None, None

    def _input_box(self, box: Box, size: tuple[int, int], halo: int) -> Box:
        y0, y1, x0, x1 = box
        return max(0, y0 - halo), min(size[0], y1 + halo), max(0, x0 - halo), min(size[1], x1 + halo)

    def run_box(self, read: Reader, size: tuple[int, int], box: Box, state: NetState | None,
                halo: int | None = None) -> torch.Tensor:
        """The net's output on `box` (input cells) of an input of `size`, from `read` with the halo."""
        halo = self.halo if halo is None else halo
        ib = self._input_box(box, size, halo)
        x = read(*ib)
        core = (box[0] - ib[0], box[1] - ib[0], box[2] - ib[2], box[3] - ib[2])
        self.state = state
        try:
            y = self._run(x, _Tile((ib[0], ib[2]), (ib[1] - ib[0], ib[3] - ib[2]), core))
        finally:
            self.state = None
        u, d = self.up, self.down
        return y[:, core[0] * u // d:core[1] * u // d, core[2] * u // d:core[3] * u // d].float()

    # The statistics pass -----------------------------------------------------------------------------
    def _crop(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The core of the running tile in an activation x (B, C, h, w), and its global origin."""
        t = self._tile
        hh, ww = x.shape[-2:]
        (h, w), (cy0, cy1, cx0, cx1) = t.size, t.core
        if (cy0 * hh) % h or (cy1 * hh) % h or (cx0 * ww) % w or (cx1 * ww) % w:
            raise RuntimeError(f"tile core {t.core} does not map onto a {hh}x{ww} activation of a {h}x{w} input")
        r0, r1, c0, c1 = cy0 * hh // h, cy1 * hh // h, cx0 * ww // w, cx1 * ww // w
        return x[..., r0:r1, c0:c1], ((t.origin[0] + cy0) * hh // h, (t.origin[1] + cx0) * ww // w)

    def collect(self, key: str, x: torch.Tensor, groups: int) -> None:
        core, _ = self._crop(x)
        v = core.double().reshape(core.shape[0], groups, -1)
        acc = self._acc.setdefault(key, [0.0, 0.0, 0])
        acc[0] = acc[0] + v.sum((0, 2))
        acc[1] = acc[1] + (v * v).sum((0, 2))
        acc[2] += v.shape[0] * v.shape[2]

    def collect_tokens(self, key: str, x: torch.Tensor) -> None:
        """Keep the attention input at the positions of the global stride grid that fall in this tile's core."""
        core, (gy, gx) = self._crop(x)
        s = self._stride
        ys = [i for i in range(core.shape[-2]) if (gy + i) % s == 0]
        xs = [j for j in range(core.shape[-1]) if (gx + j) % s == 0]
        if not ys or not xs:
            return
        buf = self._tokens.get(key)
        if buf is None:
            # activation size at this layer = full input size * (activation / tile input)
            hh, ww = x.shape[-2:]
            fh, fw = self._full[0] * hh // self._tile.size[0], self._full[1] * ww // self._tile.size[1]
            buf = self._tokens[key] = torch.zeros(x.shape[1], -(-fh // s), -(-fw // s), dtype=torch.float32)
        sel = core[0][:, ys][:, :, xs].float().cpu()
        buf[:, (gy + ys[0]) // s:(gy + ys[-1]) // s + 1, (gx + xs[0]) // s:(gx + xs[-1]) // s + 1] = sel

    def prepare(self, read: Reader, size: tuple[int, int], *, stats_tile: int, max_stat_tiles: int,
                max_tokens: int, progress: Callable[[int, int], None] | None = None,
                halo: int | None = None) -> NetState:
        """Global GroupNorm statistics and attention keys/values of this net over an input of `size`."""
        state = NetState()
        if self.is_local:
            return state
        halo = self.halo if halo is None else halo  # (measured first: the measurement runs a pass of its own)
        boxes = stat_boxes(size, stats_tile * self.down, max_stat_tiles)
        # the attention runs at the latent resolution: the decoder's input, the encoder's output
        latent = size[0] * size[1] if self.down == 1 else (size[0] // self.down) * (size[1] // self.down)
        self._stride = max(1, math.ceil(math.sqrt(latent / max_tokens)))
        if len(boxes) == 1 and boxes[0] == (0, size[0], 0, size[1]) and self._stride == 1:
            return self._prepare_whole(read(0, size[0], 0, size[1]))
        self._full = size
        self.state, self.collecting = state, True
        rounds = len(self.norms) + len(self.attentions)
        try:
            for r in range(rounds + 1):
                self._acc, self._tokens = {}, {}
                stopped = False
                for i, box in enumerate(boxes):
                    ib = self._input_box(box, size, halo)
                    x = read(*ib)
                    core = (box[0] - ib[0], box[1] - ib[0], box[2] - ib[2], box[3] - ib[2])
                    out = self._run(x, _Tile((ib[0], ib[2]), (ib[1] - ib[0], ib[3] - ib[2]), core), i)
                    stopped = stopped or out is None
                if not stopped:
                    break
                for key, (s1, s2, n) in self._acc.items():
                    mean = s1 / n
                    var = (s2 / n - mean * mean).clamp_min(0.0)
                    eps = self._norm(key).eps
                    state.stats[key] = (mean.float().to(self.device), (1.0 / torch.sqrt(var + eps)).float().to(self.device))
                for key, buf in self._tokens.items():
                    attn = self._attention(key)
                    x = buf[None].to(self.device, self.dtype)
                    normed = attn.group_norm(x) if attn.group_norm is not None else x
                    tokens = normed[0].reshape(normed.shape[1], -1).t().contiguous()
                    state.kv[f"{key}/k"], state.kv[f"{key}/v"] = attn.to_k(tokens), attn.to_v(tokens)
                if progress is not None:
                    progress(r + 1, rounds)
        finally:
            self.state, self.collecting = None, False
            self._acc, self._tokens, self._cache, self._cached = {}, {}, {}, 0
        return state

    def _prepare_whole(self, x: torch.Tensor) -> NetState:
        """Exact statistics and keys/values when the whole input is one statistics tile: one native pass."""
        state = NetState()
        self.capture = state
        try:
            self._run(x, _Tile((0, 0), tuple(x.shape[-2:]), (0, x.shape[-2], 0, x.shape[-1])))
        finally:
            self.capture = None
        return state

    def _norm(self, key: str) -> torch.nn.GroupNorm:
        return self._modules_by_key[key].norm

    def _attention(self, key: str):
        return self._modules_by_key[key]

    # Receptive field ------------------------------------------------------------------------------------
    def measure_receptive_field(self, start: int = 40, limit: int = 160) -> int:
        """Largest distance (input cells) from an input impulse to the input footprint of any output it
        changes, with statistics and attention keys/values frozen (so that both are pointwise).

        Convolutions run on torch's own kernels here (oneDNN off), which compute each output from its own
        window: oneDNN may compute a convolution by tiles of a transform (Winograd), whose rounding of outputs
        beyond the true receptive field changes once an input does, and that counted as a dependency
        (measured: a tiny decoder's 18 latent px became 19 on an AVX2 CPU, 18 on an AVX-512 one)."""
        # Only the enable switch (None leaves the others, and warns about nothing). It is process-wide: the
        # lock keeps two measurements from interleaving; the first use of `receptive_field` comes before or
        # after the sampler's thread pools (plan line, encode, decode), so no other convolution runs meanwhile.
        with _RF_LOCK:
            previous = torch.backends.mkldnn.set_flags(False, None, None, None)[0]
            try:
                return self._measure_receptive_field(start, limit)
            finally:
                torch.backends.mkldnn.set_flags(previous, None, None, None)

    def _measure_receptive_field(self, start: int, limit: int) -> int:
        n = start
        gen = torch.Generator().manual_seed(0)
        while True:
            side = n * self.down
            base = (torch.randn(self.in_channels, side, side, generator=gen) * 0.5).clamp(-1, 1)
            size = (side, side)
            read = lambda y0, y1, x0, x1, b=base: b[:, y0:y1, x0:x1]  # noqa: E731
            state = self._prepare_whole(base)
            box = (0, side, 0, side)
            y0 = self.run_box(read, size, box, state, halo=0)
            c = (n // 2) * self.down + self.down // 2
            diff = torch.zeros(())
            for bump in (1.0, -1.0):  # both signs: a ReLU may pass one and not the other
                bumped = base.clone()
                bumped[:, c, c] += bump
                read1 = lambda y0, y1, x0, x1, b=bumped: b[:, y0:y1, x0:x1]  # noqa: E731
                diff = torch.maximum(diff, (self.run_box(read1, size, box, state, halo=0) - y0).abs().amax(0))
            tol = max(1e-9, 1e-7 * float(diff.max()))
            rows = torch.nonzero(diff.amax(1) > tol).flatten().tolist()
            cols = torch.nonzero(diff.amax(0) > tol).flatten().tolist()
            if not rows or not cols:
                raise RuntimeError(f"{self.name}: an input impulse changed nothing (a degenerate network?)")
            def dist(idx: list[int]) -> int:
                # output cell o covers input cells [o*d/u, (o+1)*d/u)
                best = 0
                for o in (idx[0], idx[-1]):
                    lo, hi = o * self.down // self.up, ((o + 1) * self.down - 1) // self.up
                    best = max(best, lo - c, c - hi, 0)
                return best
            rf = max(dist(rows), dist(cols))
            touches = rows[0] == 0 or cols[0] == 0 or rows[-1] == diff.shape[0] - 1 or cols[-1] == diff.shape[1] - 1
            if not touches:
                return rf
            if n >= limit:
                raise RuntimeError(f"{self.name}: receptive field larger than {limit} cells")
            n *= 2


def stat_boxes(size: tuple[int, int], tile: int, max_tiles: int) -> list[Box]:
    """The statistics tiles: a fixed grid of `tile` (input cells), all of it when it has at most
    `max_tiles` tiles, else the centre tile of each of ~max_tiles near-equal strata (deterministic)."""
    h, w = size
    ny, nx = -(-h // tile), -(-w // tile)
    grid = [(y * tile, min(h, (y + 1) * tile), x * tile, min(w, (x + 1) * tile)) for y in range(ny) for x in range(nx)]
    if ny * nx <= max_tiles:
        return grid
    ky = max(1, min(ny, round(math.sqrt(max_tiles * ny / nx))))
    kx = max(1, min(nx, max_tiles // ky))
    picks = []
    for a in range(ky):
        ry = (a * ny // ky + ((a + 1) * ny // ky - 1)) // 2
        for b in range(kx):
            rx = (b * nx // kx + ((b + 1) * nx // kx - 1)) // 2
            picks.append(grid[ry * nx + rx])
    return picks


class TiledCodec:
    """A `VAECodec` with a tiled encoder and decoder (see the module docstring)."""

    def __init__(self, codec: VAECodec) -> None:
        self.codec = codec
        f = codec.factor
        self.decoder = TiledNet(codec.decoder, lambda z: codec.decode_net(z), up=f, down=1,
                                in_channels=codec.latent_channels, device=codec.device, dtype=codec.dtype, name="decoder",
                                fingerprint=codec.fingerprint)
        self.encoder = TiledNet(codec.encoder, lambda x: codec.encode_net(x), up=1, down=f,
                                in_channels=3, device=codec.device, dtype=codec.dtype, name="encoder",
                                fingerprint=codec.fingerprint)

    def decode_state(self, z: torch.Tensor, *, stats_tile: int = 128, max_stat_tiles: int = 16,
                     max_tokens: int = 16384) -> NetState:
        """The decoder's frozen global quantities for latents z (C, h, w)."""
        read = lambda y0, y1, x0, x1: z[:, y0:y1, x0:x1]  # noqa: E731
        return self.decoder.prepare(read, tuple(z.shape[-2:]), stats_tile=stats_tile, max_stat_tiles=max_stat_tiles,
                                    max_tokens=max_tokens)

    # Whole images in memory (vae-check, the in-memory sampler); the streamed versions are in stream.py.
    def decode(self, z: torch.Tensor, *, tile: int = 64, stats_tile: int = 128, max_stat_tiles: int = 16,
               max_tokens: int = 16384, state: NetState | None = None, halo: int | None = None) -> torch.Tensor:
        """Scaled latents (C, h, w) -> pixels (3, f*h, f*w) in [-1, 1], tile by tile."""
        size = tuple(z.shape[-2:])
        read = lambda y0, y1, x0, x1: z[:, y0:y1, x0:x1]  # noqa: E731
        if state is None:
            state = self.decode_state(z, stats_tile=stats_tile, max_stat_tiles=max_stat_tiles, max_tokens=max_tokens)
        f = self.codec.factor
        out = torch.empty(3, size[0] * f, size[1] * f)
        for y0 in range(0, size[0], tile):
            for x0 in range(0, size[1], tile):
                box = (y0, min(size[0], y0 + tile), x0, min(size[1], x0 + tile))
                out[:, box[0] * f:box[1] * f, box[2] * f:box[3] * f] = \
                    self.decoder.run_box(read, size, box, state, halo).clamp(-1, 1).cpu()
        return out

    def encode(self, x: torch.Tensor, *, tile: int = 64, stats_tile: int = 128, max_stat_tiles: int = 16,
               max_tokens: int = 16384) -> torch.Tensor:
        """Pixels (3, H, W) in [-1, 1] (H, W multiples of the factor) -> scaled latents (C, H/f, W/f)."""
        f = self.codec.factor
        size = tuple(x.shape[-2:])
        if size[0] % f or size[1] % f:
            raise ValueError(f"encode needs sides that are multiples of {f}, got {size}")
        read = lambda y0, y1, x0, x1: x[:, y0:y1, x0:x1]  # noqa: E731
        state = self.encoder.prepare(read, size, stats_tile=stats_tile, max_stat_tiles=max_stat_tiles,
                                     max_tokens=max_tokens)
        out = torch.empty(self.codec.latent_channels, size[0] // f, size[1] // f)
        step = tile * f
        for y0 in range(0, size[0], step):
            for x0 in range(0, size[1], step):
                box = (y0, min(size[0], y0 + step), x0, min(size[1], x0 + step))
                out[:, box[0] // f:box[1] // f, box[2] // f:box[3] // f] = self.encoder.run_box(read, size, box, state).cpu()
        return out
