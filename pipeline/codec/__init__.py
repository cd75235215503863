"""Codecs between pixels and the space the sampler works in: `pixel` (identity) or `vae` (a diffusers VAE,
loaded from local files, encoded and decoded in tiles with halos and global statistics)."""

from .vae import CodecError, VAECodec, load_vae, shipped_configs

__all__ = ["CodecError", "VAECodec", "load_vae", "shipped_configs"]
