"""The intelligence tables (migration 0005): listing evidence, seller edges, rings, exports, sharing; and
the listings the network has taken in (migration 0011)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from markguard.serving.state.schema import Base, BigId

__all__ = ["ListingEvidence", "SellerEdge", "Ring", "RingMember", "RingState", "RingListing", "RingFakeRef",
           "CaseExport",
           "BrandSharing"]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ListingEvidence(Base):
    """What a scored listing adds to the network beyond its `listings` row: its full-photo vector and
    the known-fake references it matched. Written when it is scored, or computed from its kept photo."""

    __tablename__ = "listing_evidence"

    listing_row_id: Mapped[int] = mapped_column(ForeignKey("listings.id", ondelete="CASCADE"), primary_key=True)
    model_tag: Mapped[str] = mapped_column(String(200))
    vector: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32, unit norm; None: photo not kept
    fake_refs: Mapped[list[int]] = mapped_column(JSON, default=list)  # counterfeit references matched
    listed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))  # when the feed says it was listed
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class SellerEdge(Base):
    """Evidence of one kind linking two sellers (`seller_a` < `seller_b`): its weight, how many listing
    pairs show it and a few of them (listing row ids) to look at."""

    __tablename__ = "seller_edges"
    __table_args__ = (Index("ix_seller_edges_b", "seller_b"),)

    seller_a: Mapped[str] = mapped_column(String(200), primary_key=True)
    seller_b: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), primary_key=True)
    weight: Mapped[float] = mapped_column(Float)
    count: Mapped[int] = mapped_column(Integer, default=1)
    examples: Mapped[list[Any]] = mapped_column(JSON, default=list)  # [[row a, row b, detail], ...]
    first_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class Ring(Base):
    __tablename__ = "rings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    score: Mapped[float] = mapped_column(Float)
    sellers: Mapped[int] = mapped_column(Integer)
    listings: Mapped[int] = mapped_column(Integer)
    brand_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    flagged_share: Mapped[float] = mapped_column(Float)  # listings flagged (review/takedown) or confirmed fake
    first_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    dissolved_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class RingMember(Base):
    __tablename__ = "ring_members"

    ring_id: Mapped[int] = mapped_column(ForeignKey("rings.id", ondelete="CASCADE"), primary_key=True)
    seller_id: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)


class RingState(Base):
    """One row: the newest listing the network has taken in (incremental updates start after it)."""

    __tablename__ = "ring_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_listing_row: Mapped[int] = mapped_column(Integer, default=0)
    # False for a network built before `ring_listings` (migration 0011): the next update fills it first
    listings_kept: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class RingListing(Base):
    """A listing the network has taken in, as an update looks older listings up: its title template (with
    the brand words of the day it was taken in) under an indexed key, and its seller."""

    __tablename__ = "ring_listings"

    listing_row_id: Mapped[int] = mapped_column(BigId, ForeignKey("listings.id", ondelete="CASCADE"), primary_key=True)
    seller_id: Mapped[str] = mapped_column(String(200))
    template: Mapped[str | None] = mapped_column(Text)
    template_key: Mapped[str | None] = mapped_column(String(64), index=True)  # sha256 of the template


class RingFakeRef(Base):
    """A known-fake reference a taken-in listing matched (`ListingEvidence.fake_refs`, by reference)."""

    __tablename__ = "ring_fake_refs"

    reference_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    listing_row_id: Mapped[int] = mapped_column(BigId, ForeignKey("listings.id", ondelete="CASCADE"), primary_key=True)


class CaseExport(Base):
    """The audit log of case exports: who exported which ring, when, and the bundle's manifest hash."""

    __tablename__ = "case_exports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ring_id: Mapped[int] = mapped_column(Integer, index=True)
    actor: Mapped[str] = mapped_column(String(200))  # an API key id, or `cli:<user>`
    role: Mapped[str] = mapped_column(String(20))
    brand_id: Mapped[int | None] = mapped_column(Integer)  # the brand a brand-scoped export was cut to
    files: Mapped[int] = mapped_column(Integer)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class BrandSharing(Base):
    """A brand's opt-in to share its known-fake references with the alliance (all, or `reference_ids`)."""

    __tablename__ = "brand_sharing"

    brand_id: Mapped[int] = mapped_column(ForeignKey("brands.id", ondelete="CASCADE"), primary_key=True)
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    reference_ids: Mapped[list[int] | None] = mapped_column(JSON)  # None: every counterfeit reference
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
