"""The dataset manifest (ARCHITECTURE.md): JSON Lines, one image per line, read and written here only.

Training, evaluation and batch scans import `ManifestRow`, `read_manifest` and `write_manifest`, so the
schema lives in one place and every row is validated on the way in and out.
"""

from __future__ import annotations

import enum
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from markguard.vision.errors import MarkguardError

__all__ = ["Label", "Box", "ManifestRow", "ManifestError", "validate_row", "read_manifest", "write_manifest"]

MANIFEST_NAME = "manifest.jsonl"


class ManifestError(MarkguardError, ValueError):
    """A manifest line that does not follow the schema; the message names the line and the field."""


class Label(enum.StrEnum):
    GENUINE = "genuine"
    COUNTERFEIT = "counterfeit"


@dataclass(frozen=True)
class Box:
    """A pixel box `[x0, y0, x1, y1)` around a `kind` of thing in the image (`mark`, `label`)."""

    kind: str
    x0: int
    y0: int
    x1: int
    y1: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "xyxy": [self.x0, self.y0, self.x1, self.y1]}


@dataclass(frozen=True)
class ManifestRow:
    """One image of a dataset: where it is (relative to the manifest), whose it is, and how it was made."""

    image: str
    brand: str
    label: Label
    split: str
    product: str | None = None
    serial: str | None = None
    boxes: tuple[Box, ...] = field(default_factory=tuple)
    source: str | None = None
    transform: str | None = None
    strength: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The row as JSON primitives, optional fields left out when empty."""
        out: dict[str, Any] = {"image": self.image, "brand": self.brand, "label": str(self.label), "split": self.split}
        if self.product is not None:
            out["product"] = self.product
        if self.serial is not None:
            out["serial"] = self.serial
        if self.boxes:
            out["boxes"] = [b.to_json() for b in self.boxes]
        if self.source is not None:
            out["source"] = self.source
        if self.transform is not None:
            out["transform"] = self.transform
        if self.strength is not None:
            out["strength"] = round(float(self.strength), 4)
        return out


_REQUIRED = ("image", "brand", "label", "split")
_KNOWN = frozenset(_REQUIRED + ("product", "serial", "boxes", "source", "transform", "strength"))


def validate_row(data: Mapping[str, Any], *, where: str = "row") -> ManifestRow:
    """Check one decoded JSON object against the schema and return it typed; `ManifestError` otherwise."""
    if not isinstance(data, Mapping):
        raise ManifestError(f"{where}: expected a JSON object")
    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {', '.join(unknown)}")
    for name in _REQUIRED:
        if not isinstance(data.get(name), str) or not data[name].strip():
            raise ManifestError(f"{where}: `{name}` must be a non-empty string")
    image = data["image"]
    posix = PurePosixPath(image)
    if posix.is_absolute() or ".." in posix.parts or "\\" in image:
        raise ManifestError(f"{where}: `image` must be a relative path inside the dataset, got {image!r}")
    try:
        label = Label(data["label"])
    except ValueError:
        raise ManifestError(f"{where}: `label` must be genuine or counterfeit, got {data['label']!r}") from None
    for name in ("product", "serial", "source", "transform"):
        if name in data and data[name] is not None and not isinstance(data[name], str):
            raise ManifestError(f"{where}: `{name}` must be a string")
    strength = data.get("strength")
    if strength is not None:
        if isinstance(strength, bool) or not isinstance(strength, int | float) or not math.isfinite(strength):
            raise ManifestError(f"{where}: `strength` must be a finite number")
        if not 0.0 <= float(strength) <= 1.0:
            raise ManifestError(f"{where}: `strength` must lie in [0, 1]")
    if label is Label.COUNTERFEIT and data.get("transform") is not None and strength is None:
        raise ManifestError(f"{where}: a transformed counterfeit needs its `strength`")
    boxes = tuple(_box(b, where=where) for b in data.get("boxes") or ())
    return ManifestRow(
        image=image,
        brand=data["brand"],
        label=label,
        split=data["split"],
        product=data.get("product"),
        serial=data.get("serial"),
        boxes=boxes,
        source=data.get("source"),
        transform=data.get("transform"),
        strength=None if strength is None else float(strength),
    )


def _box(data: Any, *, where: str) -> Box:
    if not isinstance(data, Mapping) or not isinstance(data.get("kind"), str):
        raise ManifestError(f"{where}: each box needs a string `kind` and `xyxy`")
    xyxy = data.get("xyxy")
    if (
        not isinstance(xyxy, list)
        or len(xyxy) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in xyxy)
    ):
        raise ManifestError(f"{where}: box `xyxy` must be four integers")
    x0, y0, x1, y1 = xyxy
    if not (0 <= x0 < x1 and 0 <= y0 < y1):
        raise ManifestError(f"{where}: box {xyxy} is empty or negative")
    return Box(data["kind"], x0, y0, x1, y1)


def read_manifest(path: str | os.PathLike[str]) -> list[ManifestRow]:
    """Read and validate every line of a manifest (a file, or a folder holding `manifest.jsonl`)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    rows: list[ManifestRow] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{where}: not JSON ({exc.msg})") from None
            rows.append(validate_row(data, where=where))
    return rows


def write_manifest(path: str | os.PathLike[str], rows: Iterable[ManifestRow]) -> Path:
    """Write rows as JSON Lines (keys sorted, so the same rows give the same bytes); returns the path."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    lines = []
    for number, row in enumerate(rows, start=1):
        data = row.to_json()
        validate_row(data, where=f"row {number}")
        lines.append(json.dumps(data, sort_keys=True, ensure_ascii=False))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)
    return path
