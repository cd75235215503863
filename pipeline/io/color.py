"""Colour management of outputs: the reference's ICC profile as working space, conversion to a press
profile through LittleCMS (libvips' icc_transform), soft proofs, and CIEDE2000.

sidpipe never changes the reference's numbers: it samples them as they are, so the output is in the
reference's colour space, its *working space*. The reference's embedded ICC profile names that space
and is carried to every output; a reference without one is taken as sRGB. `--output-profile` then
converts from the working space to a device space (an RGB or CMYK profile) pixel by pixel, one tile
at a time, which is why a tiled conversion equals a whole-image one bit for bit.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyvips
import tifffile
from PIL import Image, ImageCms

from ..errors import ConfigError, ImageError

INTENTS: tuple[str, ...] = ("perceptual", "relative", "saturation", "absolute")
GAMUT_DE = 3.0  # CIEDE2000 a colour moves in a relative-colorimetric round trip through the press before it is out of gamut
GAMUT_MARK = (0, 255, 0)  # sRGB green: no press profile prints it, so a mark never looks like image content
PROOF_SIDE = 2048  # long side of a soft proof at most (pixels)

_SPACES = {"RGB ": "RGB", "GRAY": "GRAY", "CMYK": "CMYK"}  # ICC data colour spaces sidpipe handles
_DEVICE_CLASSES = ("mntr", "prtr", "scnr", "spac")  # profiles that describe a colour space (not links)


@dataclass(frozen=True)
class Profile:
    """An ICC profile: its bytes and what it describes.

    Attributes:
        data: The profile file's bytes.
        description: Its description tag (e.g. "Compatible with Adobe RGB (1998)").
        space: Data colour space: "RGB", "GRAY", "CMYK", or the ICC signature of another one.
        device_class: ICC class signature: "mntr", "prtr", "scnr", "spac", "link", "abst", "nmcl".
    """

    data: bytes
    description: str
    space: str
    device_class: str

    @property
    def channels(self) -> int:
        """Samples per pixel of the profile's data colour space (0 if sidpipe does not handle it)."""
        return {"RGB": 3, "GRAY": 1, "CMYK": 4}.get(self.space, 0)


def parse_profile(data: bytes, name: str) -> Profile:
    """Parse ICC profile bytes with LittleCMS.

    Raises:
        ImageError: The bytes are not an ICC profile (`name` says whose, in the message).
    """
    try:
        p = ImageCms.ImageCmsProfile(io.BytesIO(data)).profile
    except (ImageCms.PyCMSError, OSError, TypeError) as e:
        raise ImageError(f"not an ICC profile: {name}") from e
    space = _SPACES.get(p.xcolor_space, p.xcolor_space.strip())
    return Profile(bytes(data), (p.profile_description or "").strip() or "(no description)", space, p.device_class)


def load_profile(path: str | os.PathLike) -> Profile:
    """Read and parse an ICC profile file.

    Raises:
        ImageError: The file is missing, unreadable or not an ICC profile.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read ICC profile: {path} ({e.strerror or e})") from None
    return parse_profile(data, str(path))


def output_profile(path: str | os.PathLike) -> Profile:
    """Load a profile to convert outputs into: an RGB or CMYK device or colour-space profile.

    Raises:
        ImageError: Not an ICC profile, or a device link / abstract / named-colour profile, or a
            data colour space other than RGB or CMYK.
    """
    profile = load_profile(path)
    if profile.device_class not in _DEVICE_CLASSES:
        raise ImageError(f"--output-profile must describe a device or colour space (class mntr, prtr, scnr "
                         f"or spac), got class {profile.device_class!r}: {path}")
    if profile.space not in ("RGB", "CMYK"):
        raise ImageError(f"--output-profile must be an RGB or CMYK profile, got {profile.space}: {path}")
    return profile


@functools.cache
def srgb() -> Profile:
    """LittleCMS's built-in sRGB profile: the working space of references that carry no profile.

    LittleCMS stamps the profile header's creation date (bytes 24-35) with the current time; it is pinned
    here, so two runs of a job (or a resumed run and an uninterrupted one) write the same bytes. The
    profile ID (bytes 84-99, an MD5 that covers the date) is set to zero, "not computed", as LittleCMS
    leaves it."""
    data = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = data[:24] + SRGB_DATE + data[36:84] + bytes(16) + data[100:]
    return parse_profile(data, "built-in sRGB")


# 2026-01-01 00:00:00: ICC dateTimeNumber, six big-endian uint16 (year, month, day, hours, minutes, seconds)
SRGB_DATE = bytes.fromhex("07ea00010001000000000000")


def embedded_icc(path: str | os.PathLike) -> bytes | None:
    """The ICC profile embedded in an image file (TIFF tag 34675, PNG iCCP, JPEG APP2, WebP), or None.

    Reads headers only: TIFF through tifffile (BigTIFF too), everything else through PIL.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        if head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            with tifffile.TiffFile(path) as tif:
                return tif.series[0].levels[0].keyframe.iccprofile or None
        with Image.open(path) as im:
            return im.info.get("icc_profile") or None
    except Exception:  # the reader reports an undecodable image with a clear message of its own
        return None


def working_profile(path: str | os.PathLike, channels: int) -> tuple[Profile | None, str]:
    """The working space of a reference with `channels` (1 or 3) decoded channels, and one line saying which.

    An embedded profile whose colour space matches the decoded pixels is the working space. Without
    one, RGB is sRGB and gray has no profile. An embedded profile that is unreadable or does not
    match (e.g. a CMYK profile on a CMYK JPEG, which the reader decodes to RGB) is ignored with a
    warning and the default applies.

    Returns:
        (profile or None for gray without one, a description for the plan line).
    """
    data = embedded_icc(path)
    expected = "RGB" if channels == 3 else "GRAY"
    if data is not None:
        try:
            profile = parse_profile(data, f"the profile embedded in {path}")
        except ImageError:
            warnings.warn(f"{path}: its embedded ICC profile cannot be read; it is ignored", stacklevel=2)
        else:
            if profile.space == expected and profile.device_class in _DEVICE_CLASSES:
                return profile, f"colour: {profile.description} (the reference's ICC profile)"
            warnings.warn(f"{path}: its embedded {profile.space} profile does not describe the decoded "
                          f"{expected} pixels; it is ignored", stacklevel=2)
    if channels == 3:
        return srgb(), "colour: sRGB (the reference has no ICC profile)"
    return None, "colour: gray, no ICC profile (the reference has none)"


@dataclass(frozen=True)
class Conversion:
    """A pixel-by-pixel conversion from the working space to an output profile (LittleCMS via libvips).

    Attributes:
        source: Working space (RGB or GRAY); None = sRGB.
        target: Output profile (RGB or CMYK).
        target_path: The output profile's file (libvips loads output profiles from files).
        intent: One of INTENTS.
        bpc: Black point compensation.
    """

    source: Profile | None
    target: Profile
    target_path: Path
    intent: str = "relative"
    bpc: bool = False

    def __post_init__(self) -> None:
        if self.intent not in INTENTS:
            raise ConfigError(f"--intent must be one of {', '.join(INTENTS)}, got {self.intent!r}")

    @property
    def channels(self) -> int:
        """Samples per output pixel: 3 (RGB) or 4 (CMYK)."""
        return self.target.channels

    def apply(self, pixels: np.ndarray, bit_depth: int) -> np.ndarray:
        """Convert (h, w) or (h, w, 3) uint16 working-space pixels to (h, w, K) uint8/uint16 output pixels.

        Each output pixel depends only on its input pixel, so converting tiles gives the whole
        image's result bit for bit.
        """
        image = _vips_image(pixels, self.source)
        out = image.icc_transform(str(self.target_path), embedded=True, intent=self.intent,
                                  black_point_compensation=self.bpc, depth=bit_depth)
        return _numpy(out)


def render_proof(pixels: np.ndarray, conversion: Conversion, *, gamut_warning: bool = False) -> tuple[np.ndarray, bytes]:
    """A soft proof: working-space pixels through the output profile and back to sRGB, as the press prints them.

    The conversion to the press uses the run's intent and black point compensation; the way back to
    sRGB is relative colorimetric (paper white shows as the screen's white). With `gamut_warning`,
    pixels that move by more than GAMUT_DE (CIEDE2000) in a relative-colorimetric round trip
    through the output profile, without black point compensation, are painted GAMUT_MARK.

    Args:
        pixels: (h, w) or (h, w, 3) uint16 in the working space.
        conversion: The run's conversion to the output profile.
        gamut_warning: Mark out-of-gamut pixels.

    Returns:
        ((h, w, 3) uint8 sRGB, the sRGB ICC profile the pixels are in).
    """
    printed = _vips_image(conversion.apply(pixels, 16), conversion.target)
    shown = printed.icc_transform("srgb", embedded=True, intent="relative", depth=8)
    rgb = np.array(_numpy(shown), copy=True)
    if gamut_warning:
        rgb[out_of_gamut(pixels, conversion)] = GAMUT_MARK
    return rgb, bytes(shown.get("icc-profile-data"))


def out_of_gamut(pixels: np.ndarray, conversion: Conversion) -> np.ndarray:
    """(h, w) bool: pixels a relative-colorimetric round trip through the output profile moves by > GAMUT_DE."""
    image = _vips_image(pixels, conversion.source)
    before = image.icc_import(embedded=True, intent="relative")
    device = image.icc_transform(str(conversion.target_path), embedded=True, intent="relative", depth=16)
    after = _vips_image(_numpy(device), conversion.target).icc_import(embedded=True, intent="relative")
    return ciede2000(_numpy(before), _numpy(after)) > GAMUT_DE


def to_lab(pixels: np.ndarray, profile: Profile | None) -> np.ndarray:
    """(h, w, 3) float32 CIE L*a*b* (D50, the ICC connection space) of uint8/uint16 pixels in `profile`."""
    return _numpy(_vips_image(pixels, profile).icc_import(embedded=True, intent="relative"))


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (Sharma, Wu, Dalal 2005, eqs. 1-22) between (..., 3) L*a*b* arrays, kL = kC = kH = 1."""
    L1, a1, b1 = np.moveaxis(np.asarray(lab1, np.float64), -1, 0)
    L2, a2, b2 = np.moveaxis(np.asarray(lab2, np.float64), -1, 0)
    # a' from the mean chroma (the G factor)
    c_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_mean**7 / (c_mean**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    # differences in lightness, chroma, hue
    dL, dC = L2 - L1, c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(c1p * c2p == 0, 0.0, dh)
    dH = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    # means and weighting functions
    Lm, Cm = (L1 + L2) / 2, (c1p + c2p) / 2
    hsum = h1p + h2p
    hm = np.where(np.abs(h1p - h2p) > 180, np.where(hsum < 360, hsum + 360, hsum - 360), hsum) / 2
    hm = np.where(c1p * c2p == 0, hsum, hm)
    t = (1 - 0.17 * np.cos(np.radians(hm - 30)) + 0.24 * np.cos(np.radians(2 * hm))
         + 0.32 * np.cos(np.radians(3 * hm + 6)) - 0.20 * np.cos(np.radians(4 * hm - 63)))
    sl = 1 + 0.015 * (Lm - 50) ** 2 / np.sqrt(20 + (Lm - 50) ** 2)
    sc = 1 + 0.045 * Cm
    sh = 1 + 0.015 * Cm * t
    rt = -2 * np.sqrt(Cm**7 / (Cm**7 + 25.0**7)) * np.sin(np.radians(60 * np.exp(-(((hm - 275) / 25) ** 2))))
    return np.sqrt((dL / sl) ** 2 + (dC / sc) ** 2 + (dH / sh) ** 2 + rt * (dC / sc) * (dH / sh))


def _vips_image(pixels: np.ndarray, profile: Profile | None) -> pyvips.Image:
    """Wrap (h, w[, S]) uint8/uint16 pixels as a libvips image tagged with `profile` (None: sRGB).

    Gray pixels without a gray profile are widened to RGB (R = G = B) and read as sRGB.
    """
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    bands = pixels.shape[2]
    if profile is None or (bands == 1 and profile.space != "GRAY"):
        profile = srgb()
        if bands == 1:
            pixels, bands = np.repeat(pixels, 3, axis=2), 3
    sixteen = pixels.dtype == np.uint16
    kind = {1: ("grey16", "b-w"), 3: ("rgb16", "srgb"), 4: ("cmyk", "cmyk")}[bands][0 if sixteen else 1]
    h, w = pixels.shape[:2]
    image = pyvips.Image.new_from_memory(np.ascontiguousarray(pixels).data, w, h, bands,
                                         "ushort" if sixteen else "uchar").copy(interpretation=kind)
    image.set_type(pyvips.GValue.blob_type, "icc-profile-data", profile.data)
    return image


def _numpy(image: pyvips.Image) -> np.ndarray:
    """A libvips image as an (h, w, bands) numpy array of its format."""
    dtype = {"uchar": np.uint8, "ushort": np.uint16, "float": np.float32}[image.format]
    return np.ndarray(buffer=image.write_to_memory(), dtype=dtype, shape=(image.height, image.width, image.bands))

