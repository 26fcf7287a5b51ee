"""Benchmarks run end to end on tiny sizes (the figures themselves come from full runs, see README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from markguard.serving.cli import main


def test_bench_index_small(tmp_path: Path, capsys) -> None:
    out = tmp_path / "index.json"
    assert main(["bench", "index", "--sizes", "500,3000", "--queries", "20", "--enroll-images", "2",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["references"] for row in result["sizes"]] == [500, 3000]
    assert all(row["recall_at_10"] == 1.0 for row in result["sizes"])  # flat: exact
    assert result["enroll"]["images"] == 2
    assert "enrollment:" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_scoring_small(tmp_path: Path, grocery: Path) -> None:
    out = tmp_path / "scoring.json"
    assert main(["bench", "scoring", "--data", str(grocery.parent), "--limit", "6", "--train-per-product", "1",
                 "--small-marks", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["results"]) == {"a_imagenet_global", "b_sift_ransac", "c_markguard"}
    assert result["small_marks"]["photos"] == 3


def test_bench_rings_limit_judges_the_first_listings_and_reuses_their_home(tmp_path: Path, grocery: Path,
                                                                            capsys) -> None:
    from markguard.datasets.marketplace import MarketplaceOptions, build_marketplace

    feed, home = tmp_path / "feed", tmp_path / "home"
    build_marketplace(feed, source=grocery, opts=MarketplaceOptions(
        seed=3, honest_sellers=6, resellers=2, lone_counterfeiters=2, rings=2, ring_sellers=(3, 3),
        listings_per_seller=(4, 5)))
    rows = [json.loads(line) for line in (feed / "feed.jsonl").read_text().splitlines()]
    truth = json.loads((feed / "truth.json").read_text())
    n = len(rows) // 2
    seen = {r["seller_id"] for r in rows[:n]}
    args = ["bench", "rings", "--feed", str(feed), "--home", str(home), "--without-model", "--limit", str(n)]
    assert main([*args, "--out", str(tmp_path / "a.json")]) == 0
    first = json.loads((tmp_path / "a.json").read_text())
    assert (first["listings"], first["sellers"], first["limit"]) == (n, len(seen), n)
    assert first["planted_rings"] == sum(1 for r in truth["rings"] if set(r["sellers"]) & seen)
    assert capsys.readouterr().out.splitlines()[-1].startswith("precision=")
    assert main([*args, "--out", str(tmp_path / "b.json")]) == 0  # the home holds exactly those: reused
    assert "reusing" in capsys.readouterr().err
    second = json.loads((tmp_path / "b.json").read_text())
    assert {k: second[k] for k in ("precision", "recall", "honest_in_rings")} == \
        {k: first[k] for k in ("precision", "recall", "honest_in_rings")}
    with pytest.raises(SystemExit, match="more than --limit"):
        main([*args[:-1], str(n - 1), "--out", str(tmp_path / "c.json")])
