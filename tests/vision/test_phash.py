"""vision.phash: a naive DCT as the slow truth, robustness on real photos, the stored forms."""

from __future__ import annotations

import io
import sqlite3

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from markguard.vision.decode import decode_image, read_image
from markguard.vision.phash import (
    BANDS,
    PerceptualHash,
    band_keys,
    band_neighbours,
    hamming,
    hamming_many,
    phash,
)

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


def naive_phash(grey32: np.ndarray) -> int:
    """pHash by the textbook formula: unnormalised DCT-II of a 32×32 grey image, 8×8 lowest
    frequencies, a bit per coefficient above their median, row-major, first bit most significant."""
    n = grey32.shape[0]
    coeffs = np.zeros((8, 8))
    for u in range(8):
        for v in range(8):
            total = 0.0
            for x in range(n):
                cu = np.cos(np.pi * (2 * x + 1) * u / (2 * n))
                row = grey32[x, :] * np.cos(np.pi * (2 * np.arange(n) + 1) * v / (2 * n))
                total += cu * row.sum()
            coeffs[u, v] = 4 * total
    bits = (coeffs > np.median(coeffs)).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)


@pytest.mark.parametrize("seed", range(6))
def test_phash_equals_naive_dct_on_random_32px_images(seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert phash(image).value == naive_phash(_grey(image))


@pytest.mark.parametrize("seed", range(4))
def test_phash_equals_naive_dct_after_block_averaging(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (96, 64, 3), dtype=np.uint8), (0, 0), 2)
    grey32 = _grey(image).reshape(32, 3, 32, 2).mean(axis=(1, 3))  # area averaging, by hand
    assert phash(image).value == naive_phash(grey32)


def test_constant_and_tiny_images_hash() -> None:
    flat = phash(np.full((1, 1, 3), 7, np.uint8))
    assert flat == phash(np.full((50, 80, 3), 7, np.uint8)) == PerceptualHash(1 << 63)  # the DC bit alone
    with pytest.raises(ValueError):
        phash(np.zeros((4, 4), np.uint8))


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return decode_image(buf.getvalue())


def _crop(image: np.ndarray, fraction: float) -> np.ndarray:
    h, w = image.shape[:2]
    dy, dx = int(h * fraction), int(w * fraction)
    return image[dy : h - dy, dx : w - dx]


EDITS = {
    "jpeg q50": lambda im: _jpeg(im, 50),
    "half size": lambda im: cv2.resize(im, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA),
    "1.7x larger": lambda im: cv2.resize(im, None, fx=1.7, fy=1.7, interpolation=cv2.INTER_CUBIC),
    "brightness +30": lambda im: np.clip(im.astype(int) + 30, 0, 255).astype(np.uint8),
    "crop 2% each side": lambda im: _crop(im, 0.02),
}


@pytest.fixture(scope="module")
def val_photos(grocery) -> list[np.ndarray]:
    paths = sorted(grocery.glob("val/Packages/*/*/*.jpg"))[::3]
    return [read_image(p) for p in paths]


@pytest.mark.parametrize("edit", list(EDITS))
def test_edited_copy_stays_near_and_is_its_nearest_photo(val_photos: list[np.ndarray], edit: str) -> None:
    hashes = np.array([phash(im).int64 for im in val_photos], dtype=np.int64)
    distances = []
    for i, image in enumerate(val_photos):
        to_all = hamming_many(phash(EDITS[edit](image)), hashes)
        distances.append(int(to_all[i]))
        assert to_all[i] == to_all.min(), f"photo {i}: an edited copy is nearer another photo"
    limit = 12 if edit.startswith("crop") else 6
    print(f"\n{edit}: median {np.median(distances)} max {max(distances)} bits")
    assert max(distances) <= limit


def test_different_photos_are_far(val_photos: list[np.ndarray]) -> None:
    hashes = [phash(im) for im in val_photos]
    distances = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    print(f"\ndifferent photos: min {min(distances)} median {np.median(distances)} bits")
    assert np.median(distances) >= 24
    assert min(distances) >= 8


@given(U64)
def test_hex_and_int64_round_trip(value: int) -> None:
    h = PerceptualHash(value)
    assert PerceptualHash.from_hex(h.hex) == h and len(h.hex) == 16 and str(h) == h.hex
    assert -(1 << 63) <= h.int64 < (1 << 63)
    assert PerceptualHash.from_int64(h.int64) == h
    assert np.array([h.int64], dtype=np.int64).view(np.uint64)[0] == value


@given(U64, U64)
def test_hamming_counts_differing_bits(a: int, b: int) -> None:
    expected = sum(((a >> i) & 1) != ((b >> i) & 1) for i in range(64))
    assert hamming(a, b) == expected
    assert hamming(PerceptualHash(a), PerceptualHash(b).int64) == expected
    stored = np.array([PerceptualHash(b).int64, PerceptualHash(a).int64], dtype=np.int64)
    assert hamming_many(PerceptualHash(a), stored).tolist() == [expected, 0]


def test_int64_survives_a_sqlite_integer_column() -> None:
    hashes = [
        PerceptualHash(0),
        PerceptualHash((1 << 64) - 1),
        PerceptualHash(1 << 63),
        PerceptualHash(12345),
    ]
    with sqlite3.connect(":memory:") as db:
        db.execute("create table listings (phash integer)")
        db.executemany("insert into listings values (?)", [(h.int64,) for h in hashes])
        back = [
            PerceptualHash.from_int64(v) for (v,) in db.execute("select phash from listings order by rowid")
        ]
    assert back == hashes


def test_invalid_values_are_refused() -> None:
    for bad in (-1, 1 << 64):
        with pytest.raises(ValueError):
            PerceptualHash(bad)
    with pytest.raises(ValueError):
        PerceptualHash.from_hex("abc")
    with pytest.raises(ValueError):
        PerceptualHash.from_int64(1 << 63)
    with pytest.raises(ValueError):
        hamming_many(0, np.zeros(3, dtype=np.uint64))


@given(U64, st.sets(st.integers(min_value=0, max_value=63), max_size=8))
def test_every_hash_within_8_bits_shares_a_band_neighbour(value: int, flips: set[int]) -> None:
    """Pigeonhole over `BANDS`: a hash at most 8 bits away equals one of the query's neighbours in some band,
    however its differing bits fall among the bands (the near-duplicate search's completeness)."""
    near = value ^ sum(1 << b for b in flips)
    neighbours = band_neighbours(value, 8)
    assert any(k in values for k, values in zip(band_keys(near), neighbours, strict=True))
    assert band_keys(PerceptualHash(value).int64) == band_keys(value)  # the stored signed form bands alike


def test_band_neighbours_count_and_cover_the_hash() -> None:
    assert sum(bits for _, bits in BANDS) == 64
    neighbours = band_neighbours(0xDEADBEEF_F00DCAFE, 8)
    assert [len(v) for v in neighbours] == [1 + 21 + 210, 1 + 21 + 210, 1 + 22 + 231]  # within 2 bits of each band
    assert all(len(set(v)) == len(v) for v in neighbours)
    assert [v[0] for v in neighbours] == list(band_keys(0xDEADBEEF_F00DCAFE))
    far = 0xDEADBEEF_F00DCAFE ^ 0b111 ^ (0b111 << 21) ^ (0b111 << 42)  # 9 bits, 3 in each band
    assert not any(k in v for k, v in zip(band_keys(far), neighbours, strict=True))
    with pytest.raises(ValueError):
        band_neighbours(0, -1)
