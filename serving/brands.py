"""Brands and products in the catalog: names are matched case-insensitively, shown as first given."""

from __future__ import annotations

import dataclasses
import re

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from markguard.serving.state.schema import Brand, Product, Reference
from markguard.vision.errors import MarkguardError, NotFound

__all__ = ["brand_key", "add_brand", "get_brand", "get_product", "get_or_create_product", "list_brands", "BrandSummary"]

_NAME = re.compile(r"^[\w][\w .&'+\-]{0,99}$", re.UNICODE)


def brand_key(name: str) -> str:
    return " ".join(name.split()).casefold()


def _check_name(name: str, what: str) -> str:
    name = " ".join(name.split())
    if not _NAME.match(name):
        raise MarkguardError(f"invalid {what} name {name!r}: 1-100 letters, digits, spaces or . & ' + - _")
    return name


def add_brand(session: Session, name: str, *, wordmarks: list[str] | None = None) -> Brand:
    name = _check_name(name, "brand")
    if session.scalar(select(Brand).where(Brand.key == brand_key(name))) is not None:
        raise MarkguardError(f"brand {name!r} already exists")
    brand = Brand(name=name, key=brand_key(name), wordmarks=list(wordmarks or [name]), serial_checksum="none")
    session.add(brand)
    try:
        session.flush()
    except IntegrityError:  # another writer added it since the check (the caller's transaction rolls back)
        raise MarkguardError(f"brand {name!r} already exists") from None
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
        product = Product(brand_id=brand.id, name=_check_name(name, "product"), key=brand_key(name))
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
