"""Where the OCR gate's probe spends its time on the `bench scan` feed, and what it finds.

Scores the bench feed in this process with the gated path (one thread, ONNX runtime) and records, for
every probe: the detector's and the recogniser's CPU seconds, the boxes it read (size, text, confidence)
and whether it hit a wordmark. Writes `OUT.jsonl` (one probe a line) for offline what-ifs.

    OMP_NUM_THREADS=1 python training/experiments/issue16/probe_split.py --photos 300 --out runs/probes
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tqdm import tqdm


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--photos", type=int, default=300)
    p.add_argument("--out", type=Path, default=Path("runs/probes"))
    p.add_argument("--approximate", action="store_true", help="the gate probes with the int8 CRAFT")
    p.add_argument("--alt-craft", type=Path, help="an ONNX CRAFT graph to probe with too (at every --scales)")
    p.add_argument("--scales", default="", help="probe every probed photo again at these scales (comma-separated)")
    args = p.parse_args()

    from markguard.serving.benchmarks.scan import build_feed, enroll_catalog
    from markguard.serving.engine import ScoreRequest, ScoringEngine
    from markguard.serving.state.home import Home
    from markguard.vision import ocr as ocr_module
    from markguard.vision.decode import decode_image
    from markguard.vision.pipeline import OcrGate
    from markguard.vision.text import match_wordmarks

    records: list[dict] = []
    original = ocr_module.OcrEngine.probe

    def timed_probe(self, image, *, scale=0.6, max_boxes=12, approximate=False):  # noqa: ANN001, ANN202
        calls = {"detect": 0.0, "recognize": 0.0}
        det, rec = self._detect, self._recognize

        def d(*a, **k):  # noqa: ANN002, ANN003, ANN202
            t = time.process_time()
            try:
                return det(*a, **k)
            finally:
                calls["detect"] += time.process_time() - t

        def r(*a, **k):  # noqa: ANN002, ANN003, ANN202
            t = time.process_time()
            try:
                return r.out.append(rec(*a, **k)) or r.out[-1]
            finally:
                calls["recognize"] += time.process_time() - t
        r.out = []
        self._detect, self._recognize = d, r
        try:
            lines = original(self, image, scale=scale, max_boxes=max_boxes, approximate=approximate)
        finally:
            del self._detect, self._recognize
        found = r.out[0] if r.out else []
        records.append({"shape": list(image.shape[:2]), **calls,
                        "boxes": [[float(b[:, 0].max() - b[:, 0].min()), float(b[:, 1].max() - b[:, 1].min()), t, c]
                                  for b, t, c in found],
                        "lines": [ln.text for ln in lines]})
        return lines

    ocr_module.OcrEngine.probe = timed_probe
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        feed = tmp_path / "feed.jsonl"
        products, labels = build_feed(args.data, feed, photos=args.photos, seed=0)
        home = Home(tmp_path / "home")
        enroll_catalog(home, args.data, products)
        engine = ScoringEngine(home, ocr=True, ocr_gate=OcrGate(approximate_probe=args.approximate), runtime="onnx")
        rows = [json.loads(line) for line in feed.read_text().splitlines()]
        out = []
        for row in tqdm(rows):
            before = len(records)
            request = ScoreRequest(Path(row["image"]).read_bytes(), brand=row["brand"], product=row["product"],
                                   listing=row["listing_id"])
            reads = engine.scorer.ocr_runs[0]
            result = engine.score(request, record=False)
            for rec in records[before:]:
                rec |= {"listing_id": row["listing_id"], "image": row["image"], "label": labels[row["listing_id"]],
                        "decision": result.decision, "risk": result.risk, "read": engine.scorer.ocr_runs[0] > reads,
                        "brand": row["brand"]}
                out.append(rec)
        ocr_module.OcrEngine.probe = original
        scales = [float(s) for s in args.scales.split(",") if s]
        wordmarks = {b: list(w) for b, w in engine.scorer.source.wordmarks().items()}
        reader = engine.scorer.ocr.reader
        detectors = {"": reader.detector}
        if args.alt_craft:
            import onnxruntime as ort

            from markguard.vision.ocr import _OnnxCraft
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(args.alt_craft), options, providers=["CPUExecutionProvider"])
            import torch

            detectors["alt"] = _OnnxCraft(lambda x: tuple(torch.from_numpy(v) for v in session.run(None, {"x": x.numpy()})))
        for rec in tqdm(out if scales else [], desc="scales"):
            image = decode_image(Path(rec["image"]).read_bytes())
            rec["at"] = {}
            for name, detector in detectors.items():
                reader.detector = detector
                for scale in scales:
                    started = time.process_time()
                    lines = engine.scorer.ocr.probe(image, scale=scale, approximate=True)
                    hits = match_wordmarks([ln.text for ln in lines], brand=rec["brand"], wordmarks=wordmarks)
                    rec["at"][name + str(scale)] = {"cpu": time.process_time() - started, "hit": bool(hits),
                                                    "lines": [ln.text for ln in lines]}
            reader.detector = detectors[""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
    det = sum(r["detect"] for r in out)
    rec = sum(r["recognize"] for r in out)
    print(f"{len(out)} probes of {len(rows)} photos: detect {det / len(out) * 1000:.0f} ms, recognise "
          f"{rec / len(out) * 1000:.0f} ms a probe; {sum(bool(r['lines']) for r in out)} read text")


if __name__ == "__main__":
    main()
