"""`sidpipe vae-check`: a VAE's round-trip quality on a reference and its decode speed, before a long run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from sidpipe.errors import SidpipeError

from . import app, fail
from .options import VaeConfig, VaePath


@app.command("vae-check")
def vae_check(
    reference: Annotated[Path, typer.Argument(help="Reference image (PNG, JPEG or TIFF).", show_default=False)],
    vae: VaePath = None,
    vae_config: VaeConfig = None,
    max_side: Annotated[int, typer.Option("--max-side", help="Check a centre crop of at most this many px a side.")] = 1024,
    tile: Annotated[int, typer.Option(help="Decode tile side in latent px (encode: the same in 8-px cells).")] = 64,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Encode and decode (a centre crop of) REF with the VAE: round-trip PSNR and decode throughput.

    The PSNR is the ceiling of what a latent run can reproduce of this image; the throughput tells what
    decoding a large output will cost on this machine.
    """
    import numpy as np
    import torch

    from sidpipe.codec import load_vae
    from sidpipe.codec.tiled import TiledCodec
    from sidpipe.codec.vae import as_rgb, latent_crop
    from sidpipe.devices import resolve_device
    from sidpipe.io.lazy import open_image

    try:
        if vae is None:
            raise SidpipeError("vae-check needs --vae PATH")
        if max_side < 64 or tile < 8:
            raise SidpipeError("--max-side must be >= 64 and --tile >= 8")
        if not reference.is_file():
            raise SidpipeError(f"input not found: {reference}")
        codec = load_vae(vae, vae_config, resolve_device(device))
        f = codec.factor
        with open_image(reference) as image:
            _, h, w = image.shape
            y0, y1, x0, x1 = latent_crop(h, w, f, max_side)
            ch, cw = y1 - y0, x1 - x0
            x = as_rgb(torch.from_numpy(np.ascontiguousarray(image.read(y0, y1, x0, x1))))
        typer.echo(f"VAE: {codec.describe()}")
        started = time.perf_counter()
        tiled = TiledCodec(codec)
        typer.echo(f"receptive field (measured by an impulse, {time.perf_counter() - started:.1f} s): decoder "
                   f"{tiled.decoder.receptive_field} latent px, encoder {tiled.encoder.receptive_field} px")
        crop = "" if (ch, cw) == (h, w) else f" (centre crop of {w}x{h})"
        typer.echo(f"image: {cw}x{ch} px{crop} -> latent {cw // f}x{ch // f}x{codec.latent_channels}")
        t0 = time.perf_counter()
        z = tiled.encode(x, tile=tile)
        t1 = time.perf_counter()
        y = tiled.decode(z, tile=tile)
        t2 = time.perf_counter()
        mse = float(((y - x) / 2).double().pow(2).mean())
        psnr = float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)
        mp = ch * cw / 1e6
        typer.echo(f"round trip PSNR: {psnr:.2f} dB (RGB in [0, 1]; the most a latent run can keep of this image)")
        typer.echo(f"encode: {t1 - t0:.2f} s ({mp / (t1 - t0):.3f} MP/s); decode: {t2 - t1:.2f} s "
                   f"({mp / (t2 - t1):.3f} MP/s, statistics pass included) on {codec.device.type}, "
                   f"{torch.get_num_threads()} threads")
    except SidpipeError as exc:
        fail(str(exc))
