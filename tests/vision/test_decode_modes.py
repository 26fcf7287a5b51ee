"""vision.decode: images deeper than 8 bits come out as the same picture in 8 bits, never clipped white."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from markguard.vision.decode import _to_rgb, decode_image


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _gray16(w: int = 64, h: int = 48) -> np.ndarray:
    """A photo-like 16-bit gray image: a gradient over the whole range plus noise."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 65535, w * h).reshape(h, w)
    return np.clip(ramp + rng.normal(0, 900, (h, w)), 0, 65535).astype(np.uint16)


def test_16_bit_gray_png_decodes_to_its_top_byte() -> None:
    gray = _gray16()
    data = _png(Image.fromarray(gray))
    assert Image.open(io.BytesIO(data)).mode == "I;16"  # what Pillow makes of a real 16-bit gray PNG
    out = decode_image(data)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert np.array_equal(out, np.repeat((gray >> 8).astype(np.uint8)[..., None], 3, axis=2))
    assert 100 < out.mean() < 155  # a gradient over the whole range, not all white (255)


def test_16_bit_gray_png_looks_like_its_8_bit_version() -> None:
    gray = _gray16()
    eight = decode_image(_png(Image.fromarray((gray >> 8).astype(np.uint8))))  # mode L
    assert np.array_equal(decode_image(_png(Image.fromarray(gray))), eight)


@pytest.mark.parametrize(("mode", "dtype"), [("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2"), ("I", "<i4")])
def test_every_16_bit_gray_mode_scales_the_same(mode: str, dtype: str) -> None:
    """Modes Pillow makes in memory (PNG reads as I;16 only): each scales by its top byte."""
    gray = _gray16(16, 8)
    img = Image.frombytes(mode, (16, 8), gray.astype(dtype).tobytes())
    assert np.array_equal(_to_rgb(img)[..., 0], (gray >> 8).astype(np.uint8))


def test_mode_i_outside_16_bits_is_clipped() -> None:
    values = np.array([[-70_000, -1, 0, 255, 256, 65_535, 65_536, 2_000_000]], dtype="<i4")
    out = _to_rgb(Image.frombytes("I", (8, 1), values.tobytes()))
    assert out[0, :, 0].tolist() == [0, 0, 0, 0, 1, 255, 255, 255]
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
