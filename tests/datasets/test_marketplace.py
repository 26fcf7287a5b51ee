"""`datasets marketplace`: deterministic by seed, the feed's fields, and the planted truth kept apart."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from markguard.datasets.marketplace import MarketplaceOptions, build_marketplace

SMALL = MarketplaceOptions(seed=3, honest_sellers=6, resellers=2, lone_counterfeiters=2, rings=2, ring_sellers=(2, 3),
                           listings_per_seller=(3, 4), stock_photo_rate=0.5)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "build.json"):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_marketplace_is_deterministic_and_truth_is_apart(tmp_path: Path, grocery: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    stats = build_marketplace(a, source=grocery, opts=SMALL)
    build_marketplace(b, source=grocery, opts=SMALL)
    assert _digest(a) == _digest(b)
    rows = [json.loads(line) for line in (a / "feed.jsonl").read_text().splitlines()]
    truth = json.loads((a / "truth.json").read_text())
    assert len(rows) == stats["listings"] == len(truth["listings"])
    assert stats["sellers"] == len(truth["sellers"]) == 6 + 2 + 2 + sum(len(r["sellers"]) for r in truth["rings"])
    for row in rows:
        assert {"listing_id", "seller_id", "brand", "product", "title", "image", "listed_at"} <= set(row)
        assert (a / row["image"]).is_file() and "ring" not in row and "role" not in row
    assert [r["listed_at"] for r in rows] == sorted(r["listed_at"] for r in rows)
    for ring in truth["rings"]:
        mine = [r for r in rows if truth["listings"][r["listing_id"]]["ring"] == ring["ring"]]
        assert {r["seller_id"] for r in mine} == set(ring["sellers"])
        assert {r["serial"] for r in mine if "serial" in r} <= set(ring["serials"].values())
        assert {r["brand"] for r in mine} <= set(ring["brands"])
    stock = [r for r in rows if truth["listings"][r["listing_id"]]["stock_photo"]]
    assert stock and all(truth["sellers"][r["seller_id"]] in ("honest", "reseller") for r in stock)
    with pytest.raises(Exception, match="another|different"):
        build_marketplace(a, source=grocery, opts=MarketplaceOptions(seed=4, rings=1))
