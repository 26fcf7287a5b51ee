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
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import faiss
import numpy as np
from sqlalchemy import Select, distinct, func, insert, select, true
from sqlalchemy.orm import Session

from markguard.serving.intelligence.tables import ListingEvidence, RingFakeRef, RingListing
from markguard.serving.reviews import Review
from markguard.serving.state.schema import Brand, Listing, ListingSerial, Product
from markguard.vision.phash import band_neighbours, hamming_many
from markguard.vision.scoring import ScoreResult

__all__ = ["EvidenceConfig", "ListingFacts", "Gathered", "gather_listings", "gather_update", "keep_taken_in",
           "keep_catalog", "sellers_listings", "title_template", "template_key", "find_edges", "record_evidence",
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
    # an update looks older listings up by index (a few queries for 16 new ones) while its new listings are
    # at most this share of the older ones; past it, reading every listing is cheaper (`bench rings --scale`)
    lookup_share: float = 0.01


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


def _flagged(decision: str, label: str | None) -> bool:
    return (decision in FLAGGED_DECISIONS or label == "counterfeit") and label != "genuine"


def template_key(template: str) -> str:
    """The indexed key of a title template (`ring_listings.template_key`)."""
    return hashlib.sha256(template.encode()).hexdigest()


RowFilter = Callable[[Any], Any]  # a listing-row-id column -> the WHERE clause choosing the rows to read


def _newest_labels(session: Session, where: RowFilter) -> dict[int, str]:
    """The label of the newest review of each listing whose row id `where` chooses."""
    labels: dict[int, str] = {}
    for row_id, label in session.execute(select(Review.listing_row_id, Review.label)
                                         .where(where(Review.listing_row_id)).order_by(Review.id)):
        labels[row_id] = str(label)  # the newest review wins
    return labels


def _read_facts(session: Session, where: RowFilter, *, templates: dict[int, str | None] | None) -> list[ListingFacts]:
    """The facts of the listings with a seller whose row ids `where` chooses, oldest first (no vectors).
    Templates are computed from the titles with today's brand words, or, given `templates`, taken from it."""
    serials: dict[int, list[str]] = {}
    for row_id, digest in session.execute(select(ListingSerial.listing_row_id, ListingSerial.serial_hmac)
                                          .where(where(ListingSerial.listing_row_id))):
        serials.setdefault(row_id, []).append(digest)
    labels = _newest_labels(session, where)
    # rows as tuples, not ORM objects: building an object a row was most of a whole-catalog read's time
    evidence = {row.listing_row_id: row for row in session.execute(
        select(ListingEvidence.listing_row_id, ListingEvidence.fake_refs, ListingEvidence.listed_at)
        .where(where(ListingEvidence.listing_row_id)))}
    words = _brand_words(session) if templates is None else {}
    every_word = set().union(*words.values()) if words else set()
    columns = [Listing.id, Listing.listing_id, Listing.seller_id, Listing.brand_id, Listing.phash, Listing.decision,
               Listing.scored_at]
    if templates is None:  # of the stored score JSON, only its title: the whole of it is kilobytes a row
        columns.append(Listing.result["title"].as_string().label("title"))
    facts = []
    for row in session.execute(select(*columns).where(Listing.seller_id.is_not(None), where(Listing.id))
                               .order_by(Listing.id)):
        label = labels.get(row.id)
        ev = evidence.get(row.id)
        if templates is None:
            masks = words.get(row.brand_id, set()) if row.brand_id is not None else every_word
            template = title_template(row.title, masks=masks)
        else:
            template = templates.get(row.id)
        at = ev.listed_at if ev is not None and ev.listed_at is not None else row.scored_at
        facts.append(ListingFacts(
            row=row.id, listing_id=row.listing_id, seller=str(row.seller_id), brand_id=row.brand_id, phash=row.phash,
            flagged=_flagged(row.decision, label), confirmed=label == "counterfeit", template=template,
            serials=serials.get(row.id, []), fake_refs=list(ev.fake_refs or []) if ev is not None else [],
            vector=None, at=at if at.tzinfo else at.replace(tzinfo=dt.UTC)))
    return facts


def gather_listings(session: Session, *, model_tag: str | None = None) -> list[ListingFacts]:
    """Every listing with a seller, oldest first, with its serials, reviews and stored evidence (the vector
    of flagged listings only, of `model_tag`'s when given)."""
    facts = _read_facts(session, lambda column: true(), templates=None)
    _add_vectors(session, [f for f in facts if f.flagged], model_tag=model_tag)
    return facts


@dataclasses.dataclass(frozen=True)
class Gathered:
    """What an update compares: the older listings any new one can have an edge with, then the new ones."""

    facts: list[ListingFacts]
    new_from: int  # facts[new_from:] are the new listings
    # the new listings' templates that fingerprint (few sellers, enough literal words); None where `facts`
    # is the whole catalog, in which `find_edges` counts them
    informative: set[str] | None


def gather_update(session: Session, *, after_row: int, config: EvidenceConfig, chunk: int = 500) -> Gathered:
    """The listings after `after_row` and, of the older ones, only those an edge can join them with, looked
    up by index: near photo hashes by their bands (`vision.phash.band_neighbours`), serials by their keyed
    hash, known-fake references and title templates in the network's own tables (`ring_listings`,
    `ring_fake_refs`, filled as listings are taken in), and flagged vectors compared with the new flagged
    ones. `find_edges` over these finds the edges it finds over the whole catalog (the older listings'
    templates are those of the day they were taken in: a rebuild brings them to today's brand words)."""
    def count(where: Any) -> int:
        return session.scalar(select(func.count(Listing.id)).where(where, Listing.seller_id.is_not(None))) or 0

    new_count, older_count = count(Listing.id > after_row), count(Listing.id <= after_row)
    if older_count == 0 or new_count > config.lookup_share * older_count:  # reading every listing costs less
        facts = gather_listings(session)  # counted from what it read: PostgreSQL reads each statement anew
        return Gathered(facts=facts, new_from=next((i for i, f in enumerate(facts) if f.row > after_row), len(facts)),
                        informative=None)
    new = _read_facts(session, lambda column: column > after_row, templates=None)
    _add_vectors(session, [f for f in new if f.flagged], model_tag=None)
    older: set[int] = set()
    older |= _near_photos(session, [f.phash for f in new if f.phash is not None], after_row=after_row,
                          bits=config.photo_bits)
    older.update(row_id for (row_id,) in _chunked_rows(
        session, select(ListingSerial.listing_row_id).where(ListingSerial.listing_row_id <= after_row),
        ListingSerial.serial_hmac, sorted({d for f in new for d in f.serials}), chunk))
    older.update(row_id for (row_id,) in _chunked_rows(
        session, select(RingFakeRef.listing_row_id), RingFakeRef.reference_id,
        sorted({r for f in new for r in f.fake_refs}), chunk))
    informative, rows = _informative_templates(session, new, config=config)
    older |= rows
    older |= _near_flagged_vectors(session, [f for f in new if f.vector is not None], after_row=after_row,
                                   similarity=config.embedding_similarity)
    ids = sorted(i for i in older if i <= after_row)
    templates = dict(_chunked_rows(session, select(RingListing.listing_row_id, RingListing.template),
                                   RingListing.listing_row_id, ids, chunk))
    known = [f for start in range(0, len(ids), chunk)
             for f in _read_facts(session, lambda column, part=ids[start : start + chunk]: column.in_(part),
                                  templates=templates)]
    _add_vectors(session, [f for f in known if f.flagged], model_tag=None)
    return Gathered(facts=known + new, new_from=len(known), informative=informative)


def _add_vectors(session: Session, flagged: list[ListingFacts], *, model_tag: str | None, chunk: int = 1000) -> None:
    """Set the stored vectors of these listings (a kilobyte each: unflagged listings' are never read)."""
    at = {f.row: f for f in flagged}
    query = select(ListingEvidence.listing_row_id, ListingEvidence.vector).where(ListingEvidence.vector.is_not(None))
    if model_tag is not None:
        query = query.where(ListingEvidence.model_tag == model_tag)
    for row_id, vector in _chunked_rows(session, query, ListingEvidence.listing_row_id, list(at), chunk):
        at[row_id].vector = np.frombuffer(vector, dtype=np.float32)


def keep_taken_in(session: Session, facts: Sequence[ListingFacts]) -> None:
    """Record listings as taken into the network: their templates and known-fake references, where later
    updates look them up (`gather_update`)."""
    # bulk inserts of plain rows: a rebuild takes in the whole catalog, and ORM objects cost most of the time
    listings = [{"listing_row_id": f.row, "seller_id": f.seller, "template": f.template,
                 "template_key": template_key(f.template) if f.template is not None else None} for f in facts]
    refs = [{"reference_id": r, "listing_row_id": f.row} for f in facts for r in sorted(set(f.fake_refs))]
    for table, rows in ((RingListing, listings), (RingFakeRef, refs)):
        if rows:
            session.execute(insert(table), rows)


def keep_catalog(session: Session, *, up_to: int, window: int = 50_000) -> None:
    """Record every listing up to row `up_to` as taken in, a window of row ids at a time (a network built
    before `ring_listings` existed)."""
    low = 0
    while low < up_to:
        high = min(low + window, up_to)
        keep_taken_in(session, _read_facts(session, lambda column, lo=low, hi=high: (column > lo) & (column <= hi),
                                           templates=None))
        session.flush()
        low = high


def sellers_listings(session: Session, sellers: Iterable[str], *, chunk: int = 500) -> dict[str, list[ListingFacts]]:
    """The listings of these sellers, by seller (without templates or vectors)."""
    wanted = sorted(set(sellers))
    out: dict[str, list[ListingFacts]] = {}
    for start in range(0, len(wanted), chunk):
        theirs = select(Listing.id).where(Listing.seller_id.in_(wanted[start : start + chunk]))
        for f in _read_facts(session, lambda column, rows=theirs: column.in_(rows), templates={}):
            out.setdefault(f.seller, []).append(f)
    return out


def _chunked_rows(session: Session, query: Select[Any], column: Any, ids: Sequence[int], chunk: int) -> list[Any]:
    return [row for start in range(0, len(ids), chunk)
            for row in session.execute(query.where(column.in_(ids[start : start + chunk]))).tuples()]


def _near_photos(session: Session, hashes: list[int], *, after_row: int, bits: int, batch: int = 16) -> set[int]:
    """Rows up to `after_row` whose photo hash is within `bits` of one of `hashes`: each band's values near
    a batch of hashes looked up in the band's index, then the exact distance."""
    found: set[int] = set()
    bands = (Listing.phash_b0, Listing.phash_b1, Listing.phash_b2)
    for start in range(0, len(hashes), batch):
        part = hashes[start : start + batch]
        values: list[set[int]] = [set() for _ in bands]
        for h in part:
            for band, near in zip(values, band_neighbours(h, bits), strict=True):
                band.update(near)
        for column, near in zip(bands, values, strict=True):  # one band at a time: a few thousand values a query
            rows = session.execute(select(Listing.id, Listing.phash).where(
                column.in_(sorted(near)), Listing.id <= after_row, Listing.seller_id.is_not(None))).all()
            if not rows:
                continue
            stored = np.array([r[1] for r in rows], dtype=np.int64)
            close = np.any([hamming_many(h, stored) <= bits for h in part], axis=0)
            found.update(int(r[0]) for r, hit in zip(rows, close, strict=True) if hit)
    return found


def _informative_templates(session: Session, new: Sequence[ListingFacts], *,
                           config: EvidenceConfig) -> tuple[set[str], set[int]]:
    """The new listings' templates that fingerprint (2 to `template_max_sellers` sellers over the whole
    catalog, enough literal words), and the older rows that carry them."""
    sellers: dict[str, set[str]] = {}
    for f in new:
        if f.template is not None and _literal_words(f.template) >= config.template_min_words:
            sellers.setdefault(f.template, set()).add(f.seller)
    keys = {template_key(t): t for t in sellers}
    key_list = sorted(keys)
    crowded: set[str] = set()  # templates with more older sellers than a fingerprint has
    for start in range(0, len(key_list), 500):
        for key, count in session.execute(
                select(RingListing.template_key, func.count(distinct(RingListing.seller_id)))
                .where(RingListing.template_key.in_(key_list[start : start + 500]))
                .group_by(RingListing.template_key)):
            if count > config.template_max_sellers:
                crowded.add(keys[key])
    rows: dict[str, set[int]] = {}
    for key in (k for k in key_list if keys[k] not in crowded):
        for row_id, seller in session.execute(select(RingListing.listing_row_id, RingListing.seller_id)
                                              .where(RingListing.template_key == key)):
            sellers[keys[key]].add(seller)
            rows.setdefault(keys[key], set()).add(row_id)
    informative = {t for t, s in sellers.items() if t not in crowded and 2 <= len(s) <= config.template_max_sellers}
    return informative, {r for t in informative for r in rows.get(t, ())}


def _near_flagged_vectors(session: Session, new: Sequence[ListingFacts], *, after_row: int, similarity: float,
                          chunk: int = 1000) -> set[int]:
    """Flagged rows up to `after_row` whose stored vector is within `similarity` of a new flagged one's:
    the older flagged vectors are read a chunk at a time, never held together."""
    if not new:
        return set()
    labels = _newest_labels(session, lambda column: column <= after_row)
    flagged = {row_id for row_id, decision in session.execute(
        select(Listing.id, Listing.decision).where(Listing.id <= after_row, Listing.seller_id.is_not(None),
                                                   Listing.decision.in_(sorted(FLAGGED_DECISIONS))))
               if _flagged(decision, labels.get(row_id))}
    confirmed = [r for r, label in labels.items() if label == "counterfeit" and r not in flagged]
    flagged.update(row_id for (row_id,) in _chunked_rows(  # labelled counterfeit, whatever the decision
        session, select(Listing.id).where(Listing.seller_id.is_not(None)), Listing.id, confirmed, chunk))
    queries: dict[int, np.ndarray] = {}  # by vector size: another model's vectors are not compared
    for size in {f.vector.size for f in new}:  # type: ignore[union-attr]
        queries[size] = np.stack([f.vector for f in new if f.vector.size == size])  # type: ignore[union-attr, misc]
    found: set[int] = set()
    ids = sorted(flagged)
    for start in range(0, len(ids), chunk):
        stored: dict[int, list[tuple[int, np.ndarray]]] = {}
        for row_id, blob in session.execute(select(ListingEvidence.listing_row_id, ListingEvidence.vector).where(
                ListingEvidence.listing_row_id.in_(ids[start : start + chunk]), ListingEvidence.vector.is_not(None))):
            vector = np.frombuffer(blob, dtype=np.float32)
            stored.setdefault(vector.size, []).append((int(row_id), vector))
        for size, part in stored.items():
            if size in queries:
                close = (np.stack([v for _, v in part]) @ queries[size].T).max(axis=1) >= similarity
                found.update(row_id for (row_id, _), hit in zip(part, close, strict=True) if hit)
    return found


@dataclasses.dataclass(frozen=True)
class Edge:
    """Evidence of `kind` between two listings (`a` older than `b`) of two sellers."""

    kind: str
    weight: float
    a: ListingFacts
    b: ListingFacts
    detail: Any = None


def find_edges(facts: Sequence[ListingFacts], *, new_from: int, config: EvidenceConfig,
               informative: set[str] | None = None) -> list[Edge]:
    """Edges between each listing at index ≥ `new_from` and every older listing (each pair once).
    `informative` are the templates that fingerprint; without it, they are counted over `facts`, which must
    then be the whole catalog (`gather_update` counts them in the catalog and passes them).

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
    if informative is None:  # sellers per template, over the whole catalog: how common a style is
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
    whose unit vector has a cosine of at least `similarity` with it, and that cosine. Only vectors of one
    size (one model's) are compared. Exact, in blocks of matrix products."""
    by_size: dict[int, list[int]] = {}
    for i, f in enumerate(facts):
        if f.vector is not None and f.flagged:
            by_size.setdefault(f.vector.size, []).append(i)
    out: dict[int, list[tuple[int, float]]] = {}
    for flagged in by_size.values():
        rows = np.array(flagged, dtype=np.int64)
        vectors = np.stack([facts[i].vector for i in flagged]).astype(np.float32)  # type: ignore[misc]
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
