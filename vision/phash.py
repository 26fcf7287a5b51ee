"""vision: perceptual hash — the same photo reused by other sellers, through re-encoding and resizing.

A 64-bit DCT pHash: grey, shrink to 32×32, 2-D DCT-II, keep the 8×8 lowest frequencies, one bit per
coefficient above their median (the layout of the widely used `imagehash.phash`). Near-identical
photos differ in a few bits; unrelated photos in about half of them.
"""

from __future__ import annotations

import dataclasses
import itertools

import cv2
import numpy as np

__all__ = ["BANDS", "PerceptualHash", "band_keys", "band_neighbours", "phash", "hamming", "hamming_many"]

HASH_SIZE = 8  # bits per side: 64 in all
_DCT_SIZE = 32  # the grey image is shrunk to this before the DCT
_SQRT2 = float(np.sqrt(2.0))
# (shift, bits): the 64 bits as three bands for multi-index search (Norouzi et al., CVPR 2012). With a
# million to a billion stored hashes, three ~21-bit bands searched within 2 bits each (for 8 bits in all)
# give the fewest lookups plus candidates; more bands make each band's matches too common.
BANDS = ((0, 21), (21, 21), (42, 22))


@dataclasses.dataclass(frozen=True, order=True)
class PerceptualHash:
    """64 bits, the first DCT coefficient (row-major) in the most significant bit."""

    value: int  # unsigned, 0 <= value < 2**64

    def __post_init__(self) -> None:
        if not isinstance(self.value, int) or not 0 <= self.value < 1 << 64:
            raise ValueError(f"a perceptual hash is an unsigned 64-bit integer, got {self.value!r}")

    @property
    def hex(self) -> str:
        """16 lower-case hex digits: stable text for logs and JSON."""
        return f"{self.value:016x}"

    @property
    def int64(self) -> int:
        """The same bits as a signed 64-bit integer, for a BIGINT / SQLite INTEGER column."""
        return self.value - (1 << 64) if self.value >= 1 << 63 else self.value

    @classmethod
    def from_hex(cls, text: str) -> PerceptualHash:
        if len(text) != 16:
            raise ValueError(f"expected 16 hex digits, got {text!r}")
        return cls(int(text, 16))

    @classmethod
    def from_int64(cls, value: int) -> PerceptualHash:
        if not -(1 << 63) <= value < 1 << 63:
            raise ValueError(f"{value} does not fit a signed 64-bit integer")
        return cls(value & ((1 << 64) - 1))

    def __str__(self) -> str:
        return self.hex


def phash(image: np.ndarray) -> PerceptualHash:
    """The 64-bit DCT perceptual hash of an (H, W, 3) uint8 RGB image."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("expected an (H, W, 3) uint8 RGB array")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError("image has no pixels")
    return _bits_to_hash(_hash_bits(_shrink(image)))


def hamming(a: PerceptualHash | int, b: PerceptualHash | int) -> int:
    """Number of differing bits between two hashes (ints may be unsigned or signed 64-bit)."""
    return ((_as_unsigned(a) ^ _as_unsigned(b)) & ((1 << 64) - 1)).bit_count()


def band_keys(h: PerceptualHash | int) -> tuple[int, ...]:
    """The hash's value in each of `BANDS` (non-negative, below 2**22): columns a database can index."""
    u = _as_unsigned(h)
    return tuple((u >> shift) & ((1 << bits) - 1) for shift, bits in BANDS)


def band_neighbours(h: PerceptualHash | int, max_bits: int) -> list[list[int]]:
    """Per band, every value within `max_bits // len(BANDS)` bits of the hash's own. A stored hash within
    `max_bits` of `h` differs in at most that many bits in one of the bands (pigeonhole), so it equals one
    of these values there: indexed equality lookups find every near hash, and the caller filters the
    candidates by `hamming_many`."""
    if max_bits < 0:
        raise ValueError(f"max_bits must be >= 0, got {max_bits}")
    radius = max_bits // len(BANDS)
    out = []
    for key, (_, bits) in zip(band_keys(h), BANDS, strict=True):
        values = [key]
        for k in range(1, radius + 1):
            values += [key ^ sum(1 << b for b in flips) for flips in itertools.combinations(range(bits), k)]
        out.append(values)
    return out


def hamming_many(query: PerceptualHash | int, stored: np.ndarray) -> np.ndarray:
    """Hamming distances from `query` to each of an array of int64 hashes (as stored in a database)."""
    stored = np.asarray(stored)
    if stored.dtype != np.int64:
        raise ValueError(f"expected int64 hashes, got {stored.dtype}")
    q = np.array(_as_unsigned(query), dtype=np.uint64)
    return np.bitwise_count(stored.view(np.uint64) ^ q).astype(np.int64)


def _as_unsigned(h: PerceptualHash | int) -> int:
    if isinstance(h, PerceptualHash):
        return h.value
    if not -(1 << 63) <= h < 1 << 64:
        raise ValueError(f"{h} is not a 64-bit hash")
    return h & ((1 << 64) - 1)


def _shrink(image: np.ndarray) -> np.ndarray:
    """Grey (ITU-R 601 luma) at 32×32, float64: area averaging removes what re-encoding changes."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
    return cv2.resize(grey, (_DCT_SIZE, _DCT_SIZE), interpolation=cv2.INTER_AREA)


def _hash_bits(small: np.ndarray) -> np.ndarray:
    """(8, 8) bools: low-frequency DCT-II coefficients above their median.

    `cv2.dct` is orthonormal; undoing its 1/√2 on row and column 0 gives coefficients proportional
    to the unnormalised DCT-II, which is what the median is taken over in the usual pHash. The
    tiny margin keeps rounding noise out of flat images, whose AC coefficients are all zero.
    """
    coeffs = cv2.dct(small)[:HASH_SIZE, :HASH_SIZE].copy()
    coeffs[0, :] *= _SQRT2
    coeffs[:, 0] *= _SQRT2
    return coeffs > np.median(coeffs) + 1e-9 * (np.abs(coeffs).max() + 1.0)


def _bits_to_hash(bits: np.ndarray) -> PerceptualHash:
    value = 0
    for bit in bits.ravel():
        value = (value << 1) | int(bit)
    return PerceptualHash(value)
