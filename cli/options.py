"""Options shared by several commands (declared once here, used by `run` and `vae-check`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

VaePath = Annotated[Optional[Path], typer.Option(
    "--vae", help="VAE weights: a diffusers folder (config.json + weights, or a pipeline folder with vae/), "
                  "or one .safetensors file with --vae-config. Local files only.")]
VaeConfig = Annotated[Optional[str], typer.Option(
    "--vae-config", help="Config of a single .safetensors VAE file: a shipped one (flux, sd, sdxl, taef1, taesd) "
                         "or a folder with config.json.")]
Codec = Annotated[Optional[str], typer.Option(
    "--codec", help="pixel (default: sample the pixels) | vae (sample a VAE's latents, decode in tiles; needs --vae)")]
