"""Seller networks: rings are the communities (networkx Louvain) of a graph of sellers joined by evidence.

`update_rings` takes in the listings scored since the last update: it finds their evidence edges
against every older listing (`evidence.find_edges`, over the older listings `evidence.gather_update` looks
up by index rather than the whole catalog), adds them to the seller edges kept in the catalog,
and re-detects communities only in the connected parts of the graph those sellers touch; a community
keeps the id of the ring it overlaps most. `rebuild_rings` forgets the edges and rings and takes in
every listing again. Two sellers are linked when the summed weights of their evidence kinds reach
`EvidenceConfig.join`; Louvain then splits linked groups that hang together only by a thread.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from typing import Any

import networkx as nx
from sqlalchemy import delete, or_, select, tuple_
from sqlalchemy.orm import Session

from markguard.serving.intelligence.evidence import (
    Edge,
    EvidenceConfig,
    ListingFacts,
    find_edges,
    gather_update,
    keep_catalog,
    keep_taken_in,
    sellers_listings,
)
from markguard.serving.intelligence.tables import (
    Ring,
    RingFakeRef,
    RingListing,
    RingMember,
    RingState,
    SellerEdge,
)
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Brand, Listing
from markguard.vision.errors import NotFound

__all__ = ["RingUpdate", "update_rings", "rebuild_rings", "list_rings", "ring_detail", "seller_graph"]

_EXAMPLES = 5  # listing pairs kept per seller edge
_SEED = 0  # Louvain is randomised: a fixed seed gives the same rings for the same graph


@dataclasses.dataclass(frozen=True)
class RingUpdate:
    listings: int  # listings taken in
    edges: int  # listing-pair edges found
    rings: int  # live rings after the update
    changed: int  # rings created or updated


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _store_edges(session: Session, edges: list[Edge]) -> set[str]:
    """Fold listing-pair edges into seller edges (per kind: the strongest weight, a count, examples)."""
    touched: set[str] = set()
    grouped: dict[tuple[str, str, str], list[Edge]] = {}
    for e in edges:
        a, b = sorted((e.a.seller, e.b.seller))
        grouped.setdefault((a, b, e.kind), []).append(e)
    stored = _seller_edges(session, list(grouped))
    for (a, b, kind), group in grouped.items():
        touched.update((a, b))
        row = stored.get((a, b, kind))
        times = [_utc(x.a.at) for x in group] + [_utc(x.b.at) for x in group]
        if row is None:
            row = SellerEdge(seller_a=a, seller_b=b, kind=kind, weight=0.0, count=0, examples=[],
                             first_seen=min(times), last_seen=max(times))
            session.add(row)
        row.weight = max(row.weight, max(x.weight for x in group))
        row.count += len(group)
        room = _EXAMPLES - len(row.examples)
        row.examples = list(row.examples) + [[x.a.row, x.b.row, x.detail] for x in group[: max(0, room)]]
        row.first_seen = min(_utc(row.first_seen), *times)
        row.last_seen = max(_utc(row.last_seen), *times)
    return touched


def _seller_edges(session: Session, keys: list[tuple[str, str, str]], *, chunk: int = 500) -> dict[tuple[str, str, str], SellerEdge]:
    """The stored seller edges of these (seller a, seller b, kind) keys, read a chunk of keys a query before
    anything is added (one `session.get` a key would flush the session's pending rows each time)."""
    found: dict[tuple[str, str, str], SellerEdge] = {}
    columns = tuple_(SellerEdge.seller_a, SellerEdge.seller_b, SellerEdge.kind)
    for start in range(0, len(keys), chunk):
        for row in session.scalars(select(SellerEdge).where(columns.in_(keys[start : start + chunk]))):
            found[(row.seller_a, row.seller_b, row.kind)] = row
    return found


def seller_graph(session: Session, *, config: EvidenceConfig, sellers: Iterable[str] | None = None) -> nx.Graph:
    """The linked-seller graph: an edge where the summed evidence weights reach `config.join`."""
    query = select(SellerEdge)
    if sellers is not None:
        wanted = list(set(sellers))
        query = query.where(or_(SellerEdge.seller_a.in_(wanted), SellerEdge.seller_b.in_(wanted)))
    totals: dict[tuple[str, str], float] = {}
    kinds: dict[tuple[str, str], dict[str, float]] = {}
    for row in session.scalars(query):
        key = (row.seller_a, row.seller_b)
        totals[key] = totals.get(key, 0.0) + row.weight
        kinds.setdefault(key, {})[row.kind] = row.weight
    graph = nx.Graph()
    for (a, b), total in totals.items():
        if total >= config.join:
            graph.add_edge(a, b, weight=total, kinds=kinds[(a, b)])
    return graph


def _component_graph(session: Session, touched: set[str], config: EvidenceConfig) -> nx.Graph:
    """The linked components holding `touched` sellers (grown from the catalog's edges, hop by hop)."""
    graph, frontier, seen = nx.Graph(), set(touched), set()
    while frontier:
        part = seller_graph(session, config=config, sellers=frontier)
        graph.add_edges_from(part.edges(data=True))
        seen |= frontier
        frontier = set(part.nodes) - seen
    return graph


def _communities(graph: nx.Graph) -> list[set[str]]:
    found = nx.community.louvain_communities(graph, weight="weight", seed=_SEED) if graph.number_of_edges() else []
    return [set(c) for c in found if len(c) >= 2]


def _ring_stats(ring: Ring, members: set[str], by_seller: dict[str, list[ListingFacts]], graph: nx.Graph) -> None:
    mine = [f for s in members for f in by_seller.get(s, ())]
    brands = sorted({f.brand_id for f in mine if f.brand_id is not None})
    flagged = sum(1 for f in mine if f.flagged or f.confirmed)
    ring.sellers, ring.listings, ring.brand_ids = len(members), len(mine), brands
    ring.flagged_share = round(flagged / len(mine), 4) if mine else 0.0
    ring.first_seen = min((f.at for f in mine), default=dt.datetime.now(dt.UTC))
    ring.last_seen = max((f.at for f in mine), default=ring.first_seen)
    sub = graph.subgraph(members)
    kinds = {k for _, _, d in sub.edges(data=True) for k in d.get("kinds", {})}
    # score in [0, 1]: mostly how much of what it sells is flagged, then breadth and kinds of evidence
    ring.score = round(0.5 * ring.flagged_share + 0.2 * min(1.0, len(brands) / 3) + 0.15 * min(1.0, len(members) / 5)
                       + 0.15 * min(1.0, len(kinds) / 3), 4)
    ring.updated_at = dt.datetime.now(dt.UTC)


def update_rings(home: Home, *, config: EvidenceConfig | None = None) -> RingUpdate:
    """Take in the listings scored since the last update; re-detect rings where the graph changed."""
    config = config or EvidenceConfig()
    with home.write_lock(), home.sessions.begin() as session:
        state = session.get(RingState, 1)
        if state is None:
            state = RingState(id=1, last_listing_row=0, listings_kept=True)
            session.add(state)
        if not state.listings_kept:  # built before `ring_listings`: record what it took in, once
            keep_catalog(session, up_to=state.last_listing_row)
            state.listings_kept = True
        gathered = gather_update(session, after_row=state.last_listing_row, config=config)
        facts, new_from = gathered.facts, gathered.new_from
        if new_from == len(facts):
            return RingUpdate(0, 0, len(_live(session)), 0)
        edges = find_edges(facts, new_from=new_from, config=config, informative=gathered.informative)
        keep_taken_in(session, facts[new_from:])
        touched = _store_edges(session, edges) | {f.seller for f in facts[new_from:]}
        session.flush()
        graph = _component_graph(session, touched, config)
        affected = set(graph.nodes) | touched
        old: dict[int, set[str]] = {}
        for (ring_id,) in session.execute(
                select(RingMember.ring_id).join(Ring, Ring.id == RingMember.ring_id)
                .where(RingMember.seller_id.in_(list(affected)), Ring.dissolved_at.is_(None))):
            old.setdefault(ring_id, set())
        for ring_id, seller in session.execute(select(RingMember.ring_id, RingMember.seller_id)
                                               .where(RingMember.ring_id.in_(list(old)))):
            old[ring_id].add(seller)
        changed, claimed = 0, set()
        communities = _communities(graph)
        by_seller = sellers_listings(session, {s for c in communities for s in c})
        for members in sorted(communities, key=lambda c: (-len(c), sorted(c))):
            best = max(((len(members & m), rid) for rid, m in old.items() if rid not in claimed and members & m),
                       default=None)
            ring = session.get(Ring, best[1]) if best else None
            if ring is None:
                ring = Ring(score=0.0, sellers=0, listings=0, brand_ids=[], flagged_share=0.0,
                            first_seen=dt.datetime.now(dt.UTC), last_seen=dt.datetime.now(dt.UTC))
                session.add(ring)
                session.flush()
            else:
                claimed.add(ring.id)
                session.execute(delete(RingMember).where(RingMember.ring_id == ring.id))
            session.add_all(RingMember(ring_id=ring.id, seller_id=s) for s in sorted(members))
            _ring_stats(ring, members, by_seller, graph)
            changed += 1
        for ring_id in set(old) - claimed:  # the evidence now groups these sellers otherwise
            session.execute(delete(RingMember).where(RingMember.ring_id == ring_id))
            session.get(Ring, ring_id).dissolved_at = dt.datetime.now(dt.UTC)
        state.last_listing_row = facts[-1].row
        state.updated_at = dt.datetime.now(dt.UTC)
        session.flush()
        return RingUpdate(len(facts) - new_from, len(edges), len(_live(session)), changed)


def rebuild_rings(home: Home, *, config: EvidenceConfig | None = None) -> RingUpdate:
    """Forget every edge and ring and take in the whole catalog again."""
    with home.write_lock(), home.sessions.begin() as session:
        session.execute(delete(RingMember))
        session.execute(delete(Ring))
        session.execute(delete(SellerEdge))
        session.execute(delete(RingFakeRef))
        session.execute(delete(RingListing))
        session.execute(delete(RingState))
    return update_rings(home, config=config)


def _live(session: Session) -> list[Ring]:
    return list(session.scalars(select(Ring).where(Ring.dissolved_at.is_(None)).order_by(Ring.score.desc(), Ring.id)))


def _brand_names(session: Session) -> dict[int, str]:
    return dict(session.execute(select(Brand.id, Brand.name)).tuples().all())


def _summary(ring: Ring, names: dict[int, str], *, brand_id: int | None) -> dict[str, Any]:
    brands = [names.get(b, str(b)) for b in ring.brand_ids]
    if brand_id is not None:  # a brand sees that other brands are hit, not which
        brands = [names[brand_id]] if brand_id in ring.brand_ids else []
    return {"id": ring.id, "score": ring.score, "sellers": ring.sellers, "listings": ring.listings,
            "brands": brands, "brands_hit": len(ring.brand_ids), "flagged_share": ring.flagged_share,
            "first_seen": _utc(ring.first_seen).isoformat(), "last_seen": _utc(ring.last_seen).isoformat()}


def list_rings(session: Session, *, brand_id: int | None = None, since: dt.datetime | None = None,
               visible_to: int | None = None) -> list[dict[str, Any]]:
    """Live rings, best first; `brand_id` keeps those touching a brand, `since` those seen after a time;
    `visible_to` (a brand-scoped caller) keeps only rings touching that brand and hides the others' names."""
    names = _brand_names(session)
    out = []
    for ring in _live(session):
        if brand_id is not None and brand_id not in ring.brand_ids:
            continue
        if visible_to is not None and visible_to not in ring.brand_ids:
            continue
        if since is not None and _utc(ring.last_seen) < since:
            continue
        out.append(_summary(ring, names, brand_id=visible_to))
    return out


def ring_detail(session: Session, ring_id: int, *, visible_to: int | None = None) -> dict[str, Any]:
    """A ring with its sellers, listings and evidence edges. A brand-scoped caller (`visible_to`) gets
    404 for rings not touching its brand and sees other brands' listings only as counts."""
    ring = session.get(Ring, ring_id)
    if ring is None or ring.dissolved_at is not None or (visible_to is not None and visible_to not in ring.brand_ids):
        raise NotFound(f"no ring {ring_id}")
    names = _brand_names(session)
    members = sorted(session.scalars(select(RingMember.seller_id).where(RingMember.ring_id == ring_id)))
    listings, hidden = [], 0
    rows = session.scalars(select(Listing).where(Listing.seller_id.in_(members)).order_by(Listing.id)).all()
    visible_rows = set()
    for row in rows:
        if visible_to is not None and row.brand_id != visible_to:
            hidden += 1
            continue
        visible_rows.add(row.id)
        listings.append({"row": row.id, "listing_id": row.listing_id, "seller_id": row.seller_id,
                         "brand": names.get(row.brand_id) if row.brand_id else None, "risk": row.risk,
                         "decision": row.decision, "title": (row.result or {}).get("title"),
                         "image_sha256": row.image_sha256, "model": row.model_tag,
                         "scored_at": _utc(row.scored_at).isoformat()})
    edges = []
    for e in session.scalars(select(SellerEdge).where(SellerEdge.seller_a.in_(members),
                                                      SellerEdge.seller_b.in_(members))
                             .order_by(SellerEdge.seller_a, SellerEdge.seller_b, SellerEdge.kind)):
        examples = [x for x in e.examples if visible_to is None or (x[0] in visible_rows and x[1] in visible_rows)]
        if visible_to is not None and e.kind in ("serial", "known_fake") and not examples:
            continue  # shown only by other brands' listings: their serial registry and references stay theirs
        if visible_to is not None and e.kind == "known_fake":  # the reference may be another brand's
            examples = [[a, b, None] for a, b, _ in examples]
        edges.append({"sellers": [e.seller_a, e.seller_b], "kind": e.kind, "weight": e.weight, "count": e.count,
                      "examples": [{"listings": [a, b], "detail": d} for a, b, d in examples],
                      "first_seen": _utc(e.first_seen).isoformat(), "last_seen": _utc(e.last_seen).isoformat()})
    return {**_summary(ring, names, brand_id=visible_to), "members": members, "listings_shown": listings,
            "listings_hidden": hidden, "edges": edges}
