"""Brands and products in the catalog: names are matched case-insensitively, shown as first given.

Names are NFKC-normalised (fullwidth `Ｎｉｋｅ` is `Nike`), and a new brand whose look-alike skeleton
(Greek, Cyrillic and other letters that mimic Latin ones mapped to them) equals an existing brand's is
refused as a duplicate: a tenant cannot register `Νike` (Greek Nu) beside `Nike`. Every list and string
a brand stores is capped (`markguard.serving.caps`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from markguard.serving.caps import CAPS
from markguard.serving.state.schema import Brand, Product, Reference
from markguard.vision.errors import Conflict, MarkguardError, NotFound
from markguard.vision.patterns import compile_pattern

__all__ = ["brand_key", "name_skeleton", "add_brand", "get_brand", "get_product", "get_or_create_product",
           "check_wordmarks", "check_serial_pattern", "list_brands", "BrandSummary"]

_NAME = re.compile(r"^[\w][\w .&'+\-]*$", re.UNICODE)


def _normal(name: str) -> str:
    """NFKC (compatibility forms folded: fullwidth, ligatures, superscripts), whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", " ".join(name.split())).split())


def brand_key(name: str) -> str:
    return _normal(name).casefold()


@functools.cache
def _latin_look_alikes() -> dict[str, str]:
    """Non-ASCII characters → the ASCII letter or digit they are confusable with (Unicode's confusables)."""
    from confusable_homoglyphs.confusables import confusables_data

    out = {}
    for char, glyphs in confusables_data.items():
        if len(char) == 1 and not char.isascii():
            latin = [g["c"] for g in glyphs if len(g["c"]) == 1 and g["c"].isascii() and g["c"].isalnum()]
            if latin:
                out[char] = latin[0]
    return out


def name_skeleton(name: str) -> str:
    """What a name looks like: its key with every look-alike of an ASCII letter or digit replaced by it."""
    table = _latin_look_alikes()
    return "".join(table.get(c) or table.get(c.upper(), c) for c in _normal(name)).casefold()


def _echo(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")


def _check_name(name: str, what: str, max_chars: int) -> str:
    name = _normal(name)
    if not name:
        raise MarkguardError(f"{what} name is empty")
    if len(name) > max_chars:
        raise MarkguardError(f"{what} name longer than {max_chars} characters")
    if not _NAME.match(name):
        raise MarkguardError(f"invalid {what} name {_echo(name)}: letters, digits, spaces or . & ' + - _")
    return name


def check_wordmarks(wordmarks: list[str]) -> list[str]:
    """1 to `CAPS.wordmarks` non-empty text marks of at most `CAPS.wordmark_chars` characters, NFKC."""
    marks = [_normal(w) for w in wordmarks]
    if not marks or len(marks) > CAPS.wordmarks or any(not m or len(m) > CAPS.wordmark_chars for m in marks):
        raise MarkguardError(f"wordmarks: 1 to {CAPS.wordmarks} names of 1 to {CAPS.wordmark_chars} characters")
    return list(dict.fromkeys(marks))


def check_serial_pattern(pattern: str | None) -> str | None:
    """A pattern RE2 compiles (linear-time matching) within `CAPS.serial_pattern_chars`; '' or None clears it."""
    if not pattern:
        return None
    compile_pattern(pattern, max_chars=CAPS.serial_pattern_chars)
    return pattern


def add_brand(session: Session, name: str, *, wordmarks: list[str] | None = None) -> Brand:
    name = _check_name(name, "brand", CAPS.brand_name_chars)
    marks = check_wordmarks(wordmarks) if wordmarks is not None else [name]
    if session.scalar(select(Brand).where(Brand.key == brand_key(name))) is not None:
        raise Conflict(f"brand {name!r} already exists")
    skeleton = name_skeleton(name)
    for other in session.scalars(select(Brand.name)):
        if name_skeleton(other) == skeleton:
            raise Conflict(f"brand {name!r} already exists: it looks like brand {other!r}")
    if session.scalar(select(func.count()).select_from(Brand)) >= CAPS.brands:
        raise MarkguardError(f"the catalog holds {CAPS.brands} brands, the cap")
    brand = Brand(name=name, key=brand_key(name), wordmarks=marks, serial_checksum="none")
    session.add(brand)
    try:
        session.flush()
    except IntegrityError:  # another writer added it since the check (the caller's transaction rolls back)
        raise Conflict(f"brand {name!r} already exists") from None
    return brand


def get_brand(session: Session, name: str) -> Brand:
    brand = session.scalar(select(Brand).where(Brand.key == brand_key(name)))
    if brand is None:
        raise NotFound(f"unknown brand {name!r}")
    return brand


def get_product(session: Session, brand: Brand, name: str) -> Product:
    product = session.scalar(select(Product).where(Product.brand_id == brand.id, Product.key == brand_key(name)))
    if product is None:
        raise NotFound(f"unknown product {name!r} of brand {brand.name!r}")
    return product


def get_or_create_product(session: Session, brand: Brand, name: str) -> Product:
    try:
        return get_product(session, brand, name)
    except NotFound:
        name = _check_name(name, "product", CAPS.product_name_chars)
        count = session.scalar(select(func.count()).select_from(Product).where(Product.brand_id == brand.id))
        if count >= CAPS.products:
            raise MarkguardError(f"brand {brand.name!r} has {CAPS.products} products, the cap") from None
        product = Product(brand_id=brand.id, name=name, key=brand_key(name))
        session.add(product)
        try:
            session.flush()
        except IntegrityError:
            raise MarkguardError(f"product {name!r} was added by another writer: try again") from None
        return product


@dataclasses.dataclass(frozen=True)
class BrandSummary:
    name: str
    products: list[str]
    genuine: int
    counterfeit: int
    wordmarks: list[str]
    serial_pattern: str | None
    serial_checksum: str
    review_at: float | None
    takedown_at: float | None


def summarize(session: Session, brand: Brand) -> BrandSummary:
    counts = dict(
        session.execute(
            select(Reference.kind, func.count()).where(Reference.brand_id == brand.id).group_by(Reference.kind)
        ).all()
    )
    products = sorted(p.name for p in brand.products)
    return BrandSummary(
        name=brand.name,
        products=products,
        genuine=int(counts.get("genuine", 0)),
        counterfeit=int(counts.get("counterfeit", 0)),
        wordmarks=list(brand.wordmarks),
        serial_pattern=brand.serial_pattern,
        serial_checksum=brand.serial_checksum,
        review_at=brand.review_at,
        takedown_at=brand.takedown_at,
    )


def list_brands(session: Session) -> list[BrandSummary]:
    return [summarize(session, b) for b in session.scalars(select(Brand).order_by(Brand.key))]
