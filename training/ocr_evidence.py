"""OCR evidence for calibration claims: what serving's `ocr_evidence` computes, without its database,
so the fusion can fit the OCR signals (`vision.scoring.ocr_signals`) on held-out photos.

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
from markguard.vision.ocr import OcrEngine, OcrLine
from markguard.vision.scoring import ocr_signals
from markguard.vision.text import match_wordmarks, serial_key

__all__ = ["add_ocr", "SERIAL_CHECKSUM"]

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


def add_ocr(claims: ClaimSet, eval_set: EvalSet, engine: OcrEngine, *, cache: Path,
            queries: Collection[int] | None = None, registry_items: Sequence[Item] = (),
            progress: bool = True) -> None:
    """Add the OCR signals serving computes to the claims of `eval_set`, in place: all of them, or
    those of the query photos `queries` (the others keep OCR signals missing: no evidence).

    `registry_items`: more manifest rows whose genuine serials join the brands' registries (the eval
    set's own rows always do)."""
    registries = _registries([*registry_items, *eval_set.references, *eval_set.queries])
    brands = sorted({i.brand for i in [*eval_set.references, *eval_set.queries]})
    wordmarks = {b: [b] for b in brands}
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
        texts = [line.text for line in lines]
        for c in by_query[q]:
            brand = claims.brand[c]
            evidence: dict[str, Any] = {
                "wordmarks": [{"brand": h.brand, "match": h.match.value}
                              for h in match_wordmarks(texts, brand=brand, wordmarks=wordmarks)],
                "serials": [],
            }
            if brand in registries:
                pattern = serial_format(brand).pattern
                if pattern not in entry:
                    if image is None:
                        image = load_images([item])[0]
                    entry[pattern] = [{"normalized": s.normalized, "format_ok": s.format_ok,
                                       "checksum_ok": s.checksum_ok}
                                      for s in engine.read_serials(image, lines, pattern=pattern,
                                                                   checksum=SERIAL_CHECKSUM)]
                registry = registries[brand]
                evidence["serials"] = [{**s, "registered": serial_key(s["normalized"]) in registry,
                                        "seen_by_sellers": 0} for s in entry[pattern]]
            claims.values[c].update(ocr_signals(evidence, brand=brand))
        if n % 50 == 49:
            atomic_write_bytes(cache, json.dumps(store).encode())
    atomic_write_bytes(cache, json.dumps(store).encode())
