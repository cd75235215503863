"""Print measured VAE encode/decode throughput on this machine (a benchmark, not a test).

Usage: python benchmarks/bench_vae.py [--model flux|taef1] [--latent 64] [--tile 64] [--repeats 2]

The VAE is built from the config shipped in `sidpipe.configs.vae` with *random* weights (the cost does
not depend on the weights; the images are noise and are not shown), saved to a temporary folder and
loaded through the user path (`load_vae`). Figures printed, all measured in this run:

  * fp32 matmul GFLOP/s (torch, 2048^3), the machine's reference speed in this run;
  * whole-image decode and encode (one plain call): seconds, MP/s, and the effective GFLOP/s from the
    multiply-adds counted by hooks on every Conv2d / Linear plus the attention's two products
    (2 FLOP per MAC), with the ratio to the matmul figure;
  * the tiled decode and encode `sidpipe run` uses (statistics pass included): seconds and MP/s;
  * the measured receptive fields, and the process's peak RSS.

The machine may be shared with other jobs: run it more than once and quote the command with the figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch


def matmul_gflops(n: int = 2048, repeats: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def count_macs(module: torch.nn.Module, run) -> int:
    """Multiply-adds of every Conv2d and Linear called during `run()`, plus the attention products."""
    from diffusers.models.attention_processor import Attention

    total = [0]

    def conv_hook(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        total[0] += out.numel() * k

    def linear_hook(mod, inp, out):
        total[0] += out.numel() * mod.in_features

    def attn_hook(mod, inp, out):
        x = inp[0]
        n = x.shape[-2] * x.shape[-1] if x.ndim == 4 else x.shape[1]
        c = x.shape[1] if x.ndim == 4 else x.shape[2]
        total[0] += 2 * n * n * c  # Q K^T and the weighted sum of V

    hooks = []
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, Attention):
            hooks.append(m.register_forward_hook(attn_hook))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="flux", help="a shipped VAE config: flux, sd, sdxl, taef1, taesd")
    parser.add_argument("--latent", type=int, default=64, help="latent side (output side = 8x)")
    parser.add_argument("--tile", type=int, default=64, help="decode tile (latent px) of the tiled decode")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the warm-up (best is printed)")
    args = parser.parse_args()

    import diffusers

    from sidpipe.codec import load_vae
    from sidpipe.codec.tiled import TiledCodec

    diffusers.utils.logging.set_verbosity_error()
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {torch.get_num_threads()} threads")
    gf = matmul_gflops()
    print(f"fp32 matmul 2048^3: {gf:.1f} GFLOP/s")
    cfg = json.loads((resources.files("sidpipe.configs.vae") / f"{args.model}.json").read_text())
    cls = getattr(diffusers, cfg["_class_name"])
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cls.from_config(cfg).save_pretrained(tmp)
        codec = load_vae(tmp)
    params = sum(p.numel() for p in codec.model.parameters())
    print(f"{args.model}: {codec.describe().split(' from ')[0]}, {params / 1e6:.1f} M parameters (random weights)")
    n = args.latent
    z = torch.randn(codec.latent_channels, n, n)
    mp = (8 * n) ** 2 / 1e6
    with torch.no_grad():
        macs = count_macs(codec.decoder, lambda: codec.decode_net(z[None]))  # (also the warm-up call)
        sec = min(_timed(lambda: codec.decode_net(z[None])) for _ in range(args.repeats))
    print(f"decode whole {8 * n}x{8 * n}: {sec:.2f} s, {mp / sec:.4f} MP/s, {macs / (8 * n) ** 2 / 1e6:.2f} M MAC/px, "
          f"{2 * macs / sec / 1e9:.1f} GFLOP/s = {2 * macs / sec / 1e9 / gf:.0%} of the matmul")
    x = torch.rand(3, 8 * n, 8 * n) * 2 - 1
    with torch.no_grad():
        emacs = count_macs(codec.encoder, lambda: codec.encode_net(x[None]))  # (also the warm-up call)
        esec = min(_timed(lambda: codec.encode_net(x[None])) for _ in range(args.repeats))
    print(f"encode whole: {esec:.2f} s, {mp / esec:.4f} MP/s, {emacs / (8 * n) ** 2 / 1e6:.2f} M MAC/px, "
          f"{2 * emacs / esec / 1e9:.1f} GFLOP/s = {2 * emacs / esec / 1e9 / gf:.0%} of the matmul")
    t0 = time.perf_counter()
    tiled = TiledCodec(codec)
    rf_dec = tiled.decoder.receptive_field
    rf_enc = tiled.encoder.receptive_field
    print(f"receptive fields (impulse): decoder {rf_dec} latent px, encoder {rf_enc} px "
          f"({time.perf_counter() - t0:.1f} s)")
    sec = _timed(lambda: tiled.decode(z, tile=args.tile))
    print(f"decode tiled (tile {args.tile} + halo {tiled.decoder.halo}, statistics pass included): {sec:.2f} s, "
          f"{mp / sec:.4f} MP/s")
    sec = _timed(lambda: tiled.encode(x, tile=args.tile))
    print(f"encode tiled (halo {tiled.encoder.halo} px, statistics pass included): {sec:.2f} s, {mp / sec:.4f} MP/s")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
