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
