"""The manifest schema: rows round-trip to identical bytes, and malformed lines are refused by field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from markguard.datasets.manifest import (
    Box,
    Label,
    ManifestError,
    ManifestRow,
    read_manifest,
    validate_row,
    write_manifest,
)

ROWS = [
    ManifestRow(image="images/a.jpg", brand="Arla", product="Arla-Sour-Milk", label=Label.GENUINE, split="train", source="photo"),
    ManifestRow(image="images/b.jpg", brand="Nike", label=Label.COUNTERFEIT, split="val", serial="NI-12345674",
                boxes=(Box("mark", 1, 2, 30, 40), Box("label", 50, 60, 90, 70)), source="synth",
                transform="colour_shift", strength=0.5),
]


def test_round_trip_is_exact_and_byte_stable(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "manifest.jsonl", ROWS)
    assert read_manifest(path) == ROWS
    assert read_manifest(tmp_path) == ROWS  # a folder means its manifest.jsonl
    first = path.read_bytes()
    write_manifest(path, read_manifest(path))
    assert path.read_bytes() == first
    line = json.loads(first.decode().splitlines()[0])
    assert set(line) == {"image", "brand", "product", "label", "split", "source"}  # empty optionals left out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label": "fake"}, "label"),
        ({"brand": ""}, "brand"),
        ({"image": "/etc/passwd"}, "relative"),
        ({"image": "../outside.jpg"}, "relative"),
        ({"split": 3}, "split"),
        ({"strength": 1.5}, "strength"),
        ({"strength": float("nan")}, "finite"),
        ({"boxes": [{"kind": "mark", "xyxy": [5, 5, 2, 9]}]}, "empty"),
        ({"boxes": [{"kind": "mark", "xyxy": [0, 0, 1]}]}, "four integers"),
        ({"colour": "red"}, "unknown field"),
        ({"transform": "colour_shift", "label": "counterfeit"}, "strength"),
    ],
)
def test_schema_violations_are_refused(change: dict, message: str) -> None:
    row = {"image": "images/a.jpg", "brand": "Arla", "label": "genuine", "split": "train", **change}
    with pytest.raises(ManifestError, match=message):
        validate_row(row)


def test_bad_line_names_its_place(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_text('{"image": "a.jpg", "brand": "B", "label": "genuine", "split": "train"}\nnot json\n')
    with pytest.raises(ManifestError, match="manifest.jsonl:2"):
        read_manifest(path)
