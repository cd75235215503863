"""sidpipe: training-free single-image diffusion (closed-form patch denoiser, coarse to fine)."""

from importlib import metadata as _metadata

try:  # single source: the version in pyproject.toml, as the installed distribution's metadata
    __version__ = _metadata.version("sidpipe")
except _metadata.PackageNotFoundError:  # pragma: no cover - imported from an uninstalled source tree
    __version__ = "0+unknown"
