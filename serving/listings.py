"""Scored listings for people: the review queue, one listing with its evidence, photos, and claims.

Everything here is a plain function over a `Home`, so the console calls it directly and the HTTP
routes (`serving.routes.listings`) are thin. `visible_to` is a brand id for a brand-scoped caller
(another brand's listings and references do not exist for it: `NotFound`), None for everyone else.

- `list_listings`: filters (decision, brand, risk range, reviewed, seller, time, unclaimed), newest or
  riskiest first, keyset pages: `next` is an opaque cursor holding the last row's sort key, never an
  offset, so a page costs the same however deep it is and rows scored meanwhile do not shift it.
- `listing_detail`: the stored result (`stored_result`), the reviews of the listing, earlier listings of the same photo
  (same bytes or the same perceptual hash) or of a serial it showed. A brand-scoped caller sees the stored
  result cut to its brand (`_visible_result`), here and drawn in `evidence_png`.
- `listing_photo`, `reference_photo`: the kept bytes and their media type; `evidence_png`: the photo
  with matched regions, OCR lines and serial reads drawn and labelled (OpenCV), its decoded pixels
  charged to the process's budget (`serving.budget.draw_budget`).
- `claim_listing`, `release_claim`: a moderator holds a listing for `CLAIM_TTL`; concurrent claims of
  one listing are decided by the database (a primary-key insert, then a conditional update of an
  expired claim), so exactly one wins on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import difflib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from sqlalchemy import ForeignKey, String, and_, delete, exists, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from markguard.serving.brands import get_brand
from markguard.serving.budget import draw_budget
from markguard.serving.reviews import Review
from markguard.serving.serials import record_serials
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Base, BigId, Brand, Listing, ListingSerial, Reference, UtcDateTime
from markguard.vision.decode import decode_image, sniff_format
from markguard.vision.errors import Conflict, MarkguardError, NotFound
from markguard.vision.text import serial_key

__all__ = [
    "ReviewClaim", "ListingFilters", "ListingPage", "Order", "CLAIM_TTL", "MAX_PAGE", "MAX_ID",
    "list_listings", "listing_detail", "listing_photo", "reference_photo", "evidence_png",
    "claim_listing", "release_claim", "stored_result", "record_listing", "serials_of",
]

MAX_PAGE = 200  # listings per page
DEFAULT_PAGE = 50
MAX_ID = 2**63 - 1  # catalog ids are signed 64-bit
MAX_RELATED = 20  # earlier listings named per kind in a detail
CLAIM_TTL = dt.timedelta(minutes=10)
EVIDENCE_LONG_SIDE = 1600  # px: evidence images are drawn on a copy at most this large
EVIDENCE_MIN_SIDE = 800  # px: and at least this large (small photos are enlarged for legible labels)
Order = str  # "newest" | "riskiest"
ORDERS = ("newest", "riskiest")
_MEDIA = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ReviewClaim(Base):
    """A moderator's hold on one listing until `expires_at` (migration 0006); one row per listing."""

    __tablename__ = "review_claims"

    listing_row_id: Mapped[int] = mapped_column(BigId, ForeignKey("listings.id", ondelete="CASCADE"),
                                                primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32))  # the moderator's API key id
    claimed_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=_now)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)


# -- what a listing stores ---------------------------------------------------------------------------
def stored_result(score: dict[str, Any]) -> dict[str, Any]:
    """The score JSON as a listing keeps it, the same whichever way it was scored (API, CLI or scan):
    everything `/score` answered except the caller's file name (`image`) and the time it took, plus
    what drawing the evidence needs and the answer leaves out: each serial's OCR line and its box."""
    out = {k: v for k, v in score.items() if k not in ("image", "elapsed_ms")}
    title = (score.get("claimed") or {}).get("title")
    if title is not None:
        out["title"] = title  # where the intelligence code reads it
    ocr = out.get("ocr")
    if isinstance(ocr, dict) and ocr.get("serials"):
        lines = ocr.get("lines") or []
        serials = []
        for serial in ocr["serials"]:
            line = _serial_line(serial, lines)
            serials.append({**serial, "line": line, "box": lines[line]["box"] if line is not None else None})
        out["ocr"] = {**ocr, "serials": serials}
    return out


def serials_of(score: Mapping[str, Any]) -> list[str]:
    """The serials of a score JSON worth remembering: those the brand's pattern does not reject (as
    `serving.serials.serials_to_record` on the evidence)."""
    return [s["normalized"] for s in (score.get("ocr") or {}).get("serials", []) if s["format_ok"] is not False]


def record_listing(session: Session, home: Home, score: dict[str, Any], *, listing_id: str | None,
                   seller_id: str | None, sha256: str, photo_hash: int | None, brand_id: int | None) -> Listing:
    """The one writer of `Listing` rows, for `/score` and the CLI (`ScoringEngine.record`) and for scans
    (`serving.scan.record`): adds (and flushes) the listing row of one score JSON (`ScoreResult.to_dict()`)
    with its `stored_result`, and its serials, in the caller's transaction. `brand_id` is the judged
    brand's (the claimed one, or the best-matching one of an unclaimed photo), as the judge knew it."""
    row = Listing(listing_id=listing_id, seller_id=seller_id, brand_id=brand_id, image_sha256=sha256,
                  phash=photo_hash, risk=score["risk"], decision=score["decision"], model_tag=score["model"],
                  result=stored_result(score))
    session.add(row)
    session.flush()
    serials = serials_of(score)
    if serials:
        record_serials(session, home, listing_row_id=row.id, brand_id=brand_id, normalized_serials=serials)
    return row


def _serial_line(serial: dict[str, Any], lines: Sequence[dict[str, Any]]) -> int | None:
    """The OCR line a serial was read from: the line holding its characters, else (a re-read with the
    brand's alphabet changed some) the most similar line with digits."""
    keys = {serial_key(serial.get("text") or ""), serial_key(serial.get("normalized") or "")} - {""}
    texts = [serial_key(line.get("text") or "") for line in lines]
    for i, text in enumerate(texts):
        if any(k in text for k in keys):
            return i
    best, best_ratio = None, 0.5
    for i, text in enumerate(texts):
        if sum(c.isdigit() for c in text) < 2:
            continue
        ratio = max((_window_ratio(k, text) for k in keys), default=0.0)
        if ratio > best_ratio:
            best, best_ratio = i, ratio
    return best


def _window_ratio(key: str, text: str) -> float:
    """How alike `key` is to the most alike stretch of `text` of its length (1.0: it is in there)."""
    n = len(key)
    windows = [text[i : i + n] for i in range(max(1, len(text) - n + 1))]
    return max(difflib.SequenceMatcher(None, key, w).ratio() for w in windows)


# -- the queue ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ListingFilters:
    decision: str | None = None
    brand: str | None = None
    min_risk: float | None = None
    max_risk: float | None = None
    reviewed: bool | None = None
    seller: str | None = None
    since: dt.datetime | None = None  # scored at or after
    until: dt.datetime | None = None  # scored before
    unclaimed_for: str | None = None  # a moderator's key id: skip listings others hold


@dataclasses.dataclass(frozen=True)
class ListingPage:
    listings: list[dict[str, Any]]
    next: str | None  # the cursor of the following page; None: this was the last


def _encode_cursor(order: str, row: Listing) -> str:
    key = [row.id] if order == "newest" else [row.risk, row.id]
    raw = json.dumps({"o": order, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(order: str, cursor: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        key = data["k"]
        ok = data["o"] == order and isinstance(key, list) and len(key) == (1 if order == "newest" else 2)
        ok = ok and isinstance(key[-1], int) and not isinstance(key[-1], bool) and 0 <= key[-1] <= MAX_ID
        if ok and order == "riskiest":
            ok = isinstance(key[0], int | float) and not isinstance(key[0], bool) and math.isfinite(key[0])
            key = [float(key[0]), key[1]]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError):
        ok = False
    if not ok:
        raise MarkguardError("cursor: not a cursor of this listing order (pass `next` back unchanged)")
    return key


def _brand_id(session: Session, name: str, visible_to: int | None) -> int:
    try:
        row = get_brand(session, name)
    except NotFound:
        raise NotFound(f"unknown brand {name!r}") from None
    if visible_to is not None and row.id != visible_to:
        raise NotFound(f"unknown brand {name!r}")
    return row.id


def _reviewed() -> Any:
    return exists().where(Review.listing_row_id == Listing.id)


def list_listings(home: Home, filters: ListingFilters = ListingFilters(), *, order: str = "newest",
                  cursor: str | None = None, limit: int = DEFAULT_PAGE, visible_to: int | None = None,
                  now: dt.datetime | None = None) -> ListingPage:
    """One page of scored listings, newest (highest row id) or riskiest (risk, then row id) first."""
    if order not in ORDERS:
        raise MarkguardError(f"order must be one of {', '.join(ORDERS)}")
    limit = max(1, min(int(limit), MAX_PAGE))
    now = now or _now()
    f = filters
    with home.sessions() as session:
        query = select(Listing)
        if visible_to is not None:
            query = query.where(Listing.brand_id == visible_to)
        if f.brand is not None:
            query = query.where(Listing.brand_id == _brand_id(session, f.brand, visible_to))
        if f.decision is not None:
            query = query.where(Listing.decision == f.decision)
        if f.min_risk is not None:
            query = query.where(Listing.risk >= f.min_risk)
        if f.max_risk is not None:
            query = query.where(Listing.risk <= f.max_risk)
        if f.seller is not None:
            query = query.where(Listing.seller_id == f.seller)
        if f.since is not None:
            query = query.where(Listing.scored_at >= f.since)
        if f.until is not None:
            query = query.where(Listing.scored_at < f.until)
        if f.reviewed is not None:
            query = query.where(_reviewed() if f.reviewed else ~_reviewed())
        if f.unclaimed_for is not None:
            query = query.where(~exists().where(
                ReviewClaim.listing_row_id == Listing.id, ReviewClaim.expires_at > now,
                ReviewClaim.key_id != f.unclaimed_for))
        if order == "newest":
            if cursor is not None:
                query = query.where(Listing.id < _decode_cursor(order, cursor)[0])
            query = query.order_by(Listing.id.desc())
        else:
            if cursor is not None:
                risk, last = _decode_cursor(order, cursor)
                query = query.where(or_(Listing.risk < risk, and_(Listing.risk == risk, Listing.id < last)))
            query = query.order_by(Listing.risk.desc(), Listing.id.desc())
        rows = list(session.scalars(query.limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        items = _summaries(session, rows, now=now)
    return ListingPage(items, _encode_cursor(order, rows[-1]) if more else None)


def _summaries(session: Session, rows: Sequence[Listing], *, now: dt.datetime) -> list[dict[str, Any]]:
    ids = [r.id for r in rows]
    if not ids:
        return []
    brand_ids = {r.brand_id for r in rows if r.brand_id is not None}
    brands = dict(session.execute(select(Brand.id, Brand.name).where(Brand.id.in_(brand_ids))).all()) if brand_ids else {}
    last_label: dict[int, str] = {}
    for row_id, label in session.execute(select(Review.listing_row_id, Review.label)
                                         .where(Review.listing_row_id.in_(ids)).order_by(Review.id)):
        last_label[row_id] = str(label)
    claims = {c.listing_row_id: c for c in session.scalars(select(ReviewClaim).where(
        ReviewClaim.listing_row_id.in_(ids), ReviewClaim.expires_at > now))}
    return [_summary(r, brands.get(r.brand_id), last_label.get(r.id), claims.get(r.id)) for r in rows]


def _summary(row: Listing, brand: str | None, label: str | None, claim: ReviewClaim | None) -> dict[str, Any]:
    return {
        "id": row.id, "listing_id": row.listing_id, "seller_id": row.seller_id, "brand": brand,
        "risk": row.risk, "decision": row.decision, "model": row.model_tag,
        "title": (row.result or {}).get("title"), "scored_at": row.scored_at.isoformat(),
        "reviewed": label is not None, "review_label": label,
        "claim": _claim_dict(claim) if claim is not None else None,
    }


def _claim_dict(claim: ReviewClaim) -> dict[str, Any]:
    return {"listing": claim.listing_row_id, "moderator": claim.key_id,
            "claimed_at": claim.claimed_at.isoformat(), "expires_at": claim.expires_at.isoformat()}


# -- one listing -------------------------------------------------------------------------------------
def _listing(session: Session, row_id: int, visible_to: int | None) -> Listing:
    row = session.get(Listing, row_id)
    if row is None or (visible_to is not None and row.brand_id != visible_to):
        raise NotFound(f"no listing {row_id}")
    return row


def listing_detail(home: Home, row_id: int, *, visible_to: int | None = None,
                   now: dt.datetime | None = None) -> dict[str, Any]:
    """The listing's summary, its stored result, its reviews (oldest first) and earlier listings that
    showed the same photo (bytes or perceptual hash) or one of its serials (newest first)."""
    from markguard.serving.reviews import _report

    now = now or _now()
    with home.sessions() as session:
        row = _listing(session, row_id, visible_to)
        summary = _summaries(session, [row], now=now)[0]
        brand = summary["brand"]
        reviews = [dataclasses.asdict(_report(r, row.listing_id or "", brand)) for r in session.scalars(
            select(Review).where(Review.listing_row_id == row.id).order_by(Review.id))]
        scope = Listing.brand_id == visible_to if visible_to is not None else true()
        same = Listing.image_sha256 == row.image_sha256
        if row.phash is not None:
            same = or_(same, Listing.phash == row.phash)
        photo = list(session.scalars(select(Listing).where(Listing.id < row.id, same, scope)
                                     .order_by(Listing.id.desc()).limit(MAX_RELATED)))
        hmacs = select(ListingSerial.serial_hmac).where(ListingSerial.listing_row_id == row.id)
        serial = list(session.scalars(
            select(Listing).where(Listing.id < row.id, scope, Listing.id.in_(
                select(ListingSerial.listing_row_id).where(ListingSerial.serial_hmac.in_(hmacs))))
            .order_by(Listing.id.desc()).limit(MAX_RELATED)))
        earlier = {"same_photo": _summaries(session, photo, now=now), "same_serial": _summaries(session, serial, now=now)}
    result = _visible_result(row.result, brand=brand, visible_to=visible_to)
    return {**summary, "image_sha256": row.image_sha256, "result": result, "reviews": reviews, "earlier": earlier}


def _visible_result(result: Mapping[str, Any] | None, *, brand: str | None, visible_to: int | None) -> dict[str, Any]:
    """A listing's stored result as its caller may see it. It may name other brands' references (matches)
    and listings (`duplicates`, counted by `duplicates_total`): a brand-scoped caller (`visible_to`) gets
    only the matches of the listing's `brand` and no duplicates; everyone else gets all of it."""
    out = dict(result or {})
    if visible_to is not None:
        out["matches"] = [m for m in out.get("matches") or [] if m.get("brand") == brand]
        out.pop("duplicates", None)
        out.pop("duplicates_total", None)
    return out


def _media(data: bytes) -> str:
    return _MEDIA[sniff_format(data).value.lower()]


def _blob(home: Home, sha: str, what: str) -> bytes:
    try:
        return home.get_blob(sha)
    except FileNotFoundError:
        raise NotFound(f"{what}: the photo was not kept") from None


def listing_photo(home: Home, row_id: int, *, visible_to: int | None = None) -> tuple[bytes, str]:
    """The listing's photo as it was uploaded, and its media type."""
    with home.sessions() as session:
        sha = _listing(session, row_id, visible_to).image_sha256
    data = _blob(home, sha, f"listing {row_id}")
    return data, _media(data)


def reference_photo(home: Home, reference_id: int, *, visible_to: int | None = None) -> tuple[bytes, str]:
    """A reference's enrolled image, and its media type."""
    with home.sessions() as session:
        ref = session.get(Reference, reference_id)
        if ref is None or (visible_to is not None and ref.brand_id != visible_to):
            raise NotFound(f"no reference {reference_id}")
        sha = ref.sha256
    data = _blob(home, sha, f"reference {reference_id}")
    return data, _media(data)


# -- the evidence, drawn -----------------------------------------------------------------------------
_GENUINE, _FAKE, _TEXT, _SERIAL_OK, _SERIAL_BAD = (40, 170, 60), (220, 40, 40), (40, 110, 230), (230, 150, 0), (200, 0, 200)


def evidence_png(home: Home, row_id: int, *, visible_to: int | None = None) -> bytes:
    """The listing's photo (upright, long side between `EVIDENCE_MIN_SIDE` and `EVIDENCE_LONG_SIDE`) with its evidence drawn and labelled:
    matched regions (green: genuine reference, red: known fake; the reference and similarity), OCR
    lines (blue, their text) and serial reads (orange, magenta when the format or checksum fails or
    the registry does not know it). A brand-scoped caller sees what `listing_detail` shows it."""
    with home.sessions() as session:
        row = _listing(session, row_id, visible_to)
        brand = session.get(Brand, row.brand_id) if row.brand_id is not None else None
        sha = row.image_sha256
        result = _visible_result(row.result, brand=brand.name if brand else None, visible_to=visible_to)
    data = _blob(home, sha, f"listing {row_id}")
    draw_budget().charge_image(data, f"listing {row_id}")  # 503 while the process holds its share of pixels
    return draw_evidence(decode_image(data), result)


def draw_evidence(image: np.ndarray, result: dict[str, Any]) -> bytes:
    """PNG bytes of `image` (RGB) with `result`'s boxes drawn (see `evidence_png`)."""
    h, w = image.shape[:2]
    # large photos drawn smaller, small ones larger: labels stay legible either way
    scale = min(EVIDENCE_LONG_SIDE, max(EVIDENCE_MIN_SIDE, max(h, w))) / max(h, w)
    canvas = image
    if scale != 1.0:  # resized first: no second full-size copy of a large photo
        canvas = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)  # a copy: `image` is not drawn on
    thick = max(2, round(max(canvas.shape[:2]) / 400))
    labels: list[tuple[str, tuple[int, int], tuple[int, int, int], bool]] = []  # drawn after every box

    def box(b: Sequence[float], rgb: tuple[int, int, int], label: str, *, below: bool = False) -> None:
        x0, y0, x1, y1 = (round(float(v) * scale) for v in b[:4])
        x0, x1 = sorted((max(0, x0), min(canvas.shape[1] - 1, x1 - 1)))
        y0, y1 = sorted((max(0, y0), min(canvas.shape[0] - 1, y1 - 1)))
        color = rgb[::-1]
        cv2.rectangle(canvas, (x0, y0), (x1, y1), color, thick)
        if label:
            labels.append((label, (x0, y1 if below else y0), color, below))

    ocr = result.get("ocr") or {}
    for line in ocr.get("lines") or []:
        if line.get("box"):
            box(line["box"], _TEXT, line.get("text", ""), below=True)
    by_box: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    for match in result.get("matches") or []:
        if match.get("box"):
            by_box.setdefault(tuple(match["box"]), []).append(match)
    for b, matches in by_box.items():
        fake = any(m.get("kind") == "counterfeit" for m in matches)
        best = max(matches, key=lambda m: m.get("similarity") or 0.0)
        label = f"{best.get('kind', '')} #{best.get('reference_id')} {best.get('brand') or ''} sim {best.get('similarity', 0):.2f}"
        box(b, _FAKE if fake else _GENUINE, label)
    for serial in ocr.get("serials") or []:
        if serial.get("box"):
            bad = serial.get("format_ok") is False or serial.get("checksum_ok") is False or serial.get("registered") is False
            status = "invalid" if bad else ("registered" if serial.get("registered") else "read")
            box(serial["box"], _SERIAL_BAD if bad else _SERIAL_OK, f"serial {serial.get('normalized', '')} {status}")
    placed: list[tuple[int, int, int]] = []  # labels drawn: (left, top, right)
    for text, at, color, below in labels:
        _label(canvas, text, at, color, thick, placed=placed, below=below)
    ok, png = cv2.imencode(".png", canvas)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR image
        raise MarkguardError("could not encode the evidence image")
    return png.tobytes()


def _label(canvas: np.ndarray, text: str, at: tuple[int, int], color: tuple[int, int, int], thick: int, *,
           placed: list[tuple[int, int, int]], below: bool = False) -> None:
    """`text` in white on a band of `color` at the box corner `at`: above the box's top edge (or below
    its bottom edge), moved inside the picture where it would leave it."""
    text = text.encode("ascii", "replace").decode()[:60]  # Hershey fonts draw ASCII only
    font, size = cv2.FONT_HERSHEY_SIMPLEX, max(0.45, thick / 4)
    (tw, th), base = cv2.getTextSize(text, font, size, 1)
    band = th + base + 4
    height, width = canvas.shape[:2]
    x = max(0, min(at[0], width - tw - 4))
    top = at[1] if below else at[1] - band
    top = max(0, min(top, height - band))
    for _ in range(8):  # step past labels already drawn there
        clash = [t for (lx, t, rx) in placed if abs(t - top) < band and lx < x + tw + 4 and x < rx]
        if not clash:
            break
        top = min(height - band, max(clash) + band) if top + 2 * band <= height else max(0, min(clash) - band)
    placed.append((x, top, x + tw + 4))
    cv2.rectangle(canvas, (x, top), (min(width - 1, x + tw + 4), top + band), color, -1)
    cv2.putText(canvas, text, (x + 2, top + th + 2), font, size, (255, 255, 255), 1, cv2.LINE_AA)


# -- claims ------------------------------------------------------------------------------------------
def _active_claim(home: Home, row_id: int, now: dt.datetime) -> ReviewClaim | None:
    with home.sessions() as session:
        claim = session.get(ReviewClaim, row_id)
        return claim if claim is not None and claim.expires_at > now else None


def claim_listing(home: Home, row_id: int, *, key_id: str, ttl: dt.timedelta = CLAIM_TTL,
                  now: dt.datetime | None = None) -> dict[str, Any]:
    """Hold `row_id` for `key_id` until now + `ttl` (claiming it again renews); `Conflict` while another
    moderator's claim runs. Each write is the first statement of its transaction, so SQLite takes the
    write lock before reading (no stale snapshot) and PostgreSQL decides by the row lock."""
    now = now or _now()
    with home.sessions() as session:
        _listing(session, row_id, None)
    for _ in range(3):  # a claim released or expired between the two writes: try again
        try:
            with home.sessions.begin() as session:
                session.add(ReviewClaim(listing_row_id=row_id, key_id=key_id, claimed_at=now, expires_at=now + ttl))
        except IntegrityError:
            pass
        else:
            return {"listing": row_id, "moderator": key_id, "claimed_at": now.isoformat(),
                    "expires_at": (now + ttl).isoformat()}
        with home.sessions.begin() as session:
            taken = session.execute(
                update(ReviewClaim).where(ReviewClaim.listing_row_id == row_id,
                                          or_(ReviewClaim.expires_at <= now, ReviewClaim.key_id == key_id))
                .values(key_id=key_id, claimed_at=now, expires_at=now + ttl)).rowcount
        if taken == 1:
            return {"listing": row_id, "moderator": key_id, "claimed_at": now.isoformat(),
                    "expires_at": (now + ttl).isoformat()}
        holder = _active_claim(home, row_id, now)
        if holder is not None:
            raise Conflict(f"listing {row_id} is claimed by another moderator until {holder.expires_at.isoformat()}")
    raise Conflict(f"listing {row_id}: the claim changed hands while claiming, try again")


def release_claim(home: Home, row_id: int, *, key_id: str | None, now: dt.datetime | None = None) -> None:
    """Release `key_id`'s claim (`key_id=None`: anyone's, an admin's override). `Conflict` when another
    moderator holds it, `NotFound` when nobody does."""
    now = now or _now()
    with home.sessions.begin() as session:
        query = delete(ReviewClaim).where(ReviewClaim.listing_row_id == row_id)
        if key_id is not None:
            query = query.where(ReviewClaim.key_id == key_id)
        if session.execute(query).rowcount:
            return
    if _active_claim(home, row_id, now) is not None:
        raise Conflict(f"listing {row_id} is claimed by another moderator")
    raise NotFound(f"listing {row_id} is not claimed by you")
