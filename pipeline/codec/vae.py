"""A diffusers VAE (AutoencoderKL or AutoencoderTiny) loaded from local files only, never the network.

`--vae PATH` is one of:

* a diffusers model folder: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (or ``.bin``);
* a pipeline folder holding such a model in ``vae/``;
* a single ``.safetensors`` file, with ``--vae-config NAME|DIR``: NAME is a config shipped in the package
  (``sidpipe.configs.vae``: flux, sd, sdxl, taef1, taesd; configs only, no weights), DIR a folder with a
  ``config.json``. The file may hold diffusers-named tensors or, for AutoencoderKL, the original (LDM /
  Black Forest Labs) names, which diffusers' single-file loader converts.

Latents are *scaled*: z = (mode(enc(x)) - shift) * scale, and decode(z) = dec(z / scale + shift), with
`scaling_factor` and `shift_factor` from the config (FLUX: 0.3611, 0.1159; SD: 0.18215, 0; TAESD/TAEF1
take already scaled latents: 1, 0). Images are (C, H, W) float32 in [-1, 1].

Every problem with the user's files is a `CodecError` with one line of text: a missing folder, a config
without weights, weights whose tensors or shapes do not match the config, a corrupt ``.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import SidpipeError

VAE_CONFIGS = "sidpipe.configs.vae"
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
CLASSES = ("AutoencoderKL", "AutoencoderTiny")


class CodecError(SidpipeError):
    """The VAE's files are missing, unreadable or do not match its config."""


def as_rgb(x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) pixels as the 3 channels a VAE encodes: a gray image repeated, an RGB one as it is."""
    return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def latent_crop(h: int, w: int, factor: int, max_side: int | None = None) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the centred crop of an h x w image (each side at most `max_side`) to whole latent
    pixels of `factor` px; a CodecError when not even one fits."""
    ch, cw = (min(h, max_side), min(w, max_side)) if max_side is not None else (h, w)
    ch, cw = ch // factor * factor, cw // factor * factor
    if min(ch, cw) < factor:
        raise CodecError(f"reference {w}x{h} is smaller than one latent pixel ({factor} px)")
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return y0, y0 + ch, x0, x0 + cw


def shipped_configs() -> dict[str, Any]:
    """Every bundled VAE config, by name (file stem)."""
    root = resources.files(VAE_CONFIGS)
    return {f.name[:-5]: f for f in root.iterdir() if f.name.endswith(".json") and f.is_file()}


def _read_json(path: Any) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CodecError(f"cannot read the VAE config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CodecError(f"the VAE config {path} is not a JSON object")
    return data


def resolve_config(name_or_dir: str) -> dict[str, Any]:
    """`--vae-config`: a shipped config's name, a folder with config.json (or vae/config.json), or a .json file."""
    shipped = shipped_configs()
    if name_or_dir in shipped:
        return _read_json(shipped[name_or_dir])
    path = Path(name_or_dir)
    for candidate in (path, path / "config.json", path / "vae" / "config.json"):
        if candidate.is_file():
            return _read_json(candidate)
    raise CodecError(f"--vae-config {name_or_dir!r} is neither a shipped config ({', '.join(sorted(shipped))}) "
                     "nor a folder with a config.json")


def _model_class(config: dict[str, Any], where: Any):
    import diffusers

    name = config.get("_class_name", "AutoencoderKL")
    if name not in CLASSES:
        raise CodecError(f"{where}: unsupported VAE class {name!r} (supported: {', '.join(CLASSES)})")
    return getattr(diffusers, name)


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a .safetensors header (cheap: the data is not read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise CodecError(f"{path} is not a readable .safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _expected_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = cls.from_config(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_shapes(path: Path, found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    for key, shape in expected.items():
        if key in found and found[key] != shape:
            raise CodecError(f"{path} does not match the VAE config: {key} has shape {list(found[key])}, "
                             f"the config expects {list(shape)}")
    missing = [k for k in expected if k not in found]
    if missing:
        raise CodecError(f"{path} does not match the VAE config: {len(missing)} tensors missing "
                         f"(first: {missing[0]})")


def _fingerprint_files(paths: list[Path]) -> str:
    """Cheap identity of the weight files: names, sizes and a hash of their first and last MiB."""
    h = hashlib.blake2b(digest_size=16)
    for path in paths:
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read(1 << 20))
    return h.hexdigest()


@dataclass
class VAECodec:
    """A loaded VAE and the latent geometry it defines."""

    model: Any
    kind: str                 # "kl" | "tiny"
    latent_channels: int
    factor: int               # pixels per latent pixel per axis (8)
    scale: float
    shift: float
    device: torch.device
    dtype: torch.dtype
    source: str
    fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def decoder(self) -> torch.nn.Module:
        return self.model.decoder

    @property
    def encoder(self) -> torch.nn.Module:
        return self.model.encoder

    def describe(self) -> str:
        name = "AutoencoderKL" if self.kind == "kl" else "AutoencoderTiny"
        return (f"{name} from {self.source}: {self.latent_channels} latent channels, {self.factor}x down, "
                f"scale {self.scale:g}, shift {self.shift:g}, {self.device.type} {str(self.dtype).removeprefix('torch.')}")

    @torch.no_grad()
    def encode_net(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [-1, 1] -> scaled latents (B, C, H/f, W/f), as float32 (posterior mode)."""
        h = self.model.encoder(x.to(self.device, self.dtype))
        if self.kind == "kl":
            if self.model.quant_conv is not None:
                h = self.model.quant_conv(h)
            h = h[:, : self.latent_channels]
        return ((h.float() - self.shift) * self.scale)

    @torch.no_grad()
    def decode_net(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> pixels (B, 3, f*h, f*w), float32 (not clamped)."""
        z = (z.to(self.device, torch.float32) / self.scale + self.shift).to(self.dtype)
        if self.kind == "kl" and self.model.post_quant_conv is not None:
            z = self.model.post_quant_conv(z)
        return self.model.decoder(z).float()


def _codec_dtype(device: torch.device) -> torch.dtype:
    """fp32 on a CPU (deterministic, and AVX2 CPUs have no fast bf16); bf16 on a CUDA device that has it."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_vae(path: str | Path, config: str | None = None, device: str | torch.device = "cpu") -> VAECodec:
    """Load a VAE from local files (see the module docstring). Raises CodecError on any bad input."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: local_files_only is passed everywhere too
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its load-time notices are not the user's problem
    path = Path(path)
    device = torch.device(device)
    if not path.exists():
        raise CodecError(f"--vae {path}: no such file or folder")
    if path.is_dir():
        if config is not None:
            raise CodecError("--vae-config is for a single weights file; a folder brings its own config.json")
        root = path if (path / "config.json").is_file() else path / "vae"
        if not (root / "config.json").is_file():
            raise CodecError(f"--vae {path}: no config.json in it (nor in {path / 'vae'})")
        cfg = _read_json(root / "config.json")
        cls = _model_class(cfg, root / "config.json")
        weights = [root / n for n in WEIGHT_NAMES if (root / n).is_file()]
        if not weights:
            raise CodecError(f"--vae {root}: config.json but no weights ({' or '.join(WEIGHT_NAMES)})")
        if weights[0].suffix == ".safetensors":
            _check_shapes(weights[0], _safetensors_shapes(weights[0]), _expected_shapes(cls, cfg))
        try:
            model = cls.from_pretrained(str(root), local_files_only=True, torch_dtype=torch.float32)
        except Exception as exc:  # diffusers wraps torch/safetensors/IO errors in many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CodecError(f"cannot load the VAE in {root}: {first}") from None
        source, files = str(root), weights[:1]
    else:
        if path.suffix != ".safetensors":
            raise CodecError(f"--vae {path}: expected a diffusers folder or a .safetensors file")
        if config is None:
            raise CodecError(f"--vae {path} is a single weights file: also give --vae-config "
                             f"({', '.join(sorted(shipped_configs()))} or a folder with config.json)")
        cfg = resolve_config(config)
        cls = _model_class(cfg, config)
        found = _safetensors_shapes(path)
        expected = _expected_shapes(cls, cfg)
        if set(expected) <= set(found):
            _check_shapes(path, found, expected)
            model = _from_state_dict(cls, cfg, path)
        elif cls.__name__ == "AutoencoderKL" and any(".down." in k or ".up." in k or "mid.block_1" in k for k in found):
            model = _from_original_file(cls, cfg, path)
        else:
            _check_shapes(path, found, expected)  # raises: names it tensors that are missing
            raise AssertionError("unreachable")
        source, files = str(path), [path]
    kind = "kl" if cls.__name__ == "AutoencoderKL" else "tiny"
    mc = model.config
    if kind == "kl":
        factor = 2 ** (len(mc.block_out_channels) - 1)
    else:
        factor = int(mc.upsampling_scaling_factor) ** (len(mc.decoder_block_out_channels) - 1)
    scale = float(mc.scaling_factor if mc.get("scaling_factor") is not None else 1.0)
    shift = float(mc.shift_factor if mc.get("shift_factor") is not None else 0.0)
    dtype = _codec_dtype(device)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return VAECodec(model=model, kind=kind, latent_channels=int(mc.latent_channels), factor=factor, scale=scale,
                    shift=shift, device=device, dtype=dtype, source=source, fingerprint=_fingerprint_files(files))


def _from_state_dict(cls, cfg: dict[str, Any], path: Path):
    """A model from its config and a diffusers-named .safetensors file."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:
        raise CodecError(f"{path} is not a readable .safetensors file ({type(exc).__name__})") from None
    model = cls.from_config(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise CodecError(f"{path} does not match the VAE config: {len(missing)} tensors missing (first: {missing[0]})")
    return model


def _from_original_file(cls, cfg: dict[str, Any], path: Path):
    """AutoencoderKL from an original-format file (e.g. FLUX's ae.safetensors), converted by diffusers'
    single-file loader against a local config folder (a temporary copy of the config: no hub lookup)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(cfg))
        try:
            return cls.from_single_file(str(path), config=tmp, local_files_only=True, torch_dtype=torch.float32)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CodecError(f"cannot convert {path} with this VAE config: {first}") from None
