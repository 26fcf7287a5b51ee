"""The API's request and response bodies, as pydantic models (the OpenAPI schema is built from them).

The score models mirror `vision.scoring.ScoreResult` and its parts field for field (a test checks each
against its dataclass), so the schema describes exactly the score JSON that `ScoreResult.to_dict()`
gives the CLI, the API and batch scans.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from markguard.serving.caps import CAPS
from markguard.serving.keys import Role
from markguard.serving.problems import Problem
from markguard.serving.state.schema import ReferenceKind
from markguard.vision.scoring import Decision
from markguard.vision.text import WordmarkMatch


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")  # the schema names every key the answer has


# -- the score JSON (vision.scoring.ScoreResult) --------------------------------------------------------
class NamedScoreOut(_Out):
    name: str | None
    score: float | None


class ClaimOut(_Out):
    brand: str | None
    product: str | None
    title: str | None = None


class MatchOut(_Out):
    reference_id: int
    brand: str
    product: str | None
    kind: str = Field(description="genuine or counterfeit (a known fake)")
    similarity: float
    inliers: int | None = None
    box: list[int] | None = Field(None, description="the query region that matched: x0, y0, x1, y1")


class SignalOut(_Out):
    value: float | None
    contribution: float = Field(description="in the fusion's units: risk (provisional) or log-odds (logistic)")


class OcrLineOut(_Out):
    text: str
    confidence: float
    box: list[int]


class WordmarkHitOut(_Out):
    text: str
    brand: str
    match: WordmarkMatch
    distance: int


class SerialOut(_Out):
    text: str
    normalized: str
    format_ok: bool | None
    checksum_ok: bool | None
    registered: bool | None
    seen_in_listings: int
    seen_by_sellers: int


class OcrOut(_Out):
    lines: list[OcrLineOut]
    wordmarks: list[WordmarkHitOut]
    serials: list[SerialOut]


class DuplicateOut(_Out):
    listing_id: str | None
    seller_id: str | None
    distance: int = Field(description="perceptual-hash bits that differ")
    scored_at: str


class ScoreOut(_Out):
    """One photo's score: the risk, the decision under the brand's policy, and the evidence."""

    risk: float = Field(ge=0, le=1)
    decision: Decision
    brand: NamedScoreOut
    product: NamedScoreOut
    claimed: ClaimOut
    matches: list[MatchOut]
    signals: dict[str, SignalOut]
    model: str
    provisional: bool
    elapsed_ms: float
    ocr: OcrOut
    duplicates: list[DuplicateOut] = Field(description="the newest earlier listings of this photo, at most 20")
    duplicates_total: int = Field(0, description="every earlier listing of this photo, however many `duplicates` shows")
    image: str | None = Field(None, description="the photo's name as the caller gave it (CLI only)")


class BatchItemOut(_Out):
    """One photo of a batch, in the order sent: its score, or the error that refused only this photo."""

    index: int = Field(description="the photo's position in `images`")
    listing_id: str | None
    filename: str | None = None
    result: ScoreOut | None = None
    error: Problem | None = None


class BatchOut(_Out):
    results: list[BatchItemOut]


class EmbedOut(_Out):
    model: str
    vector: list[float] = Field(description="unit length, the model's embedding dimension")


# -- request bodies: strict, so JSON is taken exactly as the schema types it (`0` is not `false`) ---------
class _In(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")  # a misspelt or unknown field: 422 naming it, never ignored


# -- brands ---------------------------------------------------------------------------------------------
Wordmark = Annotated[str, Field(min_length=1, max_length=CAPS.wordmark_chars)]
BrandName = Annotated[str, Field(min_length=1, max_length=CAPS.brand_name_chars, pattern=r"\S")]


class BrandIn(_In):
    name: BrandName
    wordmarks: list[Wordmark] | None = Field(None, min_length=1, max_length=CAPS.wordmarks)


class PolicyIn(_In):
    review_at: float | None = Field(None, ge=0, le=1)
    takedown_at: float | None = Field(None, ge=0, le=1)
    wordmarks: list[Wordmark] | None = Field(None, min_length=1, max_length=CAPS.wordmarks)
    serial_pattern: str | None = Field(None, max_length=CAPS.serial_pattern_chars,
                                       description="full-match pattern, RE2 syntax (no backreferences or look-arounds)")
    serial_checksum: str | None = None
    genuine_from_reviews: bool | None = Field(
        None, description="a listing reviewed genuine becomes a genuine reference")


class BrandCreatedOut(_Out):
    name: str
    wordmarks: list[str]


class PolicyOut(_Out):
    name: str
    review_at: float | None
    takedown_at: float | None
    wordmarks: list[str]
    serial_pattern: str | None
    serial_checksum: str | None
    genuine_from_reviews: bool


class BrandSummaryOut(_Out):
    name: str
    products: list[str]
    genuine: int
    counterfeit: int
    wordmarks: list[str]
    serial_pattern: str | None
    serial_checksum: str | None
    review_at: float | None
    takedown_at: float | None


class BrandOut(PolicyOut):
    summary: BrandSummaryOut


# -- references and serials -----------------------------------------------------------------------------
class ReferenceOut(_Out):
    id: int
    product: str | None
    kind: ReferenceKind
    sha256: str
    width: int | None
    height: int | None
    source: str | None = Field(description="the upload's file name (never a server path)")
    created_at: str


class ReferencesOut(_Out):
    brand: str
    references: list[ReferenceOut]


class UploadOut(_Out):
    brand: str
    added: list[int] = Field(description="the new references' ids")
    duplicates: list[str] = Field(description="uploads already enrolled (by content), skipped")


class DeletedOut(_Out):
    brand: str
    deleted: list[int]


class SerialsOut(_Out):
    brand: str
    read: int = Field(description="non-empty serials in the file")
    added: int = Field(description="new to the registry")
    duplicates: int = Field(description="already registered, or repeated in the file")
    format_mismatch: int = Field(description="serials the brand's pattern rejects (stored all the same)")
    elapsed_s: float


# -- reviews and keys -----------------------------------------------------------------------------------
class ReviewIn(_In):
    listing_id: str = Field(min_length=1, max_length=200)
    label: ReferenceKind = Field(strict=False)  # an enum's JSON value (strict would want the member)
    note: str = Field("", max_length=2000)


class ReviewOut(_Out):
    review_id: int
    listing_id: str
    label: str
    brand: str | None
    reference_id: int | None = Field(description="the reference this review added")
    removed_reference_id: int | None = Field(None, description="the one an earlier review had added, now removed")
    reviewer: str | None = None
    note: str = ""
    created_at: str | None = None


class ReviewsOut(_Out):
    reviews: list[ReviewOut]
    next: int | None = Field(description="pass as `after` for the next page; null on the last")


class KeyIn(_In):
    role: Role = Field(strict=False)  # an enum's JSON value (strict would want the member)
    brand: str | None = Field(None, min_length=1, max_length=CAPS.brand_name_chars)
    label: str = Field("", max_length=200)


class KeyOut(_Out):
    key: str = Field(description="the full key, shown once and never stored")
    key_id: str
    role: Role
    brand: str | None



# -- scans ----------------------------------------------------------------------------------------------
class ScanStartedOut(_Out):
    id: str
    state: str
    feed: str


class ScanOut(BaseModel):
    """A scan's progress (`progress.json` of its folder); a finished scan adds `summary`, a failed one `error`."""

    model_config = ConfigDict(extra="allow")
    id: str
    feed: str
    state: str = Field(description="starting, running, finished, failed or interrupted")
    rows_total: int | None = None
    rows_done: int | None = None
    photos_per_second: float | None = None
    error: int | str | None = Field(None, description="rows that failed so far (a count); a failed scan: why")
    summary: dict[str, Any] | None = None


# -- intelligence ---------------------------------------------------------------------------------------
class RingOut(_Out):
    id: int
    score: float
    sellers: int
    listings: int
    brands: list[str] = Field(description="a brand key sees only its own brand's name")
    brands_hit: int
    flagged_share: float
    first_seen: str
    last_seen: str


class RingsOut(_Out):
    rings: list[RingOut]


class RingListingOut(_Out):
    row: int
    listing_id: str | None
    seller_id: str | None
    brand: str | None
    risk: float | None
    decision: str | None
    title: str | None
    image_sha256: str | None
    model: str | None
    scored_at: str


class EdgeExampleOut(_Out):
    listings: list[int] = Field(description="the two listings' catalog rows")
    detail: Any = None


class EdgeOut(_Out):
    sellers: list[str]
    kind: str
    weight: float
    count: int
    examples: list[EdgeExampleOut]
    first_seen: str
    last_seen: str


class RingDetailOut(RingOut):
    members: list[str]
    listings_shown: list[RingListingOut]
    listings_hidden: int = Field(description="other brands' listings, counted only (brand keys)")
    edges: list[EdgeOut]


class TimeToDecisionOut(_Out):
    listings: int
    median: float | None
    p90: float | None


class ReviewCountsOut(_Out):
    confirmed: int
    overturned: int


class RingCountsOut(_Out):
    found: int
    sizes: list[int]


class ReportOut(_Out):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: str = Field(alias="from")
    to: str
    brand: str | None
    listings_scanned: int
    decisions: dict[str, int]
    decisions_by_brand: dict[str, dict[str, int]]
    decisions_by_week: dict[str, dict[str, int]]
    takedowns: int
    reviews: ReviewCountsOut
    time_to_decision_s: TimeToDecisionOut
    rings: RingCountsOut
    references_added: dict[str, dict[str, int]]
    model_versions: dict[str, int]
