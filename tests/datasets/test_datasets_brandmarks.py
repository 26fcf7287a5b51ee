"""Brand-mark renders: every brand on light and dark grounds at each size, wordmarks, counterfeits; bad SVGs skipped."""

from __future__ import annotations

import json
from pathlib import Path

from markguard.datasets.brandmarks import BrandmarkOptions, build_brandmarks
from markguard.datasets.manifest import Label, read_manifest
from markguard.datasets.marks import BrandIcon, load_icons
from markguard.vision.decode import read_image

OPTS = BrandmarkOptions(brands=4, sizes=(64, 96), fonts=2, counterfeits=2, val_fraction=0.3, test_fraction=0.3, seed=1)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_brandmarks_build_is_complete_valid_and_reproducible(tmp_path: Path) -> None:
    build_brandmarks(tmp_path / "a", opts=OPTS, progress=False)
    rows = read_manifest(tmp_path / "a")
    per_brand = 2 * len(OPTS.sizes) + OPTS.fonts + 1 + OPTS.counterfeits
    assert len(rows) == 4 * per_brand
    assert {r.source for r in rows} == {"simple-icons", "wordmark", "mark"}
    assert sum(r.label is Label.COUNTERFEIT for r in rows) == 4 * OPTS.counterfeits
    for row in rows:
        assert read_image(tmp_path / "a" / row.image).shape[0] in OPTS.sizes
    splits: dict[str, set[str]] = {}
    for r in rows:
        splits.setdefault(r.brand, set()).add(r.split)
    assert all(len(s) == 1 for s in splits.values())  # brand-disjoint
    build_brandmarks(tmp_path / "b", opts=OPTS, progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_svg_that_fails_to_render_is_skipped_with_a_reason(tmp_path: Path) -> None:
    good = next(i for i in load_icons() if i.slug == "nike")
    broken = BrandIcon(slug="broken", title="Brokenmark", hex="FF0000", svg="<svg><path d='M0 0 L")
    empty = BrandIcon(slug="empty", title="Emptymark", hex="00FF00", svg='<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"></svg>')
    opts = BrandmarkOptions(brands=0, sizes=(64,), fonts=1, counterfeits=1, seed=0)
    report, stats = build_brandmarks(tmp_path / "x", opts=opts, progress=False, icons=[good, broken, empty])
    reasons = {s.path: s.reason for s in report.skipped}
    assert "does not render" in reasons["simple-icons:broken"] or "no visible ink" in reasons["simple-icons:broken"]
    assert "no visible ink" in reasons["simple-icons:empty"]
    brands = {r.brand for r in read_manifest(tmp_path / "x")}
    assert brands == {"Nike", "Brokenmark", "Emptymark"}  # the wordmarks of the broken ones still render
    assert json.loads((tmp_path / "x" / "stats.json").read_text())["skipped"] == len(report.skipped)
