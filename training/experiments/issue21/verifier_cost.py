"""Issue 21: what the mark verifier costs a photo, as served.

    python training/experiments/issue21/verifier_cost.py [--photos 60]

A fresh home per model (the shipped one, and the shipped one with the candidate verifier of
`training/experiments/issue21/verifier-t4/`), each with the 9 grocery brands' iconic package photos
enrolled as references. The same grocery val photos are scored by `ScoringEngine` (OCR off: it costs the
same for both) claiming their own brand, twice: the first pass computes every reference's map, the
second finds them cached. Prints process CPU ms per photo by pipeline stage, and the verifier's share.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from markguard.serving.brands import add_brand
from markguard.serving.engine import ScoreRequest, ScoringEngine
from markguard.serving.enroll import collect_inputs, enroll
from markguard.serving.registry import ensure_default_model, register_artifact
from markguard.serving.settings import get_settings
from markguard.serving.state.home import Home
from markguard.training.recalibrate import write_recalibrated
from markguard.vision.artifact import load_artifact

REPO = Path(__file__).resolve().parents[3]
CANDIDATE = REPO / "training" / "experiments" / "issue21" / "verifier-t4"


def candidate_model(dest: Path) -> Path:
    """The shipped model with the candidate verifier and the fusion fitted with it, written to `dest`."""
    write_recalibrated(load_artifact(REPO / "serving" / "default_model"), dest, verifier=CANDIDATE,
                       fusion=json.loads((CANDIDATE / "candidate_fusion.json").read_text()),
                       card=json.loads((CANDIDATE / "candidate_card.json").read_text()))
    return dest


def stage_ms(engine: ScoringEngine, requests: list[ScoreRequest]) -> dict[str, float]:
    engine.scorer.stage_cpu.clear()
    started = time.process_time()
    for request in requests:
        engine.score(request, record=False)
    out = {k: round(v * 1000 / len(requests), 2) for k, v in sorted(engine.scorer.stage_cpu.items())}
    out["total"] = round((time.process_time() - started) * 1000 / len(requests), 2)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=60)
    p.add_argument("--out", type=Path, default=Path("runs/issue21/verifier_cost.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    grocery = get_settings().data / "grocery-packages"
    iconic = sorted((grocery / "iconic").rglob("*_Iconic.jpg"))
    by_brand: dict[str, list[Path]] = defaultdict(list)
    for path in iconic:
        by_brand[path.parent.name.split("-")[0]].append(path)
    val = sorted(p for p in (grocery / "val").rglob("*.jpg") if p.parent.name.split("-")[0] in by_brand)
    val = val[:: max(1, len(val) // args.photos)][: args.photos]
    requests = [ScoreRequest(p.read_bytes(), brand=p.parent.name.split("-")[0]) for p in val]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("shipped", "with_verifier"):
            home = Home(Path(tmp) / name)
            if name == "with_verifier":
                register_artifact(home, candidate_model(Path(tmp) / "model"), promote_it=True)
            artifact = ensure_default_model(home)
            model = artifact.load_embedder()
            for brand, paths in by_brand.items():
                with home.sessions.begin() as session:
                    add_brand(session, brand)
                enroll(home, artifact, model, brand=brand, inputs=collect_inputs(paths))
            engine = ScoringEngine(home, ocr=False)
            results[name] = {"first_pass": stage_ms(engine, requests), "cached": stage_ms(engine, requests)}
            print(name, json.dumps(results[name]), flush=True)
            home.close()
    for run in ("first_pass", "cached"):
        verify, total = results["with_verifier"][run].get("verify", 0.0), results["with_verifier"][run]["total"]
        print(f"{run}: verify {verify:.1f} ms of {total:.1f} ms a photo ({verify / total:.1%}); "
              f"total against the shipped model {total / results['shipped'][run]['total']:.3f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"photos": len(requests), **results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
