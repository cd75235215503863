"""sidpipe: training-free single-image diffusion (closed-form patch denoiser, coarse to fine)."""

__version__ = "0.1.0"
