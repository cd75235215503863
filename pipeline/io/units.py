"""Physical lengths for print: "300cm", "12in", "450mm" or plain pixels, turned into pixels at a DPI."""

from __future__ import annotations

import math
import re

from ..errors import ConfigError

PER_INCH: dict[str, float] = {"mm": 25.4, "cm": 2.54, "in": 1.0}  # units in one inch
_LENGTH = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*[xX]\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")


def to_pixels(value: float, unit: str, dpi: float | None, what: str) -> int:
    """`value` in `unit` ("px", "mm", "cm", "in") as pixels: value x dpi / units-per-inch, rounded to nearest.

    Raises:
        ConfigError: Unknown unit, a physical unit without a DPI, a DPI <= 0, or a fractional pixel count.
    """
    unit = unit.lower() or "px"
    if unit == "px":
        if value != int(value):
            raise ConfigError(f"{what}: a pixel count must be a whole number, got {value:g}")
        return int(value)
    if unit not in PER_INCH:
        raise ConfigError(f"{what}: unknown unit {unit!r}; use px, mm, cm or in")
    if dpi is None:
        raise ConfigError(f"{what}: a length in {unit} needs a resolution (--dpi)")
    if dpi <= 0:
        raise ConfigError(f"--dpi must be > 0, got {dpi:g}")
    return math.floor(value * dpi / PER_INCH[unit] + 0.5)


def parse_length(text: str, dpi: float | None, what: str) -> int:
    """A length such as "90cm", "36in", "900mm" or "1200" (pixels) as pixels at `dpi`.

    Raises:
        ConfigError: Not a length, unknown unit, or see `to_pixels`.
    """
    m = _LENGTH.fullmatch(text)
    if not m:
        raise ConfigError(f"{what} expects a length such as 90cm, 36in, 900mm or 1200 (pixels), got {text!r}")
    return to_pixels(float(m.group(1)), m.group(2), dpi, what)


def parse_size(text: str, dpi: float | None) -> tuple[tuple[int, int], str | None]:
    """--size "WxH[unit]" (or "Wunit x Hunit") as ((width, height) in pixels, the unit or None for pixels).

    Raises:
        ConfigError: Not a size, sides of different units, a side < 1 px, or see `to_pixels`.
    """
    m = _SIZE.fullmatch(text)
    if not m:
        raise ConfigError(f"--size expects WxH in pixels (e.g. 512x384) or with a unit (e.g. 300x200cm), got {text!r}")
    w, uw, h, uh = float(m.group(1)), m.group(2).lower(), float(m.group(3)), m.group(4).lower()
    if uw and uh and uw != uh:
        raise ConfigError(f"--size: both sides need the same unit, got {uw} and {uh}")
    unit = uh or uw or "px"
    width, height = to_pixels(w, unit, dpi, "--size"), to_pixels(h, unit, dpi, "--size")
    if width < 1 or height < 1:
        raise ConfigError(f"--size must be at least 1x1 pixels, got {width}x{height} from {text!r}")
    return (width, height), (None if unit == "px" else unit)


def describe(width: int, height: int, dpi: float, unit: str) -> str:
    """"17717x11811 px = 300.0x200.0 cm at 150 dpi": a pixel size and its print size."""
    k = PER_INCH[unit] / dpi
    return f"{width}x{height} px = {width * k:.1f}x{height * k:.1f} {unit} at {dpi:g} dpi"
