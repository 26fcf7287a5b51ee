"""vision.decode: the one safe way in for every image."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from markguard.vision.decode import ImageFormat, decode_image, read_image, sniff_format
from markguard.vision.errors import ImageTooLarge, InvalidImage, UnsupportedFormat


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _photo(w: int = 64, h: int = 48) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_allowed_formats_decode_to_rgb(fmt: str) -> None:
    data = _encode(_photo(), fmt)
    assert sniff_format(data) == ImageFormat(fmt)
    out = decode_image(data)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8


def test_png_pixels_round_trip_exactly() -> None:
    img = _photo()
    assert np.array_equal(decode_image(_encode(img, "PNG")), np.asarray(img))


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_formats_are_refused_by_content(fmt: str) -> None:
    with pytest.raises(UnsupportedFormat):
        decode_image(_encode(_photo().convert("RGB"), fmt))


def test_zero_bytes() -> None:
    with pytest.raises(InvalidImage, match="empty"):
        decode_image(b"")


def test_random_bytes() -> None:
    with pytest.raises(UnsupportedFormat):
        decode_image(np.random.default_rng(1).bytes(4096))


def test_truncated_jpeg() -> None:
    data = _encode(_photo(256, 256), "JPEG", quality=95)
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) // 2])


def test_jpeg_magic_with_garbage_body() -> None:
    with pytest.raises(InvalidImage):
        decode_image(b"\xff\xd8\xff" + b"\x00" * 100)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width×height, followed by a tiny IDAT: a decompression bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_png_claiming_30000_squared_is_refused_before_allocation() -> None:
    import tracemalloc

    data = _png_header_only(30_000, 30_000)
    tracemalloc.start()
    with pytest.raises(ImageTooLarge, match="pixel limit"):
        decode_image(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50 * 1024 * 1024  # 2.7 GB of pixels were never allocated


def test_pixel_cap_names_the_size() -> None:
    with pytest.raises(ImageTooLarge, match="3000x2000"):
        decode_image(_png_header_only(3000, 2000), max_pixels=1_000_000)


def test_byte_cap() -> None:
    with pytest.raises(ImageTooLarge):
        decode_image(_encode(_photo(), "PNG"), max_bytes=100)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (80, 40), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 40, 40))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = decode_image(_encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.shape == (80, 40, 3)  # portrait after rotation
    top = out[:20].reshape(-1, 3).mean(axis=0)
    assert top[2] > 200 and top[0] < 60  # the blue half is now on top


def test_transparency_lies_on_white() -> None:
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    out = decode_image(_encode(img, "PNG"))
    assert (out == 255).all()


def test_read_image_names_missing_files(tmp_path) -> None:
    with pytest.raises(InvalidImage):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(InvalidImage, match="directory"):
        read_image(tmp_path)
