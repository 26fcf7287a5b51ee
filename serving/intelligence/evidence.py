"""Evidence that links two listings of different sellers, each of a kind with a weight.

Kinds: `photo` (the same or a near-same photo: perceptual hashes within a few bits), `serial` (the same
serial, compared as keyed hashes), `known_fake` (both matched the same known-fake reference),
`embedding` (near-identical photos by the embedder, between flagged listings only) and `template` (the
same title template, once brand and product words and numbers are masked; a template used by many
sellers is a house style, not a fingerprint, and gives nothing).

Weights are chosen so that no single kind joins two sellers (the join threshold is above every single
weight): an honest seller who posts the product's stock photo shares only a `photo` edge with the other
sellers of it, and a `photo` edge between listings none of which is flagged weighs little.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable, Sequence
from typing import Any

import faiss
import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from markguard.serving.intelligence.tables import ListingEvidence
from markguard.serving.reviews import Review
from markguard.serving.state.schema import Brand, Listing, ListingSerial, Product
from markguard.vision.scoring import ScoreResult

__all__ = ["EvidenceConfig", "ListingFacts", "gather_listings", "title_template", "find_edges", "record_evidence",
           "FLAGGED_DECISIONS"]

FLAGGED_DECISIONS = frozenset({"review", "takedown"})
_WORD = re.compile(r"[^\W\d_]+|\d+|[^\w\s]+", re.UNICODE)


@dataclasses.dataclass(frozen=True)
class EvidenceConfig:
    photo_bits: int = 8  # of 64: perceptual hashes this close are one photo (re-encoded, slightly cropped)
    embedding_similarity: float = 0.95  # cosine: near-identical photos
    fake_match_similarity: float = 0.85  # cosine: a listing photo this close to a known-fake reference matched it
    template_max_sellers: int = 12  # a title template more sellers use is a house style
    template_min_words: int = 2  # literal words (besides brand, product and numbers) a template must keep
    weights: dict[str, float] = dataclasses.field(default_factory=lambda: {
        "photo": 0.8,  # the same photo, at least one of the two listings flagged
        "photo_unflagged": 0.2,  # the same photo, neither flagged: stock photos of honest sellers
        "serial": 0.8,
        "known_fake": 0.8,
        "embedding": 0.6,
        "template": 0.5,
    })
    join: float = 1.0  # total weight at which two sellers are linked in the ring graph


@dataclasses.dataclass
class ListingFacts:
    """One listing as the network sees it (gathered from the catalog in one pass)."""

    row: int
    listing_id: str | None
    seller: str
    brand_id: int | None
    phash: int | None
    flagged: bool
    confirmed: bool  # a moderator labelled it counterfeit
    template: str | None
    serials: list[str]
    fake_refs: list[int]
    vector: np.ndarray | None  # the full-photo vector, of a flagged listing only (only those are compared)
    at: dt.datetime


def title_template(title: str | None, *, masks: Iterable[str]) -> str | None:
    """The title with brand and product words masked (`<x>`) and numbers as `#`; None without a title."""
    if not title:
        return None
    masked = {m.casefold() for m in masks}
    out: list[str] = []
    for token in _WORD.findall(title.casefold()):
        if token.isdigit():
            token = "#"
        elif token in masked:
            token = "<x>"
        if not (token == "<x>" and out and out[-1] == "<x>"):
            out.append(token)
    return " ".join(out)


def _literal_words(template: str) -> int:
    return sum(1 for t in template.split() if t not in ("<x>", "#") and any(c.isalpha() for c in t))


def _brand_words(session: Session) -> dict[int, set[str]]:
    words: dict[int, set[str]] = {}
    for brand in session.scalars(select(Brand)):
        words.setdefault(brand.id, set()).update(w.casefold() for w in re.split(r"[\s\-_]+", brand.name) if w)
    for product in session.scalars(select(Product)):
        words.setdefault(product.brand_id, set()).update(
            w.casefold() for w in re.split(r"[\s\-_]+", product.name) if w and not w.isdigit())
    return words


def gather_listings(session: Session, *, model_tag: str | None = None) -> list[ListingFacts]:
    """Every listing with a seller, oldest first, with its serials, reviews and stored evidence (the vector
    of flagged listings only, of `model_tag`'s when given)."""
    serials: dict[int, list[str]] = {}
    for row_id, digest in session.execute(select(ListingSerial.listing_row_id, ListingSerial.serial_hmac)):
        serials.setdefault(row_id, []).append(digest)
    labels: dict[int, str] = {}
    for row_id, label in session.execute(select(Review.listing_row_id, Review.label).order_by(Review.id)):
        labels[row_id] = str(label)  # the newest review wins
    # rows as tuples, not ORM objects: this reads the whole catalog, and building an object a row was most
    # of its time
    evidence = {row.listing_row_id: row for row in session.execute(
        select(ListingEvidence.listing_row_id, ListingEvidence.fake_refs, ListingEvidence.listed_at))}
    words = _brand_words(session)
    every_word = set().union(*words.values()) if words else set()
    facts = []
    # of the stored score JSON, only its title: the whole of it (signals, matches, OCR lines) is kilobytes a row
    title = Listing.result["title"].as_string().label("title")
    listings = select(Listing.id, Listing.listing_id, Listing.seller_id, Listing.brand_id, Listing.phash, Listing.decision,
                      title, Listing.scored_at).where(Listing.seller_id.is_not(None)).order_by(Listing.id)
    for row in session.execute(listings):
        label = labels.get(row.id)
        flagged = (row.decision in FLAGGED_DECISIONS or label == "counterfeit") and label != "genuine"
        ev = evidence.get(row.id)
        masks = words.get(row.brand_id, set()) if row.brand_id is not None else every_word
        at = ev.listed_at if ev is not None and ev.listed_at is not None else row.scored_at
        at = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
        facts.append(ListingFacts(
            row=row.id, listing_id=row.listing_id, seller=str(row.seller_id), brand_id=row.brand_id, phash=row.phash,
            flagged=flagged, confirmed=label == "counterfeit",
            template=title_template(row.title, masks=masks),
            serials=serials.get(row.id, []), fake_refs=list(ev.fake_refs or []) if ev is not None else [],
            vector=None, at=at))
    _add_vectors(session, [f for f in facts if f.flagged], model_tag=model_tag)
    return facts


def _add_vectors(session: Session, flagged: list[ListingFacts], *, model_tag: str | None, chunk: int = 1000) -> None:
    """Set the stored vectors of these listings (a kilobyte each: unflagged listings' are never read)."""
    at = {f.row: f for f in flagged}
    rows = list(at)
    for start in range(0, len(rows), chunk):
        query = (select(ListingEvidence.listing_row_id, ListingEvidence.vector)
                 .where(ListingEvidence.listing_row_id.in_(rows[start : start + chunk]),
                        ListingEvidence.vector.is_not(None)))
        if model_tag is not None:
            query = query.where(ListingEvidence.model_tag == model_tag)
        for row_id, vector in session.execute(query):
            at[row_id].vector = np.frombuffer(vector, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Edge:
    """Evidence of `kind` between two listings (`a` older than `b`) of two sellers."""

    kind: str
    weight: float
    a: ListingFacts
    b: ListingFacts
    detail: Any = None


def find_edges(facts: Sequence[ListingFacts], *, new_from: int, config: EvidenceConfig) -> list[Edge]:
    """Edges between each listing at index ≥ `new_from` and every older listing (each pair once).

    Near-same photos and near-identical vectors are found by index (`_close_photos`, `_close_vectors`), not
    by comparing each new listing with every older one, so a rebuild of a large catalog is not quadratic
    in its photos."""
    w = config.weights
    edges: list[Edge] = []
    n = len(facts)
    if n == 0 or new_from >= n:
        return edges
    seller_codes: dict[str, int] = {}
    sellers = np.array([seller_codes.setdefault(f.seller, len(seller_codes)) for f in facts], dtype=np.int64)
    photos = _close_photos(facts, new_from=new_from, bits=config.photo_bits)
    vectors = _close_vectors(facts, new_from=new_from, similarity=config.embedding_similarity)
    # sellers per template, over the whole catalog: how common a style is
    template_sellers: dict[str, set[str]] = {}
    for f in facts:
        if f.template is not None:
            template_sellers.setdefault(f.template, set()).add(f.seller)
    informative = {t for t, s in template_sellers.items()
                   if 2 <= len(s) <= config.template_max_sellers and _literal_words(t) >= config.template_min_words}
    by_serial: dict[str, list[int]] = {}
    by_ref: dict[int, list[int]] = {}
    by_template: dict[str, list[int]] = {}
    for i, f in enumerate(facts):
        if i >= new_from:
            for j in photos.get(i, ()):
                if sellers[j] != sellers[i]:
                    g = facts[j]
                    kind_weight = w["photo"] if (f.flagged or g.flagged) else w["photo_unflagged"]
                    edges.append(Edge("photo", kind_weight, g, f))
            for digest in f.serials:
                for j in by_serial.get(digest, []):
                    if sellers[j] != sellers[i]:
                        edges.append(Edge("serial", w["serial"], facts[j], f))
            for ref in f.fake_refs:
                for j in by_ref.get(ref, []):
                    if sellers[j] != sellers[i]:
                        edges.append(Edge("known_fake", w["known_fake"], facts[j], f, detail=ref))
            if f.template in informative:
                for j in by_template.get(f.template, []):
                    if sellers[j] != sellers[i]:
                        edges.append(Edge("template", w["template"], facts[j], f, detail=f.template))
            for j, similarity in vectors.get(i, ()):
                if sellers[j] != sellers[i]:
                    edges.append(Edge("embedding", w["embedding"], facts[j], f, detail=round(similarity, 4)))
        for digest in f.serials:
            by_serial.setdefault(digest, []).append(i)
        for ref in f.fake_refs:
            by_ref.setdefault(ref, []).append(i)
        if f.template in informative:
            by_template.setdefault(f.template, []).append(i)
    return edges


def _close_photos(facts: Sequence[ListingFacts], *, new_from: int, bits: int) -> dict[int, list[int]]:
    """For each listing at index ≥ `new_from` with a photo hash, the older listings (ascending) whose hash
    is within `bits` of its own. A FAISS multi-index hash finds every such pair: 63 of the 64 bits cut into
    3 tables of 21, each probed within `bits` // 3 flips (if no third differs in at most that many bits,
    the whole differs in more than `bits`). A query reads a few hundred buckets of about n / 2²¹ hashes
    each, not the whole catalog (4 tables of 16 bits read buckets 32 times fuller). It is the scheme of
    `vision.phash.band_neighbours`, which finds a scored photo's duplicates through indexed catalog
    columns; here the hashes are in memory, and FAISS probes its tables in C++."""
    rows = np.array([i for i, f in enumerate(facts) if f.phash is not None], dtype=np.int64)
    new = rows >= new_from
    queries = rows[new]
    if not len(queries):
        return {}
    codes = np.array([facts[i].phash for i in rows], dtype=np.int64).view(np.uint8).reshape(-1, 8)
    tables = 3
    index = faiss.IndexBinaryMultiHash(64, tables, 64 // tables)
    index.nflip = bits // tables
    index.add(codes)
    limits, _, found = index.range_search(codes[new], bits + 1)  # distances below the radius
    out: dict[int, list[int]] = {}
    for q, i in enumerate(queries):
        older = rows[found[limits[q] : limits[q + 1]]]
        older = np.sort(older[older < i])
        if len(older):
            out[int(i)] = older.tolist()
    return out


def _close_vectors(facts: Sequence[ListingFacts], *, new_from: int, similarity: float,
                   block: int = 1024) -> dict[int, list[tuple[int, float]]]:
    """For each flagged listing at index ≥ `new_from` with a vector, the older flagged listings (ascending)
    whose unit vector has a cosine of at least `similarity` with it, and that cosine. Vectors of another
    size than the first flagged one's (another model's) are left out. Exact, in blocks of matrix products."""
    flagged = [i for i, f in enumerate(facts) if f.vector is not None and f.flagged]
    if not flagged:
        return {}
    dim = facts[flagged[0]].vector.size  # type: ignore[union-attr]
    rows = np.array([i for i in flagged if facts[i].vector.size == dim], dtype=np.int64)  # type: ignore[union-attr]
    vectors = np.stack([facts[i].vector for i in rows]).astype(np.float32)  # type: ignore[misc]
    out: dict[int, list[tuple[int, float]]] = {}
    new = np.nonzero(rows >= new_from)[0]
    for start in range(0, len(new), block):
        at = new[start : start + block]
        sims = vectors[at] @ vectors[: at[-1]].T  # only rows before the block's last can be older
        for k, q in enumerate(at):
            close = np.nonzero(sims[k, :q] >= similarity)[0]
            if len(close):
                out[int(rows[q])] = [(int(rows[j]), float(sims[k, j])) for j in close]
    return out


def record_evidence(session: Session, *, listing_row_id: int, result: ScoreResult, vector: np.ndarray | None,
                    listed_at: dt.datetime | None = None, config: EvidenceConfig | None = None) -> ListingEvidence:
    """Keep what a scoring run knew about a listing that its `listings` row does not: the full-photo
    vector and the known-fake references matched (call in the session that recorded the listing)."""
    config = config or EvidenceConfig()
    refs = sorted({m.reference_id for m in result.matches
                   if m.kind == "counterfeit" and m.similarity >= config.fake_match_similarity})
    blob = None
    if vector is not None:
        v = np.asarray(vector, dtype=np.float32).ravel()
        norm = float(np.linalg.norm(v))
        blob = (v / norm).astype(np.float32).tobytes() if norm > 0 else None
    row = session.get(ListingEvidence, listing_row_id)
    if row is None:
        row = ListingEvidence(listing_row_id=listing_row_id, model_tag=result.model)
        session.add(row)
    row.model_tag, row.vector, row.fake_refs, row.listed_at = result.model, blob, refs, listed_at
    return row
