"""Evidence for listings scored without it (over the API): computed from the photo the service kept.

A listing scored by the engine alone has a `listings` row (hash, decision, title) but no full-photo
vector or known-fake matches. `backfill_evidence` embeds each such listing's kept photo with the
engine's model (the full-photo region, as scoring does) and searches the index's counterfeit
references, so `embedding` and `known_fake` edges reach those listings too.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from markguard.serving.engine import ScoreRequest, ScoringEngine
from markguard.serving.intelligence.evidence import EvidenceConfig
from markguard.serving.intelligence.tables import ListingEvidence, RingFakeRef, RingListing
from markguard.serving.state.schema import Listing

__all__ = ["backfill_evidence"]

_K = 5  # counterfeit references looked at per photo


def backfill_evidence(engine: ScoringEngine, *, config: EvidenceConfig | None = None, chunk: int = 16) -> int:
    """Write `listing_evidence` for every listing that has none; returns how many got a vector."""
    config = config or EvidenceConfig()
    home = engine.home
    with home.sessions() as session:
        todo = session.execute(select(Listing.id, Listing.image_sha256)
                               .outerjoin(ListingEvidence, ListingEvidence.listing_row_id == Listing.id)
                               .where(ListingEvidence.listing_row_id.is_(None), Listing.seller_id.is_not(None))
                               .order_by(Listing.id)).tuples().all()
    done = 0
    for start in range(0, len(todo), chunk):
        part, found = todo[start : start + chunk], []
        for row_id, sha in part:
            try:
                found.append((row_id, engine.plan(ScoreRequest(home.get_blob(sha)))))
            except FileNotFoundError:  # the photo was not kept: nothing to compute from
                found.append((row_id, None))
        plans = [p for _, p in found if p is not None]
        vectors = engine.embed([p.crops[0] for p in plans]) if plans else np.zeros((0, 1), np.float32)
        hits = engine.index.search(vectors, _K, kind="counterfeit") if plans and len(engine.index) else None
        with home.sessions.begin() as session:
            k = 0
            for row_id, plan in found:
                if plan is None:
                    session.add(ListingEvidence(listing_row_id=row_id, model_tag=engine.model_tag, vector=None,
                                                fake_refs=[]))
                    continue
                refs = []
                if hits is not None:
                    refs = sorted({int(i) for s, i in zip(hits.similarities[k], hits.ids[k], strict=True)
                                   if i >= 0 and s >= config.fake_match_similarity})
                vector = vectors[k].astype(np.float32)
                session.add(ListingEvidence(listing_row_id=row_id, model_tag=engine.model_tag,
                                            vector=(vector / np.linalg.norm(vector)).tobytes(), fake_refs=refs))
                if refs and session.get(RingListing, row_id) is not None:  # taken in before: updates look it up
                    session.add_all(RingFakeRef(reference_id=r, listing_row_id=row_id) for r in refs)
                k += 1
                done += 1
    return done
