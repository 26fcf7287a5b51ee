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

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from markguard.serving.intelligence.tables import ListingEvidence
from markguard.serving.reviews import Review
from markguard.serving.state.schema import Brand, Listing, ListingSerial, Product
from markguard.vision.phash import hamming_many
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
    vector: np.ndarray | None
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
    """Every listing with a seller, oldest first, with its serials, reviews and stored evidence."""
    serials: dict[int, list[str]] = {}
    for row_id, digest in session.execute(select(ListingSerial.listing_row_id, ListingSerial.serial_hmac)):
        serials.setdefault(row_id, []).append(digest)
    labels: dict[int, str] = {}
    for row_id, label in session.execute(select(Review.listing_row_id, Review.label).order_by(Review.id)):
        labels[row_id] = str(label)  # the newest review wins
    evidence = {e.listing_row_id: e for e in session.scalars(select(ListingEvidence))}
    words = _brand_words(session)
    every_word = set().union(*words.values()) if words else set()
    facts = []
    for row in session.scalars(select(Listing).where(Listing.seller_id.is_not(None)).order_by(Listing.id)):
        label = labels.get(row.id)
        flagged = (row.decision in FLAGGED_DECISIONS or label == "counterfeit") and label != "genuine"
        ev = evidence.get(row.id)
        vector = None
        if ev is not None and ev.vector is not None and (model_tag is None or ev.model_tag == model_tag):
            vector = np.frombuffer(ev.vector, dtype=np.float32)
        masks = words.get(row.brand_id, set()) if row.brand_id is not None else every_word
        at = ev.listed_at if ev is not None and ev.listed_at is not None else row.scored_at
        at = at if at.tzinfo else at.replace(tzinfo=dt.UTC)
        facts.append(ListingFacts(
            row=row.id, listing_id=row.listing_id, seller=str(row.seller_id), brand_id=row.brand_id, phash=row.phash,
            flagged=flagged, confirmed=label == "counterfeit",
            template=title_template((row.result or {}).get("title"), masks=masks),
            serials=serials.get(row.id, []), fake_refs=list(ev.fake_refs) if ev is not None else [],
            vector=vector, at=at))
    return facts


@dataclasses.dataclass(frozen=True)
class Edge:
    """Evidence of `kind` between two listings (`a` older than `b`) of two sellers."""

    kind: str
    weight: float
    a: ListingFacts
    b: ListingFacts
    detail: Any = None


def find_edges(facts: Sequence[ListingFacts], *, new_from: int, config: EvidenceConfig) -> list[Edge]:
    """Edges between each listing at index ≥ `new_from` and every older listing (each pair once)."""
    w = config.weights
    edges: list[Edge] = []
    n = len(facts)
    if n == 0 or new_from >= n:
        return edges
    sellers = np.array([f.seller for f in facts], dtype=object)
    hashes = np.array([f.phash if f.phash is not None else 0 for f in facts], dtype=np.int64)
    has_hash = np.array([f.phash is not None for f in facts])
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
    vec_rows = [i for i, f in enumerate(facts) if f.vector is not None and f.flagged]
    dim = facts[vec_rows[0]].vector.size if vec_rows else 0  # type: ignore[union-attr]
    vec_rows = [i for i in vec_rows if facts[i].vector.size == dim]  # type: ignore[union-attr]
    vectors = np.stack([facts[i].vector for i in vec_rows]) if vec_rows else np.zeros((0, 1), np.float32)
    vec_pos = np.array(vec_rows, dtype=np.int64)
    for i, f in enumerate(facts):
        if i >= new_from:
            other = sellers[:i] != f.seller
            if f.phash is not None and i:
                close = np.nonzero((hamming_many(int(f.phash), hashes[:i]) <= config.photo_bits) & has_hash[:i] & other)[0]
                for j in close:
                    g = facts[j]
                    kind_weight = w["photo"] if (f.flagged or g.flagged) else w["photo_unflagged"]
                    edges.append(Edge("photo", kind_weight, g, f))
            for digest in f.serials:
                for j in by_serial.get(digest, []):
                    if facts[j].seller != f.seller:
                        edges.append(Edge("serial", w["serial"], facts[j], f))
            for ref in f.fake_refs:
                for j in by_ref.get(ref, []):
                    if facts[j].seller != f.seller:
                        edges.append(Edge("known_fake", w["known_fake"], facts[j], f, detail=ref))
            if f.template in informative:
                for j in by_template.get(f.template, []):
                    if facts[j].seller != f.seller:
                        edges.append(Edge("template", w["template"], facts[j], f, detail=f.template))
            if f.vector is not None and f.flagged and f.vector.size == dim and vectors.shape[0]:
                older = vec_pos < i
                sims = vectors[older] @ f.vector
                for k in np.nonzero(sims >= config.embedding_similarity)[0]:
                    j = int(vec_pos[older][k])
                    if facts[j].seller != f.seller:
                        edges.append(Edge("embedding", w["embedding"], facts[j], f, detail=round(float(sims[k]), 4)))
        for digest in f.serials:
            by_serial.setdefault(digest, []).append(i)
        for ref in f.fake_refs:
            by_ref.setdefault(ref, []).append(i)
        if f.template in informative:
            by_template.setdefault(f.template, []).append(i)
    return edges


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
