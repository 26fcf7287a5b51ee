"""The shared grocery packages as a manifest: 31 products, 9 brands by the README's rule, splits as given."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from markguard.datasets.grocery import GroceryOptions, brand_of, build_grocery
from markguard.datasets.manifest import read_manifest
from markguard.serving.cli import main


def test_brand_rule() -> None:
    assert brand_of("Arla-Mild-Vanilla-Yoghurt") == "Arla"
    assert brand_of("God-Morgon-Apple-Juice") == "God Morgon"
    assert brand_of("Tropicana-Mandarin-Morning") == "Tropicana"
    assert brand_of("Oatly-Oat-Milk") == "Oatly"


def test_grocery_manifest(grocery: Path, tmp_path: Path) -> None:
    report, stats = build_grocery(tmp_path / "g", source=grocery, opts=GroceryOptions(), progress=False)
    rows = read_manifest(tmp_path / "g")
    assert len({r.product for r in rows}) == 31
    assert {r.brand for r in rows} == {"Arla", "Alpro", "Oatly", "Tropicana", "Valio", "Garant", "Bravo", "God Morgon", "Yoggi"}
    for r in rows:
        assert r.brand == brand_of(r.product or "")
    iconic = [r for r in rows if r.source == "iconic"]
    assert len(iconic) == 31 and len({r.product for r in iconic}) == 31
    photos = Counter(r.split for r in rows if r.source == "photo")
    assert photos == {"train": 864, "val": 100}
    assert not report.skipped
    assert (tmp_path / "g" / "contact_sheet.png").is_file()


def test_missing_source_is_reported_not_crashed(tmp_path: Path, capsys) -> None:
    rc = main(["datasets", "grocery", "--out", str(tmp_path / "g"), "--source", str(tmp_path / "nowhere"), "--quiet"])
    assert rc == 1
    captured = capsys.readouterr()
    assert "missing" in captured.err and '"images": 0' in captured.out
