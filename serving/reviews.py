"""Moderators' reviews of scored listings: labelled data for retraining, and references that teach.

A review names a listing that was scored: the catalog row a moderator opened (the console), or its
`listing_id` (the API and CLI; the newest score of it), whichever way it was scored (CLI, API or scan:
each keeps the photo). Its label moves the listing's photo between the brand's references, so the next
score of that photo sees the moderator's word:

- `counterfeit`: the photo becomes a known-fake reference of the listing's brand (unless it already is);
  a genuine reference an earlier review made of it is removed.
- `genuine`: a known fake an earlier review made of the photo is removed and, when the brand allows
  (`genuine_from_reviews`), the photo becomes a genuine reference.

Every review is kept, with who made it, when, the reference it added and the one it removed. A listing
another moderator has claimed (`serving.listings`) cannot be reviewed until the claim ends; a review
ends its reviewer's own claim.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from markguard.serving.enroll import InputImage, enroll
from markguard.serving.references import delete_references
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Base, BigId, Brand, Listing, Reference, ReferenceKind, UtcDateTime
from markguard.vision.artifact import ModelArtifact
from markguard.vision.embed import Embedder
from markguard.vision.errors import Conflict, NotFound

__all__ = ["Review", "ReviewReport", "record_review", "list_reviews", "MAX_REVIEWS_PAGE"]

MAX_REVIEWS_PAGE = 500  # reviews listed per call


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Review(Base):
    """One moderator's label on one scored listing (migrations 0002, 0004)."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    listing_row_id: Mapped[int] = mapped_column(BigId, ForeignKey("listings.id", ondelete="CASCADE"), index=True)
    brand_id: Mapped[int | None] = mapped_column(ForeignKey("brands.id", ondelete="SET NULL"))
    label: Mapped[ReferenceKind] = mapped_column(String(20))
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    reviewer_key_id: Mapped[str] = mapped_column(String(32))
    note: Mapped[str] = mapped_column(String(2000), default="")
    reference_id: Mapped[int | None] = mapped_column(Integer)  # the reference this review added
    removed_reference_id: Mapped[int | None] = mapped_column(Integer)  # the one an earlier review added, removed
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)



@dataclasses.dataclass(frozen=True)
class ReviewReport:
    review_id: int
    listing_id: str
    label: str
    brand: str | None
    reference_id: int | None  # the reference the review added
    removed_reference_id: int | None = None  # the reference an earlier review had added, now removed
    reviewer: str | None = None
    note: str = ""
    created_at: str | None = None


def _report(review: Review, listing_id: str, brand: str | None) -> ReviewReport:
    return ReviewReport(review.id, listing_id, str(review.label), brand, review.reference_id,
                        review.removed_reference_id, review.reviewer_key_id, review.note,
                        review.created_at.isoformat() if review.created_at else None)


def record_review(
    home: Home,
    artifact: ModelArtifact,
    model: Embedder,
    *,
    label: ReferenceKind,
    reviewer_key_id: str,
    listing_id: str | None = None,
    row_id: int | None = None,
    note: str = "",
    brand_id: int | None = None,
) -> ReviewReport:
    """Label catalog row `row_id` (the score a moderator saw), or else the newest score of `listing_id`;
    `brand_id` (a brand-scoped caller) hides other brands' listings."""
    if (row_id is None) == (listing_id is None):
        raise TypeError("record_review takes a listing_id or a row_id")
    label = ReferenceKind(label)
    with home.sessions() as session:
        query = select(Listing).where(Listing.id == row_id if row_id is not None else Listing.listing_id == listing_id)
        if brand_id is not None:
            query = query.where(Listing.brand_id == brand_id)
        listing = session.scalars(query.order_by(Listing.id.desc()).limit(1)).first()
        if listing is None:
            raise NotFound(f"no scored listing {listing_id if row_id is None else row_id!r}")
        if listing.listing_id is None:  # a review is reported (and listed) by listing id
            raise Conflict("this listing has no listing id: it cannot be reviewed")
        brand = session.get(Brand, listing.brand_id) if listing.brand_id is not None else None
        row_id, sha, listing_id = listing.id, listing.image_sha256, listing.listing_id
        _check_claim(session, row_id, reviewer_key_id, listing_id)
        if brand is None and label is ReferenceKind.COUNTERFEIT:
            raise Conflict("the listing matched no brand: it cannot become a known-fake reference")
        brand_name, learn_genuine = (brand.name, bool(brand.genuine_from_reviews)) if brand else (None, False)
    # reviews of one photo (this listing's, or another listing's of the same photo) take turns: each
    # reads what earlier reviews made of it and moves it, so two at once would act on the same reading
    # (both deleting one reference: a 404 for the second; or the later label left without its reference)
    with home.photo_lock(sha):
        return _apply_review(home, artifact, model, listing_id=listing_id, row_id=row_id, sha=sha, label=label,
                             brand_id=brand.id if brand else None, brand_name=brand_name,
                             learn_genuine=learn_genuine, reviewer_key_id=reviewer_key_id, note=note)


def _made_by_reviews(home: Home, sha: str, brand_id: int | None) -> dict[str, int]:
    """The references earlier reviews made of this photo for this brand, still in the catalog, by kind."""
    with home.sessions() as session:
        made = session.scalars(select(Reference).join(Review, Review.reference_id == Reference.id).where(
            Review.image_sha256 == sha, Reference.brand_id == (brand_id if brand_id is not None else -1))).all()
        return {r.kind: r.id for r in made}


def _apply_review(home: Home, artifact: ModelArtifact, model: Embedder, *, listing_id: str, row_id: int, sha: str,
                  label: ReferenceKind, brand_id: int | None, brand_name: str | None, learn_genuine: bool,
                  reviewer_key_id: str, note: str) -> ReviewReport:
    """The review's reference moves and its row, under the photo's lock."""
    made = _made_by_reviews(home, sha, brand_id)
    wanted = label if label is ReferenceKind.COUNTERFEIT or learn_genuine else None
    removed = None
    unwanted = [kind for kind in made if kind != wanted]
    for kind in unwanted:  # one review-made reference of a photo at most: the newest label's
        removed = delete_references(home, brand=brand_name, ids=[made[kind]])[0]
    reference_id = made.get(wanted) if wanted is not None else None
    if wanted is not None and reference_id is None:
        try:
            data = home.get_blob(sha)
        except FileNotFoundError:
            raise Conflict("the listing's photo was not kept: it cannot become a reference") from None
        report = enroll(home, artifact, model, brand=brand_name, kind=wanted,
                        inputs=[InputImage(f"listing:{listing_id}", data)])
        reference_id = report.added[0] if report.added else _existing(home, brand_name, sha, wanted)
    with home.sessions.begin() as session:
        review = Review(listing_row_id=row_id, brand_id=brand_id, label=label.value,
                        image_sha256=sha, reviewer_key_id=reviewer_key_id, note=note[:2000],
                        reference_id=reference_id, removed_reference_id=removed)
        session.add(review)
        session.flush()
        _release_own_claim(session, row_id, reviewer_key_id)  # the work it held the listing for is done
        return _report(review, listing_id, brand_name)


def _check_claim(session: Session, row_id: int, reviewer_key_id: str, listing_id: str) -> None:
    """Another moderator's running claim on the listing (serving.listings) refuses the review: 409."""
    from markguard.serving.listings import ReviewClaim

    claim = session.get(ReviewClaim, row_id)
    if claim is not None and claim.key_id != reviewer_key_id and claim.expires_at > _now():
        raise Conflict(f"listing {listing_id!r} is claimed by another moderator until "
                       f"{claim.expires_at.isoformat()}")


def _release_own_claim(session: Session, row_id: int, reviewer_key_id: str) -> None:
    from markguard.serving.listings import ReviewClaim

    session.execute(delete(ReviewClaim).where(ReviewClaim.listing_row_id == row_id,
                                              ReviewClaim.key_id == reviewer_key_id))


def _existing(home: Home, brand: str, sha: str, kind: ReferenceKind) -> int | None:
    """The reference of `brand` already holding this photo as `kind` (the brand enrolled it itself)."""
    with home.sessions() as session:
        return session.scalar(select(Reference.id).join(Brand, Brand.id == Reference.brand_id).where(
            Brand.name == brand, Reference.sha256 == sha, Reference.kind == kind))


def list_reviews(home: Home, *, listing_id: str | None = None, brand_id: int | None = None, after: int = 0,
                 limit: int = 100) -> list[ReviewReport]:
    """Reviews oldest first (keyset pages: `after` the last id seen); `brand_id` scopes to one brand."""
    with home.sessions() as session:
        query = (select(Review, Listing.listing_id, Brand.name).join(Listing, Listing.id == Review.listing_row_id)
                 .outerjoin(Brand, Brand.id == Review.brand_id).where(Review.id > after))
        if listing_id is not None:
            query = query.where(Listing.listing_id == listing_id)
        if brand_id is not None:
            query = query.where(Review.brand_id == brand_id)
        rows = session.execute(query.order_by(Review.id).limit(max(1, min(limit, MAX_REVIEWS_PAGE)))).all()
        return [_report(review, lid, brand) for review, lid, brand in rows]
