"""Moderators' reviews of scored listings: labelled data for retraining, and known fakes for the index.

A review names a listing the service scored (its `listing_id`, the newest score of it). The label is
kept in `reviews`; a counterfeit label also enrolls the listing's photo (kept as a blob when it was
scored over the API) as a `kind=counterfeit` reference of the listing's brand.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import DateTime, ForeignKey, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from markguard.serving.enroll import InputImage, enroll
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Base, Brand, Listing, ReferenceKind
from markguard.vision.artifact import ModelArtifact
from markguard.vision.embed import Embedder
from markguard.vision.errors import MarkguardError, NotFound

__all__ = ["Review", "ReviewReport", "record_review"]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Review(Base):
    """One moderator's label on one scored listing (migration 0002)."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    listing_row_id: Mapped[int] = mapped_column(ForeignKey("listings.id", ondelete="CASCADE"), index=True)
    brand_id: Mapped[int | None] = mapped_column(ForeignKey("brands.id", ondelete="SET NULL"))
    label: Mapped[ReferenceKind] = mapped_column(String(20))
    image_sha256: Mapped[str] = mapped_column(String(64))
    reviewer_key_id: Mapped[str] = mapped_column(String(32))
    note: Mapped[str] = mapped_column(String(2000), default="")
    reference_id: Mapped[int | None] = mapped_column(Integer)  # the known-fake reference it became
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


@dataclasses.dataclass(frozen=True)
class ReviewReport:
    review_id: int
    listing_id: str
    label: str
    brand: str | None
    reference_id: int | None


def record_review(
    home: Home,
    artifact: ModelArtifact,
    model: Embedder,
    *,
    listing_id: str,
    label: ReferenceKind,
    reviewer_key_id: str,
    note: str = "",
    brand_id: int | None = None,
) -> ReviewReport:
    """Label the newest score of `listing_id`; `brand_id` (a brand-scoped caller) hides other brands' listings."""
    with home.sessions() as session:
        query = select(Listing).where(Listing.listing_id == listing_id)
        if brand_id is not None:
            query = query.where(Listing.brand_id == brand_id)
        listing = session.scalars(query.order_by(Listing.id.desc()).limit(1)).first()
        if listing is None:
            raise NotFound(f"no scored listing {listing_id!r}")
        brand = session.get(Brand, listing.brand_id) if listing.brand_id is not None else None
        row_id, sha = listing.id, listing.image_sha256
    reference_id = None
    if label is ReferenceKind.COUNTERFEIT:
        if brand is None:
            raise MarkguardError("the listing matched no brand: it cannot become a known-fake reference")
        try:
            data = home.get_blob(sha)
        except FileNotFoundError:
            raise MarkguardError("the listing's photo was not kept (scored outside the API)") from None
        report = enroll(home, artifact, model, brand=brand.name, kind=ReferenceKind.COUNTERFEIT,
                        inputs=[InputImage(f"listing:{listing_id}", data)])
        if report.added:
            reference_id = report.added[0]
    with home.sessions.begin() as session:
        review = Review(listing_row_id=row_id, brand_id=brand.id if brand else None, label=label.value,
                        image_sha256=sha, reviewer_key_id=reviewer_key_id, note=note[:2000],
                        reference_id=reference_id)
        session.add(review)
        session.flush()
        review_id = review.id
    return ReviewReport(review_id, listing_id, label.value, brand.name if brand else None, reference_id)
