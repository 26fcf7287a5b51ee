"""The OCR gate's probe with the exact and the int8 CRAFT on photos other than the bench's: the lines each
reads, and the CPU seconds each takes. `python training/experiments/issue16/probe_int8.py [N]` (N photos a
set, default 100) on GroZi-120 frames, clothing photos and grocery val photos from ../shared/data."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from markguard.vision.decode import decode_image
from markguard.vision.ocr import EasyOcrEngine

SETS = {"grozi": ("grozi120-insitu", "*/*"), "clothing": ("clothing", "**/*.jpg"), "grocery val": ("grocery-packages/val", "**/*.jpg")}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    torch.set_num_threads(1)
    engine = EasyOcrEngine(threads=1)
    assert engine.use_runtime("onnx") == "onnx" and engine._approximate_craft() is not None
    report = {}
    for name, (folder, pattern) in SETS.items():
        files = sorted(p for p in (Path("../shared/data") / folder).glob(pattern) if p.suffix.lower() in (".jpg", ".png"))
        files = files[:: max(1, len(files) // n)][:n]
        same = with_text = 0
        cpu = {"exact": 0.0, "int8": 0.0}
        differ = []
        for path in tqdm(files, desc=name):
            image = decode_image(path.read_bytes())
            lines = {}
            for kind, approximate in (("exact", False), ("int8", True)):
                started = time.process_time()
                lines[kind] = [ln.text for ln in engine.probe(image, approximate=approximate)]
                cpu[kind] += time.process_time() - started
            same += lines["exact"] == lines["int8"]
            with_text += bool(lines["exact"])
            if lines["exact"] != lines["int8"]:
                differ.append([str(path), lines["exact"], lines["int8"]])
        report[name] = {"photos": len(files), "same_lines": same, "exact_read_text": with_text,
                        "cpu_ms": {k: round(v / len(files) * 1000, 1) for k, v in cpu.items()}, "differ": differ}
        print(name, json.dumps({k: v for k, v in report[name].items() if k != "differ"}))
    out = Path("training/experiments/issue16/probe_int8.json")
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"(wrote {out})")


if __name__ == "__main__":
    main()
