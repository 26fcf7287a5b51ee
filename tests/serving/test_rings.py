"""Seller networks, cases and reports on small catalogs built row by row (no scoring: fast and exact)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, select

from markguard.serving.intelligence.evidence import (
    EvidenceConfig,
    ListingFacts,
    find_edges,
    gather_listings,
    gather_update,
    title_template,
)
from markguard.serving.intelligence.rings import list_rings, rebuild_rings, ring_detail, update_rings
from markguard.serving.intelligence.tables import (
    CaseExport,
    ListingEvidence,
    RingFakeRef,
    RingListing,
    RingState,
    SellerEdge,
)
from markguard.serving.reviews import Review
from markguard.serving.serials import record_serials
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Brand, Listing, Product, Reference

T0 = dt.datetime(2026, 9, 7, 12, tzinfo=dt.UTC)  # a Monday
STOCK = 0x1234_5678_9ABC_DEF0 - (1 << 63)  # one stock photo's perceptual hash
MASTER = 0x0F0F_F0F0_3C3C_C3C3 - (1 << 63)  # a ring's reposted counterfeit photo
OTHER = 0x7777_1111_2222_4444  # another ring's


class Catalog:
    """Adds listings (and their serials, evidence, reviews) to a home the way scoring would."""

    def __init__(self, root: Path) -> None:
        self.home = Home(root)
        with self.home.sessions.begin() as s:
            for name in ("Oatly", "Arla"):
                brand = Brand(name=name, key=name.casefold(), wordmarks=[])
                s.add(brand)
                s.flush()
                s.add(Product(brand_id=brand.id, name=f"{name}-Oat-Milk", key=f"{name}-oat-milk".casefold()))
            self.brands = {b.name: b.id for b in s.scalars(select(Brand))}
        self.n = 0

    def add(self, seller: str, *, brand: str = "Oatly", phash: int | None = None, decision: str = "pass",
            title: str | None = None, serial: str | None = None, fake_refs: tuple[int, ...] = (),
            vector: np.ndarray | None = None, at: dt.datetime = T0, listed_at: dt.datetime | None = None,
            photo: bytes | None = None, model: str = "m1", evidence: bool = True) -> int:
        self.n += 1
        if phash is None:
            phash = int(np.random.default_rng(self.n).integers(-(1 << 62), 1 << 62))
        sha = self.home.put_blob(photo) if photo is not None else f"{self.n:064x}"
        with self.home.sessions.begin() as s:
            row = Listing(listing_id=f"L{self.n}", seller_id=seller, brand_id=self.brands[brand], image_sha256=sha,
                          phash=phash, risk=0.9 if decision != "pass" else 0.1, decision=decision, model_tag=model,
                          result={"title": title} if title else {}, scored_at=at)
            s.add(row)
            s.flush()
            if serial:
                record_serials(s, self.home, listing_row_id=row.id, brand_id=row.brand_id, normalized_serials=[serial])
            vec = None if vector is None else (vector / np.linalg.norm(vector)).astype(np.float32).tobytes()
            if evidence:
                    s.add(ListingEvidence(listing_row_id=row.id, model_tag=model, vector=vec, fake_refs=list(fake_refs),
                                      listed_at=listed_at))
            return row.id


@pytest.fixture()
def catalog(tmp_path: Path, database_url: str | None) -> Catalog:
    """A catalog on each backend: seller edges are read and written in bulk (`rings._seller_edges`)."""
    return Catalog(tmp_path / "home")


def _pairs(home: Home) -> dict[str, set[frozenset[str]]]:
    with home.sessions() as s:
        facts = gather_listings(s)
    out: dict[str, set[frozenset[str]]] = {}
    for e in find_edges(facts, new_from=0, config=EvidenceConfig()):
        out.setdefault(e.kind, set()).add(frozenset((e.a.seller, e.b.seller)))
    return out


def test_title_template_masks_brand_product_and_numbers():
    masks = {"oatly", "oat", "milk"}
    assert title_template("Oatly Oat Milk ★ORIGINAL★ 12 pcs", masks=masks) == "<x> ★ original ★ # pcs"
    assert title_template("Oat Milk (Oatly)", masks=masks) == "<x> ( <x> )"
    assert title_template(None, masks=masks) is None


def test_each_evidence_kind_makes_an_edge(catalog: Catalog):
    flip = MASTER ^ 0b101  # two bits off: re-encoded or cropped
    v = np.random.default_rng(0).normal(size=16)
    catalog.add("p1", phash=MASTER, decision="review")
    catalog.add("p2", phash=flip)
    catalog.add("s1", serial="OA-12345")
    catalog.add("s2", serial="oa 12345")  # same serial once separators and case are ignored
    catalog.add("k1", fake_refs=(7,))
    catalog.add("k2", fake_refs=(7,))
    catalog.add("e1", vector=v, decision="takedown")
    catalog.add("e2", vector=v + 0.01, decision="review")
    catalog.add("e3", vector=v + 0.01)  # near-identical but not flagged: no embedding edge
    catalog.add("t1", title="Oatly Oat Milk WHOLESALE EXPORT x12")
    catalog.add("t2", title="Oatly Oat Milk wholesale export x40")
    catalog.add("h1", title="Oatly Oat Milk")  # too plain to be a fingerprint
    catalog.add("h2", title="Oatly Oat Milk")
    pairs = _pairs(catalog.home)
    assert pairs["photo"] == {frozenset({"p1", "p2"})}
    assert pairs["serial"] == {frozenset({"s1", "s2"})}
    assert pairs["known_fake"] == {frozenset({"k1", "k2"})}
    assert pairs["embedding"] == {frozenset({"e1", "e2"})}
    assert pairs["template"] == {frozenset({"t1", "t2"})}


def _facts(phashes: list[int | None], sellers: list[str], vectors: list[np.ndarray | None],
           flagged: list[bool]) -> list[ListingFacts]:
    return [ListingFacts(row=i, listing_id=f"L{i}", seller=sellers[i], brand_id=1, phash=phashes[i], flagged=flagged[i],
                         confirmed=False, template=None, serials=[], fake_refs=[], vector=vectors[i], at=T0)
            for i in range(len(phashes))]


def test_indexed_photo_and_vector_search_finds_exactly_the_close_pairs():
    """`find_edges` finds near-same photos through a multi-index hash and near-identical vectors in blocks:
    every pair a comparison of all pairs finds, at every Hamming distance up to the limit and none past it,
    for a rebuild and for an update of the newest listings."""
    rng = np.random.default_rng(7)
    bits = EvidenceConfig().photo_bits
    phashes: list[int | None] = []
    vectors: list[np.ndarray | None] = []
    masters = rng.integers(-(1 << 62), 1 << 62, size=40)
    directions = rng.normal(size=(40, 32))
    for n in range(1200):
        k = int(rng.integers(len(masters)))
        h = int(masters[k])
        for b in rng.choice(64, size=n % (bits + 5), replace=False):  # 0 to bits + 4 bits flipped, in turn
            h ^= 1 << int(b)
        phashes.append(None if n % 97 == 0 else (h + (1 << 63)) % (1 << 64) - (1 << 63))
        v = directions[k] + rng.normal(size=32) * rng.choice([0.05, 0.2, 0.5])
        vectors.append(None if n % 3 == 0 else (v / np.linalg.norm(v)).astype(np.float32))
    sellers = [f"s{rng.integers(300)}" for _ in phashes]
    flagged = list(rng.random(len(phashes)) < 0.5)
    facts = _facts(phashes, sellers, vectors, flagged)
    config = EvidenceConfig()
    for new_from in (0, 900):
        photo, embedding = set(), set()
        for i in range(new_from, len(facts)):
            for j in range(i):
                if sellers[i] == sellers[j]:
                    continue
                if phashes[i] is not None and phashes[j] is not None \
                        and bin((phashes[i] ^ phashes[j]) & (2**64 - 1)).count("1") <= bits:
                    photo.add((j, i))
                if flagged[i] and flagged[j] and vectors[i] is not None and vectors[j] is not None \
                        and float(vectors[i] @ vectors[j]) >= config.embedding_similarity + 1e-5:
                    embedding.add((j, i))
        edges = find_edges(facts, new_from=new_from, config=config)
        found = {kind: {(e.a.row, e.b.row) for e in edges if e.kind == kind} for kind in ("photo", "embedding")}
        assert found["photo"] == photo
        assert embedding <= found["embedding"]
        assert len(found["embedding"] - embedding) <= 2  # a cosine within float error of the threshold
        distances = {bin((phashes[a] ^ phashes[b]) & (2**64 - 1)).count("1") for a, b in photo}
        assert distances == set(range(bits + 1))  # every distance up to the limit was there to be found
        assert len(photo) > 200 and len(embedding) > 200


def _random_catalog(catalog: Catalog, rng: np.random.Generator, n: int) -> None:
    """Listings with every kind of evidence, near and far: photos a few bits off a handful of masters,
    shared serials and known fakes, titles of fingerprint templates and of a house style, near vectors,
    flags by decision and by review (some reviewed before the network takes them in)."""
    masters = [int(m) for m in rng.integers(-(1 << 62), 1 << 62, size=6)]
    directions = rng.normal(size=(6, 16))
    for _ in range(n):
        k = int(rng.integers(len(masters)))
        phash = masters[k]
        for b in rng.choice(64, size=int(rng.integers(0, 12)), replace=False):
            phash ^= 1 << int(b)
        phash = (phash + (1 << 63)) % (1 << 64) - (1 << 63)
        titles = [None, f"Oatly Oat Milk GENUINE IMPORT lot {k}", "Oatly Oat Milk best price fast ship",
                  f"Oat Milk factory outlet {rng.integers(3)}"]
        row = catalog.add(f"s{rng.integers(60)}", brand=str(rng.choice(["Oatly", "Arla"])),
                          phash=None if rng.random() < 0.1 else phash,
                          decision=str(rng.choice(["pass", "pass", "review", "takedown"])),
                          title=titles[int(rng.integers(len(titles)))],
                          serial=f"OA-{rng.integers(40)}" if rng.random() < 0.3 else None,
                          fake_refs=tuple(int(r) for r in rng.choice(8, size=int(rng.integers(0, 2)))),
                          vector=directions[k] + rng.normal(size=16) * 0.15 if rng.random() < 0.6 else None,
                          at=T0 + dt.timedelta(minutes=catalog.n))
        if rng.random() < 0.15:
            with catalog.home.sessions.begin() as s:
                s.add(Review(listing_row_id=row, brand_id=None, label=str(rng.choice(["counterfeit", "genuine"])),
                             image_sha256=f"{row:064x}", reviewer_key_id="mod"))


def _seller_edges(home: Home) -> list[tuple]:
    with home.sessions() as s:
        return [(e.seller_a, e.seller_b, e.kind, e.weight, e.count, e.examples, _utc(e.first_seen), _utc(e.last_seen))
                for e in s.scalars(select(SellerEdge).order_by(SellerEdge.seller_a, SellerEdge.seller_b, SellerEdge.kind))]


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _edges_both_ways(home: Home, config: EvidenceConfig) -> list[tuple]:
    """The next update's edges as `gather_update` looks the older listings up, asserted equal to those over
    the whole catalog (`gather_listings`, as updates read it before)."""
    with home.sessions() as s:
        state = s.get(RingState, 1)
        gathered = gather_update(s, after_row=state.last_listing_row, config=config)
        everything = gather_listings(s)
    new_from = next(i for i, f in enumerate(everything) if f.row > state.last_listing_row)
    def plain(facts: list[ListingFacts]) -> list[tuple]:
        return [(*dataclasses.astuple(dataclasses.replace(f, vector=None)),
                 None if f.vector is None else f.vector.tobytes()) for f in facts]

    assert plain(gathered.facts[gathered.new_from :]) == plain(everything[new_from:])
    assert gathered.new_from < new_from  # not every older listing was read
    looked_up = find_edges(gathered.facts, new_from=gathered.new_from, config=config, informative=gathered.informative)
    read_all = find_edges(everything, new_from=new_from, config=config)
    as_tuples = [[(e.kind, e.weight, e.a.row, e.b.row, e.detail) for e in edges] for edges in (looked_up, read_all)]
    assert as_tuples[0] == as_tuples[1]
    return as_tuples[0]


def test_updates_that_look_older_listings_up_find_the_edges_of_a_whole_catalog_read(catalog: Catalog):
    """An update reads the new listings and looks up, by index, only the older ones an edge can join them
    with (`gather_update`): it finds the edges that reading every listing finds, update after update, and
    a network built before `ring_listings` existed fills it first. Seller edges of every kind but templates
    are then those of a rebuild (a template judged rare when taken in may be common by now)."""
    rng = np.random.default_rng(11)
    lookups = EvidenceConfig(lookup_share=float("inf"))  # every update after the first by lookups
    _random_catalog(catalog, rng, 150)
    assert update_rings(catalog.home, config=lookups).listings == 150
    kinds: set[str] = set()
    for step in (1, 7, 30, 2, 60, "migrated", 20, 10):
        if step == "migrated":  # a network kept before migration 0011: the next update fills its tables
            with catalog.home.sessions.begin() as s:
                s.execute(delete(RingFakeRef))
                s.execute(delete(RingListing))
                s.get(RingState, 1).listings_kept = False
            continue
        _random_catalog(catalog, rng, step)
        with catalog.home.sessions() as s:
            if s.get(RingState, 1).listings_kept:
                kinds |= {edge[0] for edge in _edges_both_ways(catalog.home, lookups)}
        assert update_rings(catalog.home, config=lookups).listings == step
    assert kinds == {"photo", "serial", "known_fake", "template", "embedding"}
    incremental = [e for e in _seller_edges(catalog.home) if e[2] != "template"]
    rebuild_rings(catalog.home, config=EvidenceConfig(lookup_share=0.0))  # every listing read
    assert [e for e in _seller_edges(catalog.home) if e[2] != "template"] == incremental


def test_common_template_is_a_house_style_not_evidence(catalog: Catalog):
    for i in range(EvidenceConfig().template_max_sellers + 1):
        catalog.add(f"h{i}", title=f"Oatly Oat Milk fresh from the farm {i}")
    assert "template" not in _pairs(catalog.home)


def _plant_ring(catalog: Catalog, sellers: list[str], *, brand: str = "Oatly", at: dt.datetime = T0,
                other: bool = False) -> None:
    """Sellers reposting one photo with one cloned serial and title template (`other`: a second ring's)."""
    master, serial, title = ((OTHER, "AR-555", "Arla Oat Milk !!BULK DEAL!! x3") if other else
                             (MASTER, "OA-999", "Oatly Oat Milk ★ORIGINAL★ FACTORY x5"))
    for i, seller in enumerate(sellers):
        catalog.add(seller, brand=brand, phash=master ^ (1 << i), decision="review", serial=serial, title=title,
                    at=at + dt.timedelta(hours=i))


def test_ring_found_and_stock_photo_sellers_kept_out(catalog: Catalog):
    _plant_ring(catalog, ["r1", "r2", "r3"])
    for i in range(6):  # honest sellers all posting the brand's stock photo (one even flagged by mistake)
        catalog.add(f"h{i}", phash=STOCK, decision="review" if i == 0 else "pass", title="Oatly Oat Milk")
    catalog.add("lone", phash=MASTER ^ 0xFF00FF, decision="takedown", title="cheap oat milk deal 9")
    update = rebuild_rings(catalog.home)
    assert update.rings == 1
    with catalog.home.sessions() as s:
        rings = list_rings(s)
        detail = ring_detail(s, rings[0]["id"])
    assert detail["members"] == ["r1", "r2", "r3"]
    assert rings[0]["flagged_share"] == 1.0 and rings[0]["listings"] == 3
    assert {e["kind"] for e in detail["edges"]} == {"photo", "serial", "template"}
    assert rings[0]["first_seen"] == T0.isoformat()


def test_incremental_update_joins_the_existing_ring(catalog: Catalog):
    _plant_ring(catalog, ["r1", "r2", "r3"])
    first = rebuild_rings(catalog.home)
    with catalog.home.sessions() as s:
        ring_id = list_rings(s)[0]["id"]
    assert update_rings(catalog.home).listings == 0  # nothing new
    catalog.add("r4", phash=MASTER, decision="takedown", serial="OA-999", at=T0 + dt.timedelta(days=3))
    update = update_rings(catalog.home)
    assert update.listings == 1 and first.rings == update.rings == 1
    with catalog.home.sessions() as s:
        detail = ring_detail(s, ring_id)
    assert detail["members"] == ["r1", "r2", "r3", "r4"]
    assert detail["last_seen"] == (T0 + dt.timedelta(days=3)).isoformat()


def test_brand_view_leaves_other_brands_out(catalog: Catalog):
    _plant_ring(catalog, ["r1", "r2"], brand="Oatly")
    catalog.add("r1", brand="Arla", phash=MASTER ^ 0b11, decision="review", fake_refs=(42,), serial="AR-1",
                title="secret arla title")
    catalog.add("r2", brand="Arla", fake_refs=(42,), serial="AR-1")
    _plant_ring(catalog, ["x1", "x2"], brand="Arla", at=T0 + dt.timedelta(days=1), other=True)
    rebuild_rings(catalog.home)
    oatly, arla = catalog.brands["Oatly"], catalog.brands["Arla"]
    with catalog.home.sessions() as s:
        everything = list_rings(s)
        mine = list_rings(s, visible_to=oatly)
        assert len(everything) == 2 and len(mine) == 1
        assert mine[0]["brands"] == ["Oatly"] and mine[0]["brands_hit"] == 2
        detail = ring_detail(s, mine[0]["id"], visible_to=oatly)
        other = next(r["id"] for r in everything if r["id"] != mine[0]["id"])
        with pytest.raises(LookupError):
            ring_detail(s, other, visible_to=oatly)
    text = json.dumps(detail)
    assert "Arla" not in text and "secret arla title" not in text and "42" not in text.replace(".42", "")
    assert detail["listings_hidden"] == 2 and all(x["brand"] == "Oatly" for x in detail["listings_shown"])
    assert {"Oatly", "Arla"} == set(next(r for r in everything if r["id"] == mine[0]["id"])["brands"])
    assert arla in catalog.brands.values()


def test_case_bundle_verifies_and_a_changed_file_is_detected(catalog: Catalog, grocery: Path, tmp_path: Path):
    from markguard.serving.intelligence.cases import export_case, verify_case

    photos = sorted((grocery / "train").rglob("Oatly-*.jpg"))[:3]
    for i, (seller, photo) in enumerate(zip(["r1", "r2", "r3"], photos, strict=True)):
        catalog.add(seller, phash=MASTER ^ (1 << i), decision="review", serial="OA-999", photo=photo.read_bytes())
    rebuild_rings(catalog.home)
    with catalog.home.sessions() as s:
        ring_id = list_rings(s)[0]["id"]
    out = tmp_path / "case"
    report = export_case(catalog.home, ring_id, out, actor="tester", role="investigator")
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"case.json", "report.html", "network.png", "manifest.sha256"} <= names
    assert sum(n.startswith("photos/") for n in names) == 3 and sum(n.startswith("annotated/") for n in names) == 3
    case = json.loads((out / "case.json").read_text())
    assert len(case["listings"]) == 3 and case["models"] == ["m1"] and case["listings"][0]["serial_hmacs"]
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert verify_case(out) == []
    photo = next(out.glob("photos/*"))
    data = bytearray(photo.read_bytes())
    data[-10] ^= 1
    photo.write_bytes(bytes(data))
    (out / "extra.txt").write_text("planted")
    assert verify_case(out) == [f"changed: {photo.relative_to(out).as_posix()}", "unlisted: extra.txt"]
    with catalog.home.sessions() as s:
        log = s.scalars(select(CaseExport)).all()
    assert [(x.ring_id, x.actor, x.files, x.manifest_sha256) for x in log] == [
        (ring_id, "tester", report.files, report.manifest_sha256)]


def test_report_figures_equal_the_catalog_counts(catalog: Catalog, tmp_path: Path):
    from markguard.serving.intelligence.reports import build_report, write_report

    week2 = T0 + dt.timedelta(days=7)
    rows = {}
    for i, (brand, decision, at) in enumerate([
        ("Oatly", "pass", T0), ("Oatly", "pass", T0), ("Oatly", "review", T0), ("Oatly", "takedown", week2),
        ("Arla", "takedown", week2), ("Arla", "takedown", week2), ("Arla", "pass", T0),
    ]):
        rows[i] = catalog.add(f"s{i}", brand=brand, decision=decision, at=at, listed_at=at - dt.timedelta(minutes=10 * (i + 1)),
                              model="m2" if i == 6 else "m1")
    catalog.add("late", at=T0 + dt.timedelta(days=60))  # outside the period
    with catalog.home.sessions.begin() as s:
        for row, label in ((rows[3], "counterfeit"), (rows[0], "counterfeit"), (rows[4], "genuine")):
            listing = s.get(Listing, row)
            s.add(Review(listing_row_id=row, brand_id=listing.brand_id, label=label, image_sha256="0" * 64,
                         reviewer_key_id="k", created_at=week2))
        for brand, kind in (("Oatly", "genuine"), ("Oatly", "counterfeit"), ("Arla", "genuine")):
            s.add(Reference(brand_id=catalog.brands[brand], kind=kind, sha256=f"{len(brand)}{kind}".ljust(64, "0"),
                            width=1, height=1, source="t", created_at=T0))
    _plant_ring(catalog, ["r1", "r2", "r3"], at=T0 + dt.timedelta(days=60))
    rebuild_rings(catalog.home)
    start, end = T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=14)
    with catalog.home.sessions() as s:
        figures = build_report(s, start=start, end=end)
        oatly = build_report(s, start=start, end=end, brand_id=catalog.brands["Oatly"])
        later = build_report(s, start=end, end=end + dt.timedelta(days=60))
    assert figures["listings_scanned"] == 7
    assert figures["decisions"] == {"pass": 3, "review": 1, "takedown": 3}
    assert figures["decisions_by_brand"] == {"Arla": {"pass": 1, "takedown": 2},
                                             "Oatly": {"pass": 2, "review": 1, "takedown": 1}}
    assert figures["decisions_by_week"] == {"2026-W37": {"pass": 3, "review": 1}, "2026-W38": {"takedown": 3}}
    assert figures["takedowns"] == 3
    assert figures["reviews"] == {"confirmed": 1, "overturned": 2}
    assert figures["time_to_decision_s"] == {"listings": 7, "median": 2400.0, "p90": 4200.0}
    assert figures["rings"] == {"found": 0, "sizes": []}
    assert figures["references_added"] == {"Arla": {"genuine": 1, "counterfeit": 0},
                                           "Oatly": {"genuine": 1, "counterfeit": 1}}
    assert figures["model_versions"] == {"m1": 6, "m2": 1}
    assert later["rings"] == {"found": 1, "sizes": [3]} and later["listings_scanned"] == 4
    assert oatly["listings_scanned"] == 4 and set(oatly["decisions_by_brand"]) == {"Oatly"}
    assert oatly["reviews"] == {"confirmed": 1, "overturned": 1} and set(oatly["references_added"]) == {"Oatly"}
    files = write_report(figures, tmp_path / "report")
    assert [f.name for f in files] == ["report.json", "report.html", "report.pdf"]
    assert json.loads(files[0].read_text()) == figures and files[2].read_bytes().startswith(b"%PDF")


def test_api_rings_cases_and_reports_by_role(catalog: Catalog, grocery: Path):
    from starlette.testclient import TestClient

    from markguard.serving.api import build_app
    from markguard.serving.keys import Role, create_key
    from markguard.serving.limits import RateLimiter

    photo = sorted((grocery / "train").rglob("Oatly-*.jpg"))[0].read_bytes()
    _plant_ring(catalog, ["r1", "r2"], brand="Oatly")
    catalog.add("r1", brand="Arla", phash=MASTER ^ 0b11, decision="review", fake_refs=(42,), serial="AR-1",
                title="secret arla title", photo=photo)
    _plant_ring(catalog, ["x1", "x2"], brand="Arla", at=T0 + dt.timedelta(days=1), other=True)
    rebuild_rings(catalog.home)
    home = catalog.home
    keys = {r: create_key(home, role=Role(r))[0] for r in ("admin", "investigator", "platform")}
    keys["oatly"] = create_key(home, role=Role.BRAND, brand="Oatly")[0]
    backend = types.SimpleNamespace(home=home, limiter=RateLimiter(rate=1000.0, burst=1000))
    client = TestClient(build_app(backend), raise_server_exceptions=False)

    def get(path: str, who: str | None, method: str = "GET"):  # noqa: ANN202
        headers = {"Authorization": f"Bearer {keys[who]}"} if who else {}
        return client.request(method, path, headers=headers)

    assert get("/v1/rings", None).status_code == 401
    assert get("/v1/rings", "platform").status_code == 403
    everything = get("/v1/rings", "investigator").json()["rings"]
    assert len(everything) == 2
    mine = get("/v1/rings", "oatly").json()["rings"]
    assert len(mine) == 1 and mine[0]["brands"] == ["Oatly"]
    other = next(r["id"] for r in everything if r["id"] != mine[0]["id"])
    assert get(f"/v1/rings/{other}", "oatly").status_code == 404
    assert get(f"/v1/rings/{other}/export", "oatly", "POST").status_code == 404
    assert get("/v1/rings?brand=Arla", "oatly").status_code == 404
    shown = get(f"/v1/rings/{mine[0]['id']}", "oatly")
    assert shown.status_code == 200 and "Arla" not in shown.text and "secret arla title" not in shown.text
    bundle = get(f"/v1/rings/{mine[0]['id']}/export", "oatly", "POST")
    assert bundle.status_code == 200 and bundle.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(bundle.content)) as zf:
        names = zf.namelist()
        text = b"".join(zf.read(n) for n in names if n.endswith((".json", ".html")))
    assert "manifest.sha256" in names and b"secret arla title" not in text and b"Arla" not in text
    assert not any(n.startswith("photos/") for n in names)  # the only kept photo is the Arla listing's
    full = get(f"/v1/rings/{mine[0]['id']}/export", "investigator", "POST")
    with zipfile.ZipFile(io.BytesIO(full.content)) as zf:
        assert any(n.startswith("photos/") for n in zf.namelist())
    with home.sessions() as s:
        log = s.scalars(select(CaseExport).order_by(CaseExport.id)).all()
    assert [(x.role, x.brand_id) for x in log] == [("brand", catalog.brands["Oatly"]), ("investigator", None)]
    assert get("/v1/reports?from=2026-09-01&to=2026-10-01", "investigator").status_code == 403
    admin = get("/v1/reports?from=2026-09-01&to=2026-10-01", "admin").json()
    brand = get("/v1/reports?from=2026-09-01&to=2026-10-01", "oatly").json()
    assert admin["listings_scanned"] == 5 and brand["listings_scanned"] == 2
    assert "Arla" not in json.dumps(brand)
    assert get("/v1/reports?from=2026-10-01&to=2026-09-01", "admin").status_code == 422


def test_sharing_is_opt_in_revocable_and_only_known_fakes(catalog: Catalog):
    from markguard.serving.intelligence.sharing import revoke_sharing, share_known_fakes, shared_known_fakes
    from markguard.vision.errors import MarkguardError

    with catalog.home.sessions.begin() as s:
        refs = {}
        for brand in ("Oatly", "Arla"):
            for kind in ("genuine", "counterfeit", "counterfeit"):
                ref = Reference(brand_id=catalog.brands[brand], kind=kind, sha256=f"{brand}{kind}{len(refs)}".ljust(64, "0"),
                                width=1, height=1, source="t")
                s.add(ref)
                s.flush()
                refs.setdefault((brand, kind), []).append(ref.id)
    with catalog.home.sessions.begin() as s:
        assert shared_known_fakes(s) == []  # nothing is shared until a brand opts in
        share_known_fakes(s, "Oatly")
    with catalog.home.sessions.begin() as s:
        shared = shared_known_fakes(s)
        assert [(x.reference_id, x.brand) for x in shared] == [(i, "Oatly") for i in refs[("Oatly", "counterfeit")]]
        assert shared_known_fakes(s, exclude_brand_id=catalog.brands["Oatly"]) == []
        with pytest.raises(MarkguardError):  # a genuine reference is never shared
            share_known_fakes(s, "Arla", reference_ids=refs[("Arla", "genuine")])
        with pytest.raises(MarkguardError):  # nor another brand's known fake
            share_known_fakes(s, "Arla", reference_ids=refs[("Oatly", "counterfeit")])
    with catalog.home.sessions.begin() as s:
        share_known_fakes(s, "Arla", reference_ids=refs[("Arla", "counterfeit")][:1])
    with catalog.home.sessions.begin() as s:
        ids = {x.reference_id for x in shared_known_fakes(s)}
        assert ids == set(refs[("Oatly", "counterfeit")]) | set(refs[("Arla", "counterfeit")][:1])
        revoke_sharing(s, "Oatly")
    with catalog.home.sessions() as s:
        assert [(x.reference_id, x.brand) for x in shared_known_fakes(s)] == [(refs[("Arla", "counterfeit")][0], "Arla")]


def test_evidence_backfilled_from_kept_photos_with_the_real_model(catalog: Catalog, grocery: Path):
    """Listings scored over the API have no evidence row: it is computed from the photo the service kept."""
    from markguard.serving.engine import ScoringEngine
    from markguard.serving.enroll import InputImage, enroll
    from markguard.serving.intelligence.backfill import backfill_evidence
    from markguard.serving.state.schema import ReferenceKind

    fake, other = sorted((grocery / "train").rglob("Oatly-*.jpg"))[:2]
    engine = ScoringEngine(catalog.home, ocr=False)
    report = enroll(catalog.home, engine.artifact, engine.model, brand="Oatly", kind=ReferenceKind.COUNTERFEIT,
                    inputs=[InputImage("confirmed-fake", fake.read_bytes())])
    engine.refresh()  # the enrolled known fake is in the saved index now
    catalog.add("a", photo=fake.read_bytes(), decision="review", evidence=False)
    catalog.add("b", photo=fake.read_bytes(), decision="takedown", evidence=False)
    catalog.add("c", photo=other.read_bytes(), decision="review", evidence=False)
    catalog.add("d", decision="review", evidence=False)  # photo not kept
    assert backfill_evidence(engine) == 3
    with catalog.home.sessions() as s:
        rows = {e.listing_row_id: e for e in s.scalars(select(ListingEvidence))}
    assert [rows[i].fake_refs for i in sorted(rows)] == [report.added, report.added, [], []]
    assert rows[max(rows)].vector is None
    pairs = _pairs(catalog.home)
    assert frozenset({"a", "b"}) in pairs["embedding"] and frozenset({"a", "b"}) in pairs["known_fake"]
    assert all("c" not in p for p in pairs.get("embedding", set()))


def test_cli_rings_case_report(catalog: Catalog, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from markguard.serving.cli import main

    _plant_ring(catalog, ["r1", "r2", "r3"])
    home = ["--home", str(catalog.home.root)]
    assert main(["rings", "update", *home]) == 0
    assert json.loads(capsys.readouterr().out)["rings"] == 1
    assert main(["rings", "list", "--json", "--brand", "Oatly", *home]) == 0
    (ring,) = json.loads(capsys.readouterr().out)
    assert main(["rings", "list", "--json", "--since", "2027-01-01", *home]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["rings", "show", str(ring["id"]), "--json", *home]) == 0
    assert json.loads(capsys.readouterr().out)["members"] == ["r1", "r2", "r3"]
    assert main(["rings", "show", "999", *home]) == 2
    out = tmp_path / "case"
    assert main(["case", "export", str(ring["id"]), "--out", str(out), *home]) == 0
    assert main(["case", "export", str(ring["id"]), "--out", str(out), *home]) == 2  # never over a bundle
    assert main(["case", "verify", str(out)]) == 0
    (out / "network.png").write_bytes(b"not the graph")
    assert main(["case", "verify", str(out)]) == 1
    assert "changed: network.png" in capsys.readouterr().out
    assert main(["report", "--from", "2026-09-01", "--to", "2026-10-01", "--out", str(tmp_path / "r"), *home]) == 0
    assert json.loads((tmp_path / "r" / "report.json").read_text())["listings_scanned"] == 3
    assert main(["report", "--from", "2026-10-01", "--to", "2026-09-01", "--out", str(tmp_path / "r"), *home]) == 2
