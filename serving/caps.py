"""Caps on everything a tenant can store or send in one request: the one place to read and change them.

Each cap is enforced by the catalog layer (so the CLI and the API refuse alike) and, where a request
body carries the value, by the API's pydantic schema too. A cap is changed with the environment
variable `MARKGUARD_CAP_<NAME>` (an integer), read once per process: e.g. `MARKGUARD_CAP_BRANDS=50000`.
"""

from __future__ import annotations

import dataclasses
import os

__all__ = ["Caps", "CAPS"]


@dataclasses.dataclass(frozen=True)
class Caps:
    # stored per tenant
    brands: int = 10_000  # brands in one home
    brand_name_chars: int = 100
    wordmarks: int = 20  # wordmarks per brand (every listing's OCR text is matched against all brands')
    wordmark_chars: int = 100
    serial_pattern_chars: int = 256  # compiled by RE2 (linear-time matching), never by Python's `re`
    products: int = 10_000  # products per brand
    product_name_chars: int = 100
    references: int = 100_000  # reference images per brand
    serials: int = 20_000_000  # genuine serials per brand (a file may not push the count past it)
    # per request
    score_pixels: int = 64_000_000  # decoded pixels of all photos of one /score, /score_batch or /embed
    upload_pixels: int = 200_000_000  # decoded pixels of one reference upload (decoded one at a time; bounds its time)
    upload_bytes: int = 128 * 1024**2  # image bytes of one reference upload, zip members inflated
    upload_images: int = 500  # images of one reference upload, zip members counted (each is embedded, however small)
    # per worker process
    process_pixels: int = 160_000_000  # decoded pixels held by all requests in flight (an upload: its largest image)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Caps:
        environ = os.environ if environ is None else environ
        given = {}
        for field in dataclasses.fields(cls):
            text = environ.get(f"MARKGUARD_CAP_{field.name.upper()}")
            if text is not None:
                value = int(text)
                if value < 1:
                    raise ValueError(f"MARKGUARD_CAP_{field.name.upper()} must be a positive integer")
                given[field.name] = value
        return cls(**given)


CAPS = Caps.from_env()
