"""Deliver a result: its file (TIFF, PNG, JPEG, OME-Zarr) with the working profile or converted to the
press profile, the TIFF flavour (classic or BigTIFF, pyramid or not), and the soft proof."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from ..errors import ConfigError
from . import units
from .bigtiff import RegionSource, build_levels, check_tiff_options, tiff_size_bound, use_bigtiff, write_bigtiff, write_ome_zarr
from .color import PROOF_SIDE, Conversion, output_profile, render_proof, working_profile
from .write import _quantise, encode, save_image, write_bytes_atomic

LEVELS_MIN = 512  # build_levels' default: reduced levels until the long side fits this
_TILE = 512  # TIFF tile side of the output


@dataclass(frozen=True)
class OutputSpec:
    """How a result is written; decided, and checked, before any compute.

    Attributes:
        compression: TIFF compression (zlib | zstd | lzw | jpeg | none).
        bit_depth: 8 or 16 bits per sample.
        dpi: Resolution written to the file, or None.
        icc: The working space's profile, embedded when there is no conversion (None: no profile).
        conversion: Conversion to an output profile while writing, or None.
        bigtiff: "auto", "always" or "never".
        pyramid: Write reduced levels (TIFF SubIFDs).
        proof: Soft-proof JPEG to write, or None.
        gamut_warning: Mark out-of-gamut pixels in the proof.
    """

    compression: str = "zlib"
    bit_depth: int = 8
    dpi: float | None = None
    icc: bytes | None = None
    conversion: Conversion | None = None
    bigtiff: str = "auto"
    pyramid: bool = True
    proof: Path | None = None
    gamut_warning: bool = False


def output_spec(input_path: str | os.PathLike, out: Path, *, size: tuple[int, int], channels: int,
                compression: str = "zlib", bit_depth: int = 8, dpi: float | None = None,
                profile: Path | None = None, intent: str | None = None, bpc: bool = False, bigtiff: str = "auto",
                pyramid: bool = True, proof: Path | None = None, gamut_warning: bool = False,
                size_unit: str | None = None) -> tuple[OutputSpec, str]:
    """Resolve and check the output options of a run whose result is `size` (H, W) with `channels` channels.

    Reads the reference's embedded profile (the working space), loads the output profile, decides
    classic TIFF or BigTIFF from the worst-case file size, and refuses every combination that cannot
    be written, so that nothing is computed for a file that would fail at the end.

    Returns:
        (the spec, one line for the plan: physical size, colour, file flavour, proof).

    Raises:
        ImageError, ConfigError: A bad profile, option or combination (one line each).
    """
    suffix = out.suffix.lower()
    if (intent is not None or bpc) and profile is None:
        raise ConfigError("--intent and --bpc need --output-profile")
    if gamut_warning and proof is None:
        raise ConfigError("--gamut-warning needs --proof")
    if proof is not None:
        if profile is None:
            raise ConfigError("--proof needs --output-profile (it shows the output through that profile)")
        if proof.suffix.lower() not in (".jpg", ".jpeg"):
            raise ConfigError(f"--proof must be a .jpg file, got {proof}")
        if not proof.parent.exists():
            raise ConfigError(f"--proof folder does not exist: {proof.parent}")
    if bit_depth == 16 and suffix in (".jpg", ".jpeg"):
        raise ConfigError("JPEG output is 8-bit only (--bit-depth 16 requested)")
    working, colour = working_profile(input_path, channels)
    conversion = None
    if profile is not None:
        target = output_profile(profile)
        if suffix == ".zarr":
            raise ConfigError("--output-profile writes TIFF, PNG or JPEG, not OME-Zarr")
        if target.space == "CMYK" and suffix not in (".tif", ".tiff"):
            raise ConfigError(f"a CMYK --output-profile needs a .tif output, got {out.name}")
        conversion = Conversion(working, target, Path(profile), intent or "relative", bpc)
        colour += f" -> {target.space} {target.description} ({conversion.intent}{', BPC' if bpc else ''})"
    h, w = size
    parts = [f"output {units.describe(w, h, dpi, size_unit)}" if size_unit and dpi else f"output {w}x{h} px"
             + (f" at {dpi:g} dpi" if dpi else ""), colour]
    spec = OutputSpec(compression, bit_depth, dpi, None if working is None else working.data, conversion, bigtiff,
                      pyramid, proof, gamut_warning)
    if suffix in (".tif", ".tiff"):
        samples = conversion.channels if conversion else channels
        check_tiff_options(compression, bit_depth, samples)
        sizes = level_sizes(h, w) if pyramid else [(h, w)]
        big = use_bigtiff(bigtiff, tiff_size_bound(sizes, samples, bit_depth, _TILE, compression), out)
        parts.append(f"{'BigTIFF' if big else 'classic TIFF'}, {compression}, {bit_depth}-bit, "
                     f"{'pyramid' if pyramid else 'no pyramid'}")
    if proof is not None:
        parts.append(f"proof {proof}{' with gamut warning' if gamut_warning else ''}")
    return spec, "; ".join(parts)


def level_sizes(h: int, w: int, min_size: int = LEVELS_MIN) -> list[tuple[int, int]]:
    """(H, W) of level 0 and the reduced levels `build_levels` makes (halved, rounding up)."""
    sizes = [(h, w)]
    while max(sizes[-1]) > min_size:
        sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    return sizes


def write_result(source: RegionSource, out: Path, spec: OutputSpec, scratch: zarr.Group, *,
                 progress: Callable[[int, int], None] | None = None) -> None:
    """Write `source` (C, H, W) as `out` (format from the suffix) and, if asked, its soft proof.

    TIFF and OME-Zarr are streamed tile by tile (reduced levels are built in `scratch`); PNG and JPEG
    are assembled in memory (small outputs only).
    """
    suffix = out.suffix.lower()
    levels = [source]
    if suffix in (".png", ".jpg", ".jpeg"):
        _, h, w = source.shape
        image = source.read(0, h, 0, w)
        if spec.conversion is None:
            save_image(out, image, bit_depth=spec.bit_depth, icc=spec.icc, dpi=spec.dpi)
        else:
            pixels = spec.conversion.apply(_quantise(image, 16), spec.bit_depth)
            write_bytes_atomic(out, encode(pixels, suffix, icc=spec.conversion.target.data, dpi=spec.dpi))
    elif suffix == ".zarr":
        levels += build_levels(source, scratch)
        write_ome_zarr(out, levels, bit_depth=spec.bit_depth, icc=spec.icc)
    else:
        if spec.pyramid:
            levels += build_levels(source, scratch)
        write_bigtiff(out, levels, tile=_TILE, compression=spec.compression, bit_depth=spec.bit_depth, dpi=spec.dpi,
                      icc=spec.icc, conversion=spec.conversion, bigtiff=spec.bigtiff, progress=progress)
    if spec.proof is not None:
        write_proof(spec.proof, _preview(levels, scratch), spec.conversion, gamut_warning=spec.gamut_warning)


def write_proof(path: Path, preview: RegionSource, conversion: Conversion, *, gamut_warning: bool = False) -> None:
    """Render `preview` (long side <= PROOF_SIDE) through the output profile to an sRGB JPEG with its profile."""
    _, h, w = preview.shape
    rgb, icc = render_proof(_quantise(preview.read(0, h, 0, w), 16), conversion, gamut_warning=gamut_warning)
    write_bytes_atomic(path, encode(np.ascontiguousarray(rgb), ".jpg", icc=icc))


def _preview(levels: list[RegionSource], scratch: zarr.Group) -> RegionSource:
    """The largest level whose long side is at most PROOF_SIDE, building halved levels if there is none."""
    for level in levels:
        if max(level.shape[1:]) <= PROOF_SIDE:
            return level
    return build_levels(levels[-1], scratch.require_group("proof"), min_size=PROOF_SIDE)[-1]
