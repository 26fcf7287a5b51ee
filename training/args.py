"""Command-line options of `markguard train` and `markguard evaluate`, kept free of heavy imports so
that building the `markguard` parser does not load torch."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_train_arguments", "add_evaluate_arguments", "add_calibrate_arguments"]


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="experiment file layered on configs/default.json (path or name in configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set optim.epochs=3 (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/train-<UTC time>)")
    p.add_argument("--resume", type=Path, default=None, help="a run folder to continue from its last checkpoint")
    p.add_argument("--device", default=None, help="cpu or cuda (overrides the config)")
    p.add_argument("--bentoml-home", type=Path, default=None,
                   help="BentoML store to register in (default: $BENTOML_HOME, else <run>/bentoml)")
    p.add_argument("--no-bentoml", action="store_true", help="skip the BentoML model store")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="artifact folder, or a tag in the markguard home or BentoML store")
    p.add_argument("--manifest", type=Path, required=True, help="manifest.jsonl or a build folder holding one")
    p.add_argument("--split", default="val", help="the split whose photos are scored (default val)")
    p.add_argument("--out", type=Path, default=None, help="folder for metrics.json and plots (default runs/eval-<time>)")
    p.add_argument("--home", type=Path, default=None, help="markguard home to look tags up in (default $MARKGUARD_HOME)")
    p.add_argument("--bentoml-home", type=Path, default=None, help="BentoML store to look tags up in")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="seed of the negative claims drawn per photo")
    p.add_argument("--quiet", action="store_true")


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="artifact folder, or a tag in the markguard home or BentoML store")
    p.add_argument("--out", type=Path, required=True,
                   help="run folder (its cached vectors and OCR reads are reused; the new model is OUT/artifact)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value of the model's card, e.g. --set calibration.ocr_photos=50")
    p.add_argument("--verifier", type=Path, default=None,
                   help="a mark verifier folder (verifier.json and its weights) to add to the model, in place of "
                        "its own if it has one")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
