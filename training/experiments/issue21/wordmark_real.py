"""Issue 21, item 5, the question `wordmark_crops.py` left open: on real packaging text, does a wider
near-miss matcher turn ordinary words into misspellings of the claimed brand?

`wordmark_crops.py` found that allowing a near miss up to 40% of a wordmark's letters in edits finds 27 of
49 synthetic misspellings instead of 9. Before such a matcher could ship, it has to leave genuine real
photos alone. Here GroZi-120's in-store query frames (real US packaging photographed on the shelf; the
brands named in `markguard datasets grozi`, the unnamed 'GroZi NNN' ones left out) are read in full by
the real EasyOCR, as the full path reads a photo, and each read is matched as the fusion sees it:
  own     a claim of the frame's own brand (genuine): exact, near miss or nothing;
  other   a claim of another named brand (false; the next brand in a hash order): near miss or nothing
          (an exact read of a brand the frame does not show is a misread name);
by the shipped matcher (`vision.text.match_wordmarks`, 0-2 edits by length) and by the tolerant one of
`wordmark_crops.py` (up to 40% of the letters).

    python training/experiments/issue21/wordmark_real.py runs/grozi-build --per-product 2

Writes results/wordmark_real.json (each frame's lines) and prints the table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm
from wordmark_crops import _outcome, _tolerant  # a script: its own folder is on sys.path

from markguard.vision.ocr import shared_ocr_engine

HERE = Path(__file__).resolve().parent


def _other_brand(brand: str, brands: list[str]) -> str:
    order = sorted(brands, key=lambda b: hashlib.sha256(f"{brand}|{b}".encode()).hexdigest())
    return next(b for b in order if b != brand)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("build", type=Path)
    p.add_argument("--per-product", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results" / "wordmark_real.json")
    args = p.parse_args()
    rows = [json.loads(line) for line in (args.build / "manifest.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "query" and not r["brand"].startswith("GroZi ")]
    brands = sorted({r["brand"] for r in rows})
    taken: dict[str, int] = defaultdict(int)
    frames = []
    for r in sorted(rows, key=lambda r: hashlib.sha256(r["image"].encode()).hexdigest()):
        if taken[r["product"]] < args.per_product:
            taken[r["product"]] += 1
            frames.append(r)
    ocr = shared_ocr_engine()
    cache = json.loads(args.out.read_text()) if args.out.exists() else {}
    started = time.perf_counter()
    for r in tqdm(frames, desc="read"):
        if r["image"] not in cache:
            image = np.asarray(Image.open(args.build / r["image"]).convert("RGB"))
            cache[r["image"]] = {"brand": r["brand"], "product": r["product"], "size": list(image.shape[:2]),
                                 "texts": [line.text for line in ocr.read(image)]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(cache, indent=1) + "\n")
    items = [cache[r["image"]] for r in frames]
    print(f"{len(items)} frames of {len(taken)} products, {len(brands)} named brands; "
          f"{time.perf_counter() - started:.0f} s of reading; frames with any text read: "
          f"{sum(bool(i['texts']) for i in items)}")
    summary = {}
    for name, match in (("shipped", _outcome), ("tolerant 40%", _tolerant)):
        own = Counter(match(i["texts"], i["brand"]) for i in items)
        other = Counter(match(i["texts"], _other_brand(i["brand"], brands)) for i in items)
        summary[name] = {"own": dict(own), "other": dict(other)}
        print(f"{name:13} own claim: exact {own['exact']:>3}  near miss {own['near_miss']:>3}  nothing {own['none']:>3}"
              f"   | other brand's claim: near miss {other['near_miss']:>3}  exact {other['exact']:>3}  nothing {other['none']:>3}")
    newly = [(i["brand"], i["texts"]) for i in items
             if _tolerant(i["texts"], i["brand"]) == "near_miss" and _outcome(i["texts"], i["brand"]) != "near_miss"]
    print("own-brand near misses only the tolerant matcher finds (brand: lines read):")
    for brand, texts in newly[:25]:
        print(f"  {brand}: {texts[:6]}")
    (args.out.with_suffix(".summary.json")).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
