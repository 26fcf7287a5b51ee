"""OCR evidence for calibration claims: what serving gathers (`vision.pipeline.judge_text`), with a
dataset standing in for the catalog (`DatasetEvidence`), so the fusion can fit the OCR signals on
held-out photos.

- Wordmarks: every brand of the eval set, spelt as its name (serving's default when a brand
  registers no wordmarks of its own).
- Serials: brands of a synthetic build have the format `datasets.serials.serial_format` printed on
  their labels (Luhn check digit) and the genuine serials of the manifest as their registry, as if
  the brand had imported them (`markguard serials import`); other brands register neither.
- Reuse across sellers cannot be shown by a dataset without sellers: it reads 0 here, and the fusion
  leaves a signal that never varies to its expert prior.

Reads are slow (about a second per photo on 2 cores), so every photo's lines and serial candidates
are cached in a JSON file keyed by the photo's SHA-256 and the pattern: `--resume` and re-calibration
read nothing twice.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from markguard.datasets.serials import serial_format
from markguard.training.data import EvalSet, Item, load_images
from markguard.training.evaluation import ClaimSet
from markguard.vision.atomic import atomic_write_bytes
from markguard.vision.evidence import SerialRecord
from markguard.vision.ocr import OcrEngine, OcrLine
from markguard.vision.pipeline import BrandProfile, judge_text
from markguard.vision.text import SerialCandidate, serial_key

__all__ = ["add_ocr", "DatasetEvidence", "SERIAL_CHECKSUM"]

SERIAL_CHECKSUM = "luhn"  # the check digit `datasets.serials.SerialFormat` prints
_BUDGET_MS = 60_000.0  # calibration reads whole photos whatever the machine's load


def _registries(items: Sequence[Item]) -> dict[str, set[str]]:
    """Genuine serials per brand of the synthetic photos (the brands that have a serial format)."""
    out: dict[str, set[str]] = {}
    for item in items:
        if item.row.source != "synth":
            continue
        serials = out.setdefault(item.brand, set())  # a synthetic brand has a format, serials or not
        if item.genuine and item.row.serial:
            serials.add(serial_key(item.row.serial))
    return out


class DatasetEvidence:
    """The pipeline's `EvidenceSource` for calibration photos, as far as OCR needs one: every brand's
    name as its wordmark, the synthetic brands' genuine serials as their registries, no reuse."""

    def __init__(self, brands: Sequence[str], registries: dict[str, set[str]]) -> None:
        self.profiles = {b: BrandProfile(id=i, name=b, serial_pattern=serial_format(b).pattern if b in registries else None,
                                         serial_checksum=SERIAL_CHECKSUM if b in registries else None)
                         for i, b in enumerate(brands)}
        self.registries = registries

    def wordmarks(self) -> dict[str, list[str]]:
        return {b: [b] for b in self.profiles}

    def serials(self, brand: BrandProfile | None, normalized: Sequence[str], *, seller: str | None,
                listing: str | None) -> list[SerialRecord]:
        registry = self.registries.get(brand.name) if brand is not None else None
        return [SerialRecord(registered=None if registry is None else serial_key(n) in registry) for n in normalized]


def add_ocr(claims: ClaimSet, eval_set: EvalSet, engine: OcrEngine, *, cache: Path,
            queries: Collection[int] | None = None, registry_items: Sequence[Item] = (),
            progress: bool = True) -> None:
    """Add the OCR evidence serving gathers to the claims of `eval_set`, in place: all of them, or
    those of the query photos `queries` (the others keep OCR signals missing: no evidence).

    `registry_items`: more manifest rows whose genuine serials join the brands' registries (the eval
    set's own rows always do)."""
    registries = _registries([*registry_items, *eval_set.references, *eval_set.queries])
    source = DatasetEvidence(sorted({i.brand for i in [*eval_set.references, *eval_set.queries]}), registries)
    store: dict[str, Any] = json.loads(cache.read_text()) if cache.is_file() else {}
    by_query: dict[int, list[int]] = defaultdict(list)
    for c, q in enumerate(claims.query):
        if queries is None or int(q) in queries:
            by_query[int(q)].append(c)
    bar = tqdm(sorted(by_query), desc=f"OCR: {eval_set.name}", unit="photo", disable=not progress or None, leave=False)
    for n, q in enumerate(bar):
        item = eval_set.queries[q]
        key = hashlib.sha256(item.path.read_bytes()).hexdigest()
        entry = store.setdefault(key, {})
        image = None
        if "lines" not in entry:
            image = load_images([item])[0]
            entry["lines"] = [line.to_dict() for line in engine.read(image, budget_ms=_BUDGET_MS)]
        lines = [OcrLine(text=d["text"], confidence=d["confidence"], box=tuple(d["box"])) for d in entry["lines"]]
        for c in by_query[q]:
            brand = source.profiles[claims.brand[c]]
            candidates: list[SerialCandidate] = []
            if brand.serial_pattern is not None:
                if brand.serial_pattern not in entry:
                    if image is None:
                        image = load_images([item])[0]
                    entry[brand.serial_pattern] = [
                        {"text": s.text, "normalized": s.normalized, "format_ok": s.format_ok, "checksum_ok": s.checksum_ok,
                         "substitutions": s.substitutions, "line": s.line}
                        for s in engine.read_serials(image, lines, pattern=brand.serial_pattern, checksum=SERIAL_CHECKSUM)]
                candidates = [SerialCandidate(**{"text": d["normalized"], "substitutions": 0, "line": 0, **d})
                              for d in entry[brand.serial_pattern]]
            claims.evidence[c].ocr = judge_text(lines, candidates, brand=brand, source=source)
            claims.refresh(c)
        if n % 50 == 49:
            atomic_write_bytes(cache, json.dumps(store).encode())
    atomic_write_bytes(cache, json.dumps(store).encode())
