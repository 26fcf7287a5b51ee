"""Issue 21: which references are crops of a mark? The shipped detector on each set's references.

    python training/experiments/issue21/reference_kind.py [--grozi runs/grozi-build] [--model serving/default_model]

The mark verifier was trained to compare a logo crop with a photo's logo. A brand may also enrol a whole
package (grocery's catalogue shots, GroZi's frames), where it is weak. Each reference is centred on a
grey canvas twice its sides (`vision.verify.framed`) and the shipped detector run on it: a crop of a
logo is found whole, a package shows the logo printed on it. This prints, per reference set, the IoU of
the detector's best box (grown 1.25x, as references are cropped) with the reference, so the gate
`vision.verify.reference_is_mark` can be set on the calibration sets (grocery_cal, synth_val) and
checked on the others. Writes results/reference_kind.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from markguard.datasets.grozi import REF_SPLIT
from markguard.datasets.manifest import read_manifest
from markguard.training.data import ensure_grozi, load_image
from markguard.training.recalibrate import _config
from markguard.training.train import _load_data
from markguard.vision.artifact import load_artifact
from markguard.vision.decode import read_image
from markguard.vision.verify import reference_mark_iou

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("serving/default_model"))
    p.add_argument("--grozi", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(2)
    artifact = load_artifact(args.model)
    detector = artifact.load_detector()
    _, sets, _ = _load_data(_config(artifact, []))
    loaders = {name: [lambda r=r: load_image(r)[0] for r in es.references] for name, es in sets.items()}
    if args.grozi is not None:
        manifest = ensure_grozi(args.grozi)
        loaders["grozi"] = [lambda p=manifest.parent / r.image: read_image(p)
                            for r in read_manifest(manifest) if r.split == REF_SPLIT]
    out = {}
    for name, references in loaders.items():
        c = np.array([reference_mark_iou(load(), detector) for load in references])
        out[name] = {"references": len(c), "framed_iou": c.round(3).tolist(),
                     "quantiles": dict(zip(("p05", "p25", "p50", "p75", "p95"),
                                           np.quantile(c, [0.05, 0.25, 0.5, 0.75, 0.95]).round(3).tolist(),
                                           strict=True)),
                     "share_at_least": {t: round(float((c >= t).mean()), 3) for t in (0.3, 0.35, 0.4, 0.5, 0.6, 0.7)}}
        print(name, out[name]["references"], out[name]["quantiles"], out[name]["share_at_least"], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reference_kind.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
