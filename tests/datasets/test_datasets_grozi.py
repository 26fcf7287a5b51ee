"""The GroZi-120 yardstick: a few frames per product enrolled, the rest queried; deterministic by seed;
brands read from the frames; refused as training or calibration data."""

from __future__ import annotations

import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from markguard.datasets.grozi import (
    PRODUCTS,
    QUERY_SPLIT,
    REF_SPLIT,
    GroziOptions,
    brand_of,
    build_grozi,
    is_grozi_row,
)
from markguard.datasets.manifest import Label, ManifestRow, read_manifest, write_manifest
from markguard.serving.cli import main
from markguard.training.data import (
    EvaluationOnlyData,
    ensure_grocery,
    ensure_grozi,
    ensure_synth,
    make_eval_set,
    read_items,
    refuse_evaluation_only,
)

SMALL = (3, 12, 94)  # Cheerios, Clorox bleach, Honey Nut Cheerios: one brand with two products


@pytest.fixture(scope="module")
def grozi_source(grozi: Path) -> Path:
    return grozi


@pytest.fixture(scope="module")
def full_build(grozi_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("grozi") / "g"
    report, _ = build_grozi(out, source=grozi_source, opts=GroziOptions(), progress=False)
    assert not report.skipped
    return out


@pytest.fixture()
def small_source(grozi_source: Path, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for pid in SMALL:
        shutil.copytree(grozi_source / str(pid), src / str(pid))
    return src


def test_full_build_enrolls_three_frames_per_product_and_queries_the_rest(full_build: Path, grozi_source: Path) -> None:
    rows = read_manifest(full_build)
    assert len(rows) == 1914 and len({r.product for r in rows}) == 120
    frames = {pid: len(list((grozi_source / str(pid)).glob("*.png"))) for pid in range(120)}
    by_product: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        by_product[r.product][r.split] += 1
        assert r.label is Label.GENUINE and r.split in (REF_SPLIT, QUERY_SPLIT)
        assert (r.source == "iconic") == (r.split == REF_SPLIT)
        assert r.split == REF_SPLIT or is_grozi_row(r)
        assert (full_build / r.image).is_file()
    for pid in range(120):
        counts = by_product[next(p for p in by_product if p.startswith(f"{pid:03d} "))]
        assert counts[REF_SPLIT] == 3 and counts[QUERY_SPLIT] == frames[pid] - 3
    # references and queries are disjoint: each source frame appears once, in one split
    sources = Counter(r.image.split("/", 2)[2] for r in rows)
    assert max(sources.values()) == 1
    # the brands: read from the frames, twelve of them hold several products
    assert {r.brand for r in rows} == {brand_of(pid) for pid in range(120)}
    products_per_brand = Counter(brand_of(pid) for pid in range(120))
    assert len(products_per_brand) == 104
    assert {b for b, n in products_per_brand.items() if n > 1} == {
        "Campbell's", "Nabisco", "Vicks", "Cheerios", "Clorox", "Pepperidge Farm", "Pepto-Bismol", "Pringles",
        "Ritter Sport", "Rockstar", "Trojan", "Tylenol"}
    assert sum(1 for p in PRODUCTS.values() if p[0] is None) == 7


def test_eval_set_enrolls_every_reference_and_queries_only_the_query_split(full_build: Path) -> None:
    es = make_eval_set(read_items(full_build), split=QUERY_SPLIT)
    assert len(es.references) == 360 and len(es.queries) == 1554
    assert {r.row.split for r in es.references} == {REF_SPLIT}
    assert {q.row.split for q in es.queries} == {QUERY_SPLIT}
    assert not {r.path for r in es.references} & {q.path for q in es.queries}


def test_the_same_seed_builds_the_same_bytes_and_another_seed_other_references(small_source: Path, tmp_path: Path) -> None:
    def build(name: str, seed: int, refs: int = 3) -> tuple[bytes, dict[str, set[str]]]:
        build_grozi(tmp_path / name, source=small_source, opts=GroziOptions(seed=seed, refs_per_product=refs),
                    progress=False)
        chosen: dict[str, set[str]] = defaultdict(set)
        for r in read_manifest(tmp_path / name):
            if r.split == REF_SPLIT:
                chosen[r.product].add(Path(r.image).name)
        return (tmp_path / name / "manifest.jsonl").read_bytes(), chosen

    a, refs_a = build("a", 0)
    b, refs_b = build("b", 0)
    c, refs_c = build("c", 1)
    assert a == b and refs_a == refs_b
    assert a != c and refs_a != refs_c
    assert all(len(v) == 3 for v in refs_a.values()) and len(refs_a) == 3
    _, five = build("d", 0, refs=5)
    assert all(len(v) == 5 for v in five.values())


def test_bad_options_and_missing_source_are_refused(small_source: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="refs_per_product"):
        GroziOptions(refs_per_product=0)
    with pytest.raises(SystemExit, match="refs-per-product"):
        main(["datasets", "grozi", "--out", str(tmp_path / "x"), "--source", str(small_source),
              "--refs-per-product", "16"])
    rc = main(["datasets", "grozi", "--out", str(tmp_path / "g"), "--source", str(tmp_path / "nowhere"), "--quiet"])
    assert rc == 1
    captured = capsys.readouterr()
    assert "missing" in captured.err and '"images": 0' in captured.out


def test_training_and_calibration_refuse_the_yardstick(small_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "g"
    build_grozi(out, source=small_source, opts=GroziOptions(), progress=False)
    with pytest.raises(EvaluationOnlyData, match="evaluation only"):
        ensure_grocery(out)
    with pytest.raises(EvaluationOnlyData):
        ensure_synth(out, brands=2, per_brand=2, size=64, seed=0)
    # what `markguard train` reads (training items, grocery_cal and synth_val for calibration)
    from markguard.training.config import load_config
    from markguard.training.train import _load_data

    for key in ("data.grocery", "data.synth"):
        other = "data.synth" if key == "data.grocery" else "data.grocery"
        with pytest.raises(EvaluationOnlyData):
            _load_data(load_config("tiny", [f"{key}={out}", f"{other}="]))
    # the rows alone give it away, without its build.json
    (out / "build.json").unlink()
    with pytest.raises(EvaluationOnlyData):
        refuse_evaluation_only(out / "manifest.jsonl")
    assert ensure_grozi(out) == out / "manifest.jsonl"
    # an ordinary manifest passes, and is refused as a yardstick
    plain = tmp_path / "plain"
    plain.mkdir()
    write_manifest(plain / "manifest.jsonl", [ManifestRow(image="a.png", brand="B", label=Label.GENUINE, split="train",
                                                          source="photo")])
    assert refuse_evaluation_only(plain) == plain / "manifest.jsonl"
    with pytest.raises(ValueError, match="not a GroZi-120 build"):
        ensure_grozi(plain)
    with pytest.raises(ValueError, match="holds no frames"):
        ensure_grozi(tmp_path / "empty", source=str(tmp_path / "nowhere"))


def test_bench_subsamples_queries_round_robin_over_products(full_build: Path) -> None:
    from markguard.training.benchmarks.embedder import subsample_queries

    queries = make_eval_set(read_items(full_build), split=QUERY_SPLIT).queries
    picked = subsample_queries(queries, 360)
    assert len(picked) == 360 and picked == subsample_queries(queries, 360)
    assert set(Counter(q.product for q in picked).values()) == {3}
    assert [q.row.image for q in picked] == sorted(q.row.image for q in picked)  # original order kept
    assert subsample_queries(queries, 0) == queries and subsample_queries(queries, 10**6) == queries


def test_mixed_claims_take_same_brand_negatives_where_a_brand_has_them() -> None:
    from markguard.training.benchmarks.embedder import MIXED_NEGATIVES, mixed_brand_claims

    # queries 0 and 1: true, same_brand, other_brand; query 2 (a one-product brand): true, other_brand
    claim_query = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    positive = np.array([1, 0, 0, 1, 0, 0, 1, 0], dtype=bool)
    mask = np.array([1, 1, 0, 1, 1, 0, 1, 0], dtype=bool)  # true | same_brand
    scores = np.array([0.9, 0.8, 0.1, 0.7, 0.95, 0.2, 0.6, 0.65])
    m = {"claim_negatives": "same_brand", "_claims": (claim_query, positive, mask, scores), "claim_auc": 0.0}
    mixed_brand_claims(m)
    assert m["claim_negatives"] == MIXED_NEGATIVES
    assert m["_claims"][2].tolist() == [True, True, False, True, True, False, True, True]
    # positives 0.9, 0.7, 0.6 against negatives 0.8, 0.95, 0.65: 3 of 9 pairs ordered right
    assert m["claim_auc"] == pytest.approx(3 / 9)
    with pytest.raises(ValueError):
        mixed_brand_claims({"claim_negatives": "counterfeit", "_claims": (claim_query, positive, mask, scores)})
