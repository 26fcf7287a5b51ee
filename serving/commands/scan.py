"""`markguard scan FEED --out DIR`: score every listing of a feed; resumable, recorded once each."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from markguard.serving.cli import add_home_argument

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "scan", help="score a feed of listings (JSON Lines, CSV or Parquet) into DIR; run again to resume",
        description="Each feed row: listing_id, seller_id, brand, product, title, image (a local path, "
                    "absolute or relative to the feed; URLs are refused). Writes DIR/results.jsonl, "
                    "DIR/results.parquet and DIR/summary.json; every scored listing is recorded in the catalog.")
    p.add_argument("feed", type=Path, metavar="FEED")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="results and the progress journal")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: worker processes on this machine (default); ray: a Ray Data actor pool")
    p.add_argument("--workers", type=int, default=0,
                   help="scorers (processes or actors), each with its own model (default 0: one per core; -1: score in this process, local engine)")
    p.add_argument("--chunk", type=int, default=16, help="rows a scorer takes at a time (default 16)")
    p.add_argument("--ray-address", help="an existing Ray cluster (default: start a private one on 127.0.0.1)")
    p.add_argument("--rescore", action="store_true",
                   help="score listings again even when the catalog holds them with the same photo and model")
    p.add_argument("--no-ocr", action="store_true", help="skip reading text (faster; no wordmark or serial evidence)")
    p.add_argument("--ocr-every-photo", action="store_true",
                   help="read every photo's text (default: only where it can matter, vision.pipeline.OcrGate)")
    p.add_argument("--runtime", choices=("onnx", "torch"), default="onnx",
                   help="the networks' runtime (default onnx: ONNX Runtime where installed and equal within 1e-3)")
    p.add_argument("--images-under", metavar="FOLDER",
                   help="refuse (per row) images that do not lie under FOLDER, symlinks resolved")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_home_argument(p)
    p.set_defaults(func=cmd_scan)


def cmd_scan(args: argparse.Namespace) -> int:
    from markguard.serving.scan import ScanSettings, run_scan
    from markguard.vision.errors import MarkguardError

    if args.chunk < 1 or args.chunk > 256:
        raise MarkguardError("--chunk must be between 1 and 256")
    if args.ray_address and args.engine != "ray":
        raise MarkguardError("--ray-address needs --engine ray")
    settings = ScanSettings(home=str(args.home), feed=args.feed, ocr=not args.no_ocr, rescore=args.rescore,
                            chunk=args.chunk, workers=args.workers, ray_address=args.ray_address,
                            image_root=str(args.images_under) if args.images_under else None,
                            ocr_gate=not args.ocr_every_photo, runtime=args.runtime)
    summary = run_scan(settings, args.out, engine=args.engine, progress=not args.quiet)
    print(json.dumps(summary))
    return 0
