"""One scan engine's wall time on the `bench scan` feed: when each chunk reaches the writer, how long the
scorers were busy, and the claim AUC. Variants for the issue-16 experiments (the old head-of-line local
scheduler, the gate's region cap, the probe's scale and boxes). Run from the worktree root:

    .venv/bin/python training/experiments/issue16/wall.py --photos 120 --engine local
"""

import argparse
import functools
import json
import shutil
import sys
import time
from pathlib import Path

from markguard.serving.benchmarks.scan import _claim_auc, build_feed, enroll_catalog
from markguard.serving.scan import ScanSettings, run_scan
from markguard.serving.state.home import Home


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=60)
    ap.add_argument("--engine", default="local")
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--gate", type=int, default=1)
    ap.add_argument("--runtime", default="onnx")
    ap.add_argument("--tag", default="")
    ap.add_argument("--old", action="store_true", help="runs/engines_old.py's local engine (git show b0bd7c9~1:...)")
    ap.add_argument("--gate-regions", type=int, default=None, help="in-process runs only (--workers -1)")
    ap.add_argument("--probe-scale", type=float, default=None, help="in-process runs only")
    ap.add_argument("--probe-boxes", type=int, default=None, help="in-process runs only")
    a = ap.parse_args()
    root, data = Path("runs/wall"), Path("../shared/data")
    root.mkdir(parents=True, exist_ok=True)
    feed = root / f"feed{a.photos}.jsonl"
    products, labels = build_feed(data, feed, photos=a.photos, seed=0)
    if not (root / "home" / ".ready").exists():
        shutil.rmtree(root / "home", ignore_errors=True)
        base = Home(root / "home")
        artifact = enroll_catalog(base, data, products)
        base.close()
        (root / "home" / ".ready").write_text(artifact.tag)
    run = root / f"run-{a.engine}{a.tag}"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(root / "home", run / "home")
    settings = ScanSettings(home=str(run / "home"), feed=feed, chunk=a.chunk, workers=a.workers,
                            ocr_gate=bool(a.gate), runtime=a.runtime)
    import markguard.vision.ocr as ocr_module
    import markguard.vision.pipeline as pipeline

    if a.gate_regions is not None:
        pipeline.OcrGate = functools.partial(pipeline.OcrGate, regions=a.gate_regions)
    if a.probe_scale is not None:
        pipeline.OcrGate = functools.partial(pipeline.OcrGate, probe_scale=a.probe_scale)
    if a.probe_boxes is not None:
        ocr_module.OcrEngine.probe.__kwdefaults__["max_boxes"] = a.probe_boxes
    if a.old:
        sys.path.insert(0, "runs")
        import engines_old

        import markguard.serving.scan.run as scan_run

        scan_run.ENGINES["local"] = engines_old.local_outcomes
    t0 = time.perf_counter()
    marks: list[tuple[float, int]] = []
    summary = run_scan(settings, run / "out", engine=a.engine, progress=False,
                       on_chunk=lambda st: marks.append((round(time.perf_counter() - t0, 1), st["rows_done"])))
    sec = time.perf_counter() - t0
    res = {}
    for line in (run / "out/results.jsonl").read_text().splitlines():
        row = json.loads(line)
        res[row["listing_id"]] = row
    json.dump({k: [v.get("risk"), v.get("decision"), (v.get("ocr") or {}).get("wordmarks")] for k, v in res.items()},
              open(run / "risks.json", "w"))
    cpu = summary["cpu_seconds"]
    n = summary["by_status"].get("scored", 0)
    print(f"{a.engine}{a.tag}: {n} photos {sec:.1f}s {n / sec:.3f} photos/s  cpu worker/photo "
          f"{cpu.get('worker', 0) / max(1, n):.3f} auc {_claim_auc(res, labels)}")
    print("arrivals", marks)
    scorers = 1 if a.workers < 0 else settings.scorers
    print(f"busy share {cpu.get('busy', 0) / (scorers * sec):.3f} (busy {cpu.get('busy', 0):.1f}s over {scorers} "
          f"scorers x {sec:.1f}s); cpu {cpu}")


if __name__ == "__main__":
    main()
