"""Latent mode through the run directory: the reference encoded in tiles, the result decoded in tiles.

    latent.zarr/latent     the reference's latents (C, h, w), encoded tile by tile (encode-state.npz)
    ref.zarr/0, 1, ...     the latent reference pyramid, built from latent.zarr like a pixel reference
    decoded.zarr/image     x_{0,0} decoded (3, H, W), one whole chunk per decode tile (decode-state.npz)

The frozen global quantities of the encoder and of the decoder (`NetState`: GroupNorm statistics,
attention keys/values) are computed once and saved (temp file + rename) before any tile uses them;
every tile task writes whole chunks and then its marker, so a run killed at any moment (kill -9 in the
middle of the decode included) resumes to the same bytes. The decoded array is then streamed into the
BigTIFF / OME-Zarr / PNG writers exactly like the pixel path's result: never the whole image in memory.

`encode_reference` and `decode_result` compute what `TiledCodec.encode` and `TiledCodec.decode` compute
in memory (same tiles, same statistics tiles, same order of sums), so a tiled latent run equals an
in-memory one bit for bit.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
import zarr

from ..errors import Interrupted
from ..io.write import write_bytes_atomic
from ..store import RunDir
from .tiled import NetState, TiledCodec, TiledNet
from .vae import CodecError, as_rgb

Progress = Callable[[dict], None]


class ArraySource:
    """A region source over a zarr or numpy array (C, H, W) of any channel count (float32)."""

    def __init__(self, array) -> None:
        self.array = array
        c, h, w = array.shape
        self.shape = (c, h, w)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.ascontiguousarray(self.array[:, y0:y1, x0:x1], dtype=np.float32)


def _reader(source) -> Callable[[int, int, int, int], torch.Tensor]:
    def read(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        return as_rgb(torch.from_numpy(source.read(y0, y1, x0, x1)))
    return read


def save_state(path, state: NetState) -> None:
    buf = io.BytesIO()
    np.savez(buf, **state.to_arrays())
    write_bytes_atomic(path, buf.getvalue())


def load_state(path, net: TiledNet) -> NetState:
    with np.load(path) as data:
        return NetState.from_arrays({k: data[k] for k in data.files}, net.device, net.dtype)


def _stage_state(run: RunDir, name: str, net: TiledNet, make: Callable[[], NetState]) -> NetState:
    path = run.path / f"{name}-state.npz"
    if run.done(f"{name}-state"):
        return load_state(path, net)
    state = make()
    save_state(path, state)
    run.mark(f"{name}-state")
    return load_state(path, net)  # what a resumed run will read: the very same numbers


def boxes(size: tuple[int, int], tile: int) -> list[tuple[int, int, int, int]]:
    h, w = size
    return [(y, min(h, y + tile), x, min(w, x + tile)) for y in range(0, h, tile) for x in range(0, w, tile)]


def encode_reference(run: RunDir, source, tiled: TiledCodec, *, crop: tuple[int, int, int, int], tile: int,
                     stats_tile: int, max_stat_tiles: int, max_tokens: int, stop: Callable[[], None],
                     progress: Progress | None = None) -> zarr.Array:
    """Encode `source` rows crop[0]:crop[1], columns crop[2]:crop[3] (multiples of the factor) into
    latent.zarr/latent, tile by tile (tile in latent px), resumable."""
    f = tiled.codec.factor
    y0, y1, x0, x1 = crop
    size = (y1 - y0, x1 - x0)
    read = _reader(CropSource(source, (y0, x0), size))
    net = tiled.encoder
    state = _stage_state(run, "encode", net, lambda: net.prepare(
        read, size, stats_tile=stats_tile, max_stat_tiles=max_stat_tiles, max_tokens=max_tokens))
    group = zarr.open_group(run.path / "latent.zarr", mode="a")
    lat = (size[0] // f, size[1] // f)
    c = tiled.codec.latent_channels
    if "latent" not in group:
        group.create_array("latent", shape=(c, *lat), chunks=(c, tile, tile), dtype="float32", fill_value=0.0)
    array = group["latent"]
    if not run.done("encode"):
        finished = run.tiles_done("encode")
        todo = [b for b in boxes(lat, tile) if f"{b[0]}_{b[2]}" not in finished]
        for n, b in enumerate(todo):
            stop()
            pixel_box = (b[0] * f, b[1] * f, b[2] * f, b[3] * f)
            array[:, b[0]:b[1], b[2]:b[3]] = net.run_box(read, size, pixel_box, state).cpu().numpy()
            run.mark_tile("encode", f"{b[0]}_{b[2]}")
            if progress is not None:
                progress({"event": "encode", "done": n + 1, "total": len(todo)})
        run.mark("encode")
    return array


class CropSource:
    """The rectangle of a region source that starts at `offset` and has `size` (h, w)."""

    def __init__(self, source, offset: tuple[int, int], size: tuple[int, int]) -> None:
        self.source, self.offset = source, offset
        self.shape = (source.shape[0], *size)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        oy, ox = self.offset
        return self.source.read(oy + y0, oy + y1, ox + x0, ox + x1)


def decode_result(run: RunDir, latents: zarr.Array, tiled: TiledCodec, *, out_size: tuple[int, int], tile: int,
                  stats_tile: int, max_stat_tiles: int, max_tokens: int, stop: Callable[[], None],
                  progress: Progress | None = None) -> zarr.Array:
    """Decode `latents` (C, h, w) into decoded.zarr/image (3, H, W) = the top-left `out_size` of the
    decoded image, tile by tile (tile in latent px; one whole chunk per tile), resumable."""
    f = tiled.codec.factor
    c, h, w = latents.shape
    if c != tiled.codec.latent_channels:
        raise CodecError(f"the run holds {c}-channel latents but the VAE has {tiled.codec.latent_channels}")
    H, W = out_size
    if math.ceil(H / f) != h or math.ceil(W / f) != w:
        raise ValueError(f"output {W}x{H} does not match latents {w}x{h}")
    read = _reader(ArraySource(latents))
    net = tiled.decoder
    state = _stage_state(run, "decode", net, lambda: net.prepare(
        read, (h, w), stats_tile=stats_tile, max_stat_tiles=max_stat_tiles, max_tokens=max_tokens))
    group = zarr.open_group(run.path / "decoded.zarr", mode="a")
    if "image" not in group:
        group.create_array("image", shape=(3, H, W), chunks=(3, tile * f, tile * f), dtype="float32", fill_value=0.0)
    array = group["image"]
    if not run.done("decode"):
        finished = run.tiles_done("decode")
        todo = [b for b in boxes((h, w), tile) if f"{b[0]}_{b[2]}" not in finished]
        for n, b in enumerate(todo):
            stop()
            y = net.run_box(read, (h, w), b, state).clamp(-1, 1).cpu().numpy()
            py1, px1 = min(H, b[1] * f), min(W, b[3] * f)
            array[:, b[0] * f:py1, b[2] * f:px1] = y[:, :py1 - b[0] * f, :px1 - b[2] * f]
            run.mark_tile("decode", f"{b[0]}_{b[2]}")
            if progress is not None:
                progress({"event": "decode", "done": n + 1, "total": len(todo)})
        run.mark("decode")
    return array


def check_latent_channels(run_dir, channels: int, overwrite: bool) -> None:
    """Refuse to resume a run directory whose arrays hold another channel count than this VAE's latents."""
    import json
    from pathlib import Path

    manifest = Path(run_dir) / "manifest.json"
    if overwrite or not manifest.exists():
        return
    try:
        old = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return  # RunDir.open reports an unreadable manifest
    held = old.get("layout", {}).get("channels")
    if held is not None and held != channels:
        kind = "latents" if "vae" in old.get("identity", {}) else "pixels"
        raise CodecError(f"{run_dir} holds a run with {held}-channel {kind} but this VAE has {channels} latent "
                         "channels; use --overwrite to start over or another --workdir")


def check_stop_flag(flag) -> Callable[[], None]:
    def stop() -> None:
        if flag.is_set():
            raise Interrupted()
    return stop
