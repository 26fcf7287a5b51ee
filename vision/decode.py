"""The one safe way an image enters markguard: bytes → RGB uint8 array.

Formats are recognised by their magic bytes (never by file name), the pixel count is checked from
the header before any pixel is allocated, EXIF orientation is applied, and transparency is laid on
white so that a logo on a transparent ground looks as it does on a page.
"""

from __future__ import annotations

import enum
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from markguard.vision.errors import ImageTooLarge, InvalidImage, UnsupportedFormat

__all__ = ["ImageFormat", "sniff_format", "image_size", "decode_image", "read_image", "file_name_text", "MAX_PIXELS",
           "MAX_BYTES"]

MAX_PIXELS = 40_000_000  # 40 MP: larger than any phone photo, far below a bomb's billions
MAX_BYTES = 32 * 1024 * 1024  # 32 MiB of encoded data
_SURROGATE = re.compile("[\ud800-\udfff]")  # how Python carries the bytes of a file name that are not UTF-8

# Pillow's own bomb guard is set just above ours so that ours, with its clearer message, fires first.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS * 2


class ImageFormat(enum.StrEnum):
    JPEG = "JPEG"
    PNG = "PNG"
    WEBP = "WEBP"


def sniff_format(data: bytes) -> ImageFormat:
    """The format named by the data's magic bytes; `UnsupportedFormat` for anything else."""
    if not data:
        raise InvalidImage("empty file")
    if data[:3] == b"\xff\xd8\xff":
        return ImageFormat.JPEG
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ImageFormat.PNG
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ImageFormat.WEBP
    raise UnsupportedFormat("not a JPEG, PNG or WebP image")


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone, no pixel decoded: what decoding `data` would cost."""
    fmt = sniff_format(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt.value]) as img:
                return img.size
    except Image.DecompressionBombError:
        raise ImageTooLarge("image exceeds the pixel limit (decompression bomb?)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(f"corrupt {fmt.value} data ({_short(exc)})") from None


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> np.ndarray:
    """Decode `data` into an (H, W, 3) uint8 RGB array, upright per its EXIF orientation."""
    if len(data) > max_bytes:
        raise ImageTooLarge(f"{len(data)} bytes exceeds the {max_bytes}-byte limit")
    fmt = sniff_format(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt.value]) as img:
                width, height = img.size
                if width <= 0 or height <= 0:
                    raise InvalidImage("image has no pixels")
                if width * height > max_pixels:
                    raise ImageTooLarge(f"{width}x{height} pixels exceeds the {max_pixels}-pixel limit")
                img.load()
                ImageOps.exif_transpose(img, in_place=True)  # no second full-size copy when upright
                return _to_rgb(img)
    except (ImageTooLarge, InvalidImage):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"image exceeds the {max_pixels}-pixel limit (decompression bomb?)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(f"corrupt {fmt.value} data ({_short(exc)})") from None


def read_image(path: str | os.PathLike[str], *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> np.ndarray:
    """Read and decode a file, refusing before reading when the file is larger than `max_bytes`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageTooLarge(f"{size} bytes exceeds the {max_bytes}-byte limit")
        data = path.read_bytes()
    except IsADirectoryError:
        raise InvalidImage("is a directory") from None
    except OSError as exc:
        raise InvalidImage(f"cannot read ({exc.strerror or exc})") from None
    return decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes)


def file_name_text(name: str) -> str:
    """A file's name as text that can be stored, sent as JSON and printed: each byte of a name that is not
    UTF-8 (which Python carries as a lone surrogate, `caf\\udce9.jpg`) becomes U+FFFD, the rest is kept."""
    return _SURROGATE.sub("\ufffd", name)


def _to_rgb(img: Image.Image) -> np.ndarray:
    """RGB uint8 with as few full-size copies as possible (a 40 MP photo is 120 MB a copy): no conversion
    of an image already RGB, and transparency laid on white in bands of rows."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return _on_white(np.asarray(img if img.mode == "RGBA" else img.convert("RGBA")))
    if img.mode.startswith("I;16") or img.mode == "I":
        return _gray16_to_rgb(np.asarray(img))
    rgb = np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb)


def _gray16_to_rgb(gray: np.ndarray) -> np.ndarray:
    """16-bit gray (a PNG's `I;16`, or 32-bit `I` read as 0..65535) scaled to 8 bits, its top byte, on
    three channels: Pillow's `convert("RGB")` clips it instead, so a 16-bit photo comes out all white."""
    if gray.dtype.kind == "i":  # mode I: int32, whatever its range
        gray = np.clip(gray, 0, 65535)
    out = np.empty((*gray.shape, 3), dtype=np.uint8)
    np.right_shift(gray, 8, out=out[..., 0], casting="unsafe")
    out[..., 1] = out[..., 0]
    out[..., 2] = out[..., 0]
    return out


def _on_white(rgba: np.ndarray, *, rows: int = 256) -> np.ndarray:
    """Pillow's `alpha_composite` over opaque white, bit for bit (its fixed-point rounding), band by band."""
    out = np.empty((*rgba.shape[:2], 3), dtype=np.uint8)
    for y in range(0, rgba.shape[0], rows):
        band = rgba[y : y + rows]
        alpha = band[..., 3:4].astype(np.uint32)
        mixed = (band[..., :3].astype(np.uint32) * alpha + 255 * (255 - alpha)) * 128 + (0x80 << 7)
        out[y : y + rows] = ((((mixed >> 8) + mixed) >> 8) >> 7).astype(np.uint8)
    return out


def _short(exc: BaseException) -> str:
    """The library's reason in one short line, without the heap address PIL names its buffer by."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>", "", text)[:120]
