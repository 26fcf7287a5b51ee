"""What the console's pages read from the catalog: the review queue, one listing with its neighbours,
a brand's gallery and listings. Every query takes the caller's brand scope (`brand_id`, None for staff),
so a brand key never reads another brand's rows."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import Session, aliased

from markguard.serving.reviews import Review
from markguard.serving.state.schema import Brand, Listing, ListingSerial, Product, Reference
from markguard.vision.errors import NotFound

__all__ = ["QueueFilter", "queue", "listing_page", "brand_gallery", "brand_listings", "reference_row",
           "listing_row"]

FLAGGED = ("review", "takedown")
ORDERS = ("newest", "risk")


@dataclasses.dataclass(frozen=True)
class QueueFilter:
    order: str = "newest"  # newest | risk
    decision: str = "flagged"  # flagged | review | takedown | pass | any
    reviewed: str = "no"  # no | yes | any
    brand: str | None = None
    seller: str | None = None
    min_risk: float | None = None
    max_risk: float | None = None
    limit: int = 50


def _latest():
    """Only the newest score of each listing id (reviews label the newest)."""
    newer = aliased(Listing)
    return ~exists().where(and_(newer.listing_id == Listing.listing_id, newer.id > Listing.id))


def _reviewed():
    scored = aliased(Listing)
    return exists().where(and_(Review.listing_row_id == scored.id, scored.listing_id == Listing.listing_id))


def queue(session: Session, f: QueueFilter, *, brand_id: int | None) -> list[dict[str, Any]]:
    """The listings waiting for a moderator (newest score of each listing id), newest or riskiest first."""
    query = (select(Listing, Brand.name).outerjoin(Brand, Brand.id == Listing.brand_id)
             .where(Listing.listing_id.is_not(None), _latest()))
    if brand_id is not None:
        query = query.where(Listing.brand_id == brand_id)
    if f.brand:
        query = query.where(func.lower(Brand.name) == f.brand.casefold())
    if f.seller:
        query = query.where(Listing.seller_id == f.seller)
    if f.decision == "flagged":
        query = query.where(Listing.decision.in_(FLAGGED))
    elif f.decision in ("review", "takedown", "pass"):
        query = query.where(Listing.decision == f.decision)
    if f.min_risk is not None:
        query = query.where(Listing.risk >= f.min_risk)
    if f.max_risk is not None:
        query = query.where(Listing.risk <= f.max_risk)
    if f.reviewed == "no":
        query = query.where(~_reviewed())
    elif f.reviewed == "yes":
        query = query.where(_reviewed())
    order = (Listing.risk.desc(), Listing.id.desc()) if f.order == "risk" else (Listing.id.desc(),)
    rows = session.execute(query.order_by(*order).limit(f.limit)).all()
    return [_summary(row, brand) for row, brand in rows]


def _summary(row: Listing, brand: str | None) -> dict[str, Any]:
    result = row.result or {}
    return {"row": row.id, "listing_id": row.listing_id, "seller_id": row.seller_id, "brand": brand,
            "risk": row.risk, "decision": row.decision, "title": (result.get("claimed") or {}).get("title"),
            "scored_at": _utc(row.scored_at)}


def _utc(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    value = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def listing_row(session: Session, row_id: int, *, brand_id: int | None) -> Listing:
    row = session.get(Listing, row_id)
    if row is None or (brand_id is not None and row.brand_id != brand_id):
        raise NotFound(f"no listing {row_id}")
    return row


def listing_page(session: Session, row_id: int, *, brand_id: int | None) -> dict[str, Any]:
    """One scored listing with what a moderator weighs: its result, earlier listings with the same photo
    or serial, and whether a newer score replaced it."""
    row = listing_row(session, row_id, brand_id=brand_id)
    brand = session.get(Brand, row.brand_id).name if row.brand_id is not None else None
    same_photo = select(Listing).where(Listing.image_sha256 == row.image_sha256, Listing.id != row.id)
    serials = select(ListingSerial.serial_hmac).where(ListingSerial.listing_row_id == row.id)
    same_serial = (select(Listing).join(ListingSerial, ListingSerial.listing_row_id == Listing.id)
                   .where(ListingSerial.serial_hmac.in_(serials), Listing.id != row.id))
    if brand_id is not None:  # another brand's listings stay out of sight
        same_photo = same_photo.where(Listing.brand_id == brand_id)
        same_serial = same_serial.where(Listing.brand_id == brand_id)
    names = dict(session.execute(select(Brand.id, Brand.name)).all())
    earlier: dict[int, dict[str, Any]] = {}
    for why, query in (("same photo", same_photo), ("same serial", same_serial)):
        for other in session.scalars(query.order_by(Listing.id.desc()).limit(20)):
            item = earlier.setdefault(other.id, {**_summary(other, names.get(other.brand_id)), "why": []})
            if why not in item["why"]:
                item["why"].append(why)
    newer = session.scalar(select(func.max(Listing.id)).where(Listing.listing_id == row.listing_id)) \
        if row.listing_id else row.id
    return {**_summary(row, brand), "result": row.result or {}, "model": row.model_tag,
            "earlier": sorted(earlier.values(), key=lambda x: -x["row"]),
            "newest_row": newer if newer and newer != row.id else None}


def reference_row(session: Session, reference_id: int, *, brand_id: int | None) -> Reference:
    ref = session.get(Reference, reference_id)
    if ref is None or (brand_id is not None and ref.brand_id != brand_id):
        raise NotFound(f"no reference {reference_id}")
    return ref


def brand_gallery(session: Session, brand: Brand) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The brand's references by product (None: the brand as a whole), then by kind."""
    rows = session.execute(select(Reference, Product.name).outerjoin(Product, Product.id == Reference.product_id)
                           .where(Reference.brand_id == brand.id).order_by(Product.name, Reference.id)).all()
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for ref, product in rows:
        kinds = out.setdefault(product or "(any product)", {"genuine": [], "counterfeit": []})
        kinds[ref.kind.value].append({"id": ref.id, "width": ref.width, "height": ref.height,
                                      "source": ref.source.rsplit("/", 1)[-1][-80:]})
    return out


def brand_listings(session: Session, brand: Brand, *, limit: int = 100) -> list[dict[str, Any]]:
    """The brand's listings, newest first, with the last review's label."""
    rows = session.execute(select(Listing).where(Listing.brand_id == brand.id)
                           .order_by(Listing.id.desc()).limit(limit)).scalars().all()
    labels = dict(session.execute(select(Review.listing_row_id, Review.label)
                                  .where(Review.listing_row_id.in_([r.id for r in rows])).order_by(Review.id)).all())
    return [{**_summary(r, brand.name), "review": str(labels[r.id]) if r.id in labels else None} for r in rows]
