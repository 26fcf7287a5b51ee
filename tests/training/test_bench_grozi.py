"""`bench embedder --grozi`: the real-photo yardstick measured end to end on a few GroZi products."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from markguard.datasets.grozi import GroziOptions, build_grozi


def test_bench_embedder_measures_the_grozi_yardstick(tiny_run: Path, grozi: Path, tmp_path: Path, capsys) -> None:
    from markguard.training.benchmarks.embedder import GROZI_SET, MIXED_NEGATIVES, main

    src = tmp_path / "src"
    for pid in (3, 12, 94):  # Cheerios, Clorox bleach, Honey Nut Cheerios
        shutil.copytree(grozi / str(pid), src / str(pid))
    build_grozi(tmp_path / "grozi", source=src, opts=GroziOptions(), progress=False)
    out = tmp_path / "bench.json"
    assert main(["--model", str(tiny_run / "artifact"), "--grocery", "", "--synth", "", "--grozi",
                 str(tmp_path / "grozi"), "--max-queries", "6", "--quiet", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert GROZI_SET in printed and "claim_auc_same_brand" in printed and "95% CI, brands" in printed
    result = json.loads(out.read_text())[GROZI_SET]
    assert result["brands"] == 2 and "proposals_find_mark" not in result  # frames carry no boxes
    for label in ("imagenet", "trained"):
        r = result[label]
        assert r["queries"] == 6 and r["references"] == 9 and r["claim_negatives"] == MIXED_NEGATIVES
        lo, hi = r["ci95_by_brand"]["claim_auc"]
        assert lo <= r["claim_auc"] <= hi
        assert 0.0 <= r["claim_auc_same_brand"] <= 1.0 and 0.0 <= r["claim_auc_other_brand"] <= 1.0
