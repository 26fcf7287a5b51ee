"""The catalog's tables (SQLAlchemy 2). Changes go through an Alembic migration in `migrations/`."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates

from markguard.vision.phash import band_keys

__all__ = [
    "Base",
    "Brand",
    "Product",
    "Reference",
    "ReferenceKind",
    "ModelVersion",
    "ApiKey",
    "Listing",
    "ListingSerial",
    "GenuineSerial",
    "SerialImport",
]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A moment in UTC, read back timezone-aware on every backend.

    PostgreSQL keeps the offset (`timestamptz`); SQLite stores text without one and returns naive
    values, so they are stored in UTC and read back as UTC. Naive values are refused on the way in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: catalog times must carry a timezone")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# Row ids of tables that grow with traffic: 64-bit on PostgreSQL (migration 0003). SQLite's INTEGER
# PRIMARY KEY is already 64-bit, and only a column declared exactly INTEGER autoincrements there.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, dt.datetime: UtcDateTime}


class ReferenceKind(enum.StrEnum):
    GENUINE = "genuine"
    COUNTERFEIT = "counterfeit"


class Brand(Base):
    __tablename__ = "brands"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(200), unique=True)  # casefolded name: "Arla" and "arla" are one brand
    wordmarks: Mapped[list[str]] = mapped_column(JSON, default=list)
    serial_pattern: Mapped[str | None] = mapped_column(String(500))
    serial_checksum: Mapped[str] = mapped_column(String(40), default="none")
    review_at: Mapped[float | None] = mapped_column(Float)  # None: the model's calibrated threshold
    takedown_at: Mapped[float | None] = mapped_column(Float)
    # a listing reviewed genuine becomes a genuine reference of the brand (migration 0004; off by default:
    # a brand decides what counts as its genuine look)
    genuine_from_reviews: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)

    products: Mapped[list[Product]] = relationship(back_populates="brand", cascade="all, delete-orphan")


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (UniqueConstraint("brand_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    brand_id: Mapped[int] = mapped_column(ForeignKey("brands.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)

    brand: Mapped[Brand] = relationship(back_populates="products")


class Reference(Base):
    """One enrolled image; its pixels live in the blob store under `sha256`."""

    __tablename__ = "references"
    __table_args__ = (UniqueConstraint("brand_id", "sha256"), Index("ix_references_brand_kind", "brand_id", "kind"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    brand_id: Mapped[int] = mapped_column(ForeignKey("brands.id", ondelete="CASCADE"))
    product_id: Mapped[int | None] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"))
    kind: Mapped[ReferenceKind] = mapped_column(Enum(ReferenceKind, native_enum=False, length=20))
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(1000))  # the file name it was enrolled from
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)

    brand: Mapped[Brand] = relationship()
    product: Mapped[Product | None] = relationship()


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tag: Mapped[str] = mapped_column(String(200), unique=True)
    path: Mapped[str] = mapped_column(String(1000))  # relative to the home's models/ folder
    weights_sha256: Mapped[str] = mapped_column(String(64))
    promoted: Mapped[bool] = mapped_column(Boolean, default=False)
    card: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)


class ApiKey(Base):
    """An API key, stored as the SHA-256 of its secret part; the key itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)  # public part, looked up first
    secret_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(20))
    brand_id: Mapped[int | None] = mapped_column(ForeignKey("brands.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


class Listing(Base):
    """A scored listing photo, kept so later listings see photo and serial reuse."""

    __tablename__ = "listings"
    # risk/id and brand/id: the review queue's keyset orders (migration 0006)
    # phash_b0..2: the hash's bands (`vision.phash.BANDS`), indexed for the near-duplicate search (migration 0009)
    __table_args__ = (Index("ix_listings_phash", "phash"), Index("ix_listings_risk_id", "risk", "id"),
                      Index("ix_listings_brand_id_id", "brand_id", "id"), Index("ix_listings_phash_b0", "phash_b0"),
                      Index("ix_listings_phash_b1", "phash_b1"), Index("ix_listings_phash_b2", "phash_b2"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    listing_id: Mapped[str | None] = mapped_column(String(200), index=True)
    seller_id: Mapped[str | None] = mapped_column(String(200), index=True)
    brand_id: Mapped[int | None] = mapped_column(ForeignKey("brands.id", ondelete="SET NULL"))
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    phash: Mapped[int | None] = mapped_column(BigInteger)  # 64-bit perceptual hash as signed int64
    phash_b0: Mapped[int | None] = mapped_column(Integer)  # set with phash (`_bands`), never by hand
    phash_b1: Mapped[int | None] = mapped_column(Integer)
    phash_b2: Mapped[int | None] = mapped_column(Integer)
    risk: Mapped[float] = mapped_column(Float)
    decision: Mapped[str] = mapped_column(String(20))
    model_tag: Mapped[str] = mapped_column(String(200))
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    scored_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)

    @validates("phash")
    def _bands(self, _key: str, value: int | None) -> int | None:
        self.phash_b0, self.phash_b1, self.phash_b2 = band_keys(value) if value is not None else (None, None, None)
        return value


class ListingSerial(Base):
    __tablename__ = "listing_serials"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    listing_row_id: Mapped[int] = mapped_column(BigId, ForeignKey("listings.id", ondelete="CASCADE"))
    brand_id: Mapped[int | None] = mapped_column(ForeignKey("brands.id", ondelete="SET NULL"))
    serial_hmac: Mapped[str] = mapped_column(String(64), index=True)


class GenuineSerial(Base):
    """A brand's registered genuine serial, as a keyed hash (HMAC with the home's secret). A row written
    by an import (`import_id`) counts once that import has finished (migration 0012)."""

    __tablename__ = "genuine_serials"

    brand_id: Mapped[int] = mapped_column(ForeignKey("brands.id", ondelete="CASCADE"), primary_key=True)
    serial_hmac: Mapped[str] = mapped_column(String(64), primary_key=True)
    import_id: Mapped[int | None] = mapped_column(Integer, index=True)  # None: registered before 0012


class SerialImport(Base):
    """One serial import: its rows count from `finished_at`; an import that never finished (killed) is
    removed, rows and all, by the brand's next import."""

    __tablename__ = "serial_imports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    brand_id: Mapped[int] = mapped_column(ForeignKey("brands.id", ondelete="CASCADE"), index=True)
    started_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
