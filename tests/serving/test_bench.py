"""Benchmarks run end to end on tiny sizes (the figures themselves come from full runs, see README)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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


def test_claim_auc_by_transform_scores_each_transform_against_every_genuine_claim() -> None:
    from markguard.serving.benchmarks.scoring import claim_auc_by_transform

    scores = np.array([1.0, 2.0, 3.0, 4.0, 0.0, 0.5, 5.0, 2.5])
    genuine = np.array([True, True, True, True, False, False, False, False])
    transforms = np.array(["", "", "", "", "mirror", "mirror", "look_alike", "look_alike"])
    brands = np.array(["a", "b", "a", "b", "a", "b", "a", "b"])
    table = claim_auc_by_transform(scores, genuine, transforms, brands, boot=200)
    assert list(table) == ["all", "look_alike", "mirror"]
    assert table["mirror"] == {"auc": 1.0, "lo": 1.0, "hi": 1.0, "count": 2}  # below every genuine claim in every draw
    assert table["look_alike"]["auc"] == 0.25  # 5.0 above all four genuine claims, 2.5 above 1.0 and 2.0
    assert table["all"]["auc"] == 0.625 and table["all"]["count"] == 4  # (4 + 4 + 0 + 2) / 16
    # resampling whole brands: brand a alone pits 1.0, 3.0 against 0.0 and 5.0 (0.5), brand b alone 2.0, 4.0
    # against 0.5 and 2.5 (0.75); every draw lies between
    assert (table["all"]["lo"], table["all"]["hi"]) == (0.5, 0.75)


@pytest.mark.slow
def test_bench_scoring_synth_counterfeits_per_transform_and_cached(tmp_path: Path, grocery: Path) -> None:
    from markguard.datasets.synth import SynthOptions, build_synth

    build = tmp_path / "synth"
    build_synth(build, data_root=grocery.parent, progress=False,
                opts=SynthOptions(brands=6, per_brand=2, size=128, val_fraction=0.0, test_fraction=0.5, seed=5))
    out = tmp_path / "synth.json"
    argv = ["bench", "scoring", "--synth", str(build), "--synth-brands", "2", "--boot", "20", "--out", str(out)]
    assert main(argv) == 0
    first = json.loads(out.read_text())
    claims = [json.loads(line) for line in out.with_suffix(".claims.jsonl").read_text().splitlines()]
    assert len(first["brands"]) == 2 and first["claims"] == first["scored_now"] == len(claims) > 0
    assert {c["brand"] for c in claims} == set(first["brands"])
    transforms = {c["transform"] for c in claims if not c["genuine"]}
    for table in first["results"].values():
        assert set(table) == {"all", *transforms}
        assert sum(table[t]["count"] for t in transforms) == table["all"]["count"] == first["counterfeit_claims"]
    assert all(0.0 <= c["risk"] <= 1.0 and set(c["signals"]["genuine_similarity"]) == {"value", "contribution"}
               for c in claims)
    assert main(argv) == 0  # every claim cached: nothing scored again, the same figures
    second = json.loads(out.read_text())
    assert second["scored_now"] == 0 and second["results"] == first["results"]
    # a row of the older shape (signal values alone) is scored again, not read as the new one
    old = {k: v for k, v in claims[0].items() if k != "rows"} | {
        "signals": {name: s["value"] for name, s in claims[0]["signals"].items()}}
    out.with_suffix(".claims.jsonl").write_text("".join(json.dumps(c) + "\n" for c in [old, *claims[1:]]))
    assert main(argv) == 0
    third = json.loads(out.read_text())
    assert third["scored_now"] == 1 and third["results"] == first["results"]


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


def test_bench_rings_scale_finds_the_exhaustive_searchs_pairs(tmp_path: Path, capsys) -> None:
    out = tmp_path / "scale.json"
    assert main(["bench", "rings", "--scale", "3000", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["listings"] == 3000 and result["photo_pairs"] > 1000 and result["embedding_pairs"] > 10
    assert (result["photo_pairs_missed"], result["photo_pairs_extra"], result["embedding_pairs_differ"]) == (0, 0, 0)
    assert result["update_listings"] == 50 and result["rebuild_edges"] > 1000  # then through a home's catalog
    assert capsys.readouterr().out.splitlines()[-1].startswith("speedup=")
    with pytest.raises(SystemExit, match="more than 50"):
        main(["bench", "rings", "--scale", "-5", "--out", str(out)])


def test_the_scan_bench_auc_delta_interval_is_paired_and_resamples_brands() -> None:
    from markguard.serving.benchmarks.scan import _auc_delta_interval

    rng = np.random.default_rng(0)
    ids = [f"l{i}" for i in range(200)]
    labels = {i: k % 2 for k, i in enumerate(ids)}
    brands = {i: f"b{k % 10}" for k, i in enumerate(ids)}
    noisy = {i: labels[i] + rng.normal(0, 1.0) for i in ids}
    same = _auc_delta_interval(noisy, noisy, labels, brands, boot=200)
    assert same == {"value": 0.0, "lo": 0.0, "hi": 0.0}  # paired: the same risks never differ
    clearer = {i: labels[i] + rng.normal(0, 0.3) for i in ids}
    better = _auc_delta_interval(clearer, noisy, labels, brands, boot=200)
    assert 0 < better["lo"] < better["value"] < better["hi"]


@pytest.mark.slow
@pytest.mark.usefixtures("needs_ray")
def test_bench_scan_small_runs_every_path_and_prints_its_ratios(tmp_path: Path, capsys) -> None:
    out = tmp_path / "scan.json"
    assert main(["bench", "scan", "--photos", "8", "--workers", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["paths"]) == {"today", "local", "ray"}
    assert all(row["scored"] == 8 for row in report["paths"].values())
    assert report["paths"]["ray"]["cluster_start_seconds"] > 0  # started before the clock, reported apart
    assert report["prepare_seconds"] > 0  # the runtime caches too
    delta = report["auc_delta_interval"]
    assert delta["lo"] <= delta["value"] <= delta["hi"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("speedup=") and " ray_vs_local=" in last and " auc_delta=" in last


@pytest.mark.slow
def test_bench_scoring_grozi_small_scores_real_frames_with_brand_resampled_intervals(tmp_path: Path, grozi: Path,
                                                                                       capsys) -> None:
    out = tmp_path / "grozi.json"
    assert main(["bench", "scoring", "--grozi", str(tmp_path / "build"), "--limit", "6", "--grozi-queries", "2",
                 "--boot", "50", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result["products"], result["queries"], result["references"]) == (6, 12, 18)
    for row in result["results"].values():
        assert row["lo"] <= row["value"] <= row["hi"]
    assert 0.0 <= result["results"]["c_recall_at_1"]["value"] <= 1.0
    assert "c − a" in capsys.readouterr().out
    claims = [json.loads(line) for line in out.with_suffix(".claims.jsonl").read_text().splitlines()]
    assert [c["genuine"] for c in claims] == [True, False] * 12  # each query claims its own product, then another
    assert all(c["claimed"] != c["product"] for c in claims if not c["genuine"])
    assert all(0.0 <= c["risk"] <= 1.0 and "genuine_similarity" in c["signals"] for c in claims)
