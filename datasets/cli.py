"""`markguard datasets ...`: build manifests from real sources, brand marks and synthetic photos.

Each build command takes `--out DIR` (refused if it holds another build, unless `--force`) and
`--seed`, writes `manifest.jsonl`, `stats.json` and `contact_sheet.png`, and prints the stats as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the builders (numpy, PIL, matplotlib fonts) load only when a build runs
    from markguard.datasets.build import BuildReport

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `datasets` and its sub-commands to the `markguard` parser."""
    parser = subparsers.add_parser("datasets", help="build dataset manifests (real, brand marks, synthetic)",
                                   description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="datasets_command", metavar="BUILD", required=True)

    p = sub.add_parser("import-folder", help="a folder or zip laid out BRAND/[PRODUCT/]*.jpg (+ counterfeit/)")
    p.add_argument("src", type=Path, help="folder or .zip archive")
    _common(p)
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of images (by content hash) in val")
    p.add_argument("--max-members", type=int, default=20_000, help="zip: most members accepted")
    p.add_argument("--max-total-mb", type=int, default=2048, help="zip: most uncompressed MiB accepted")
    p.add_argument("--max-ratio", type=float, default=100.0, help="zip: highest compression ratio of a member")
    p.set_defaults(func=_import_folder)

    p = sub.add_parser("grocery", help="the shared GroceryStoreDataset packages (31 products)")
    _common(p)
    p.add_argument("--source", type=Path, default=None,
                   help="grocery-packages folder (default: $MARKGUARD_DATA or ../shared/data, + /grocery-packages)")
    p.set_defaults(func=_grocery)

    p = sub.add_parser("grozi", help="GroZi-120 in-store frames: a real-photo yardstick (evaluation only)")
    _common(p)
    p.add_argument("--source", type=Path, default=None,
                   help="grozi120-insitu folder (default: $MARKGUARD_DATA or ../shared/data, + /grozi120-insitu)")
    p.add_argument("--refs-per-product", type=int, default=3,
                   help="frames per product enrolled as references (split ref); the others are queries (split query)")
    p.set_defaults(func=_grozi)

    p = sub.add_parser("brandmarks", help="clean renders of real brand marks (simple-icons) and wordmarks")
    _common(p)
    p.add_argument("--brands", type=int, default=1000, help="number of brands (0: all, about 3,400)")
    p.add_argument("--sizes", type=_sizes, default=(64, 128, 224), help="canvas sizes in px, comma-separated")
    p.add_argument("--fonts", type=int, default=3, help="wordmark fonts per brand")
    p.add_argument("--counterfeits", type=int, default=2, help="counterfeit edits of each brand's mark")
    _split_args(p)
    p.set_defaults(func=_brandmarks)

    p = sub.add_parser("synth", help="synthetic listing photos: genuine marks and counterfeits on real products")
    _common(p)
    p.add_argument("--brands", type=int, default=200, help="number of brands")
    p.add_argument("--per-brand", type=int, default=8, help="genuine photos per brand")
    p.add_argument("--counterfeits-per-genuine", type=int, default=1, help="counterfeit photos beside each genuine")
    p.add_argument("--size", type=int, default=256, help="photo side in px")
    p.add_argument("--serial-rate", type=float, default=0.4, help="share of photos with a printed serial label")
    p.add_argument("--source", type=Path, default=None,
                   help="data root with clothing/ and grocery-packages/ (default: $MARKGUARD_DATA or ../shared/data)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (the output is the same for any number)")
    p.add_argument("--splits", type=_splits, default=None,
                   help="build only these splits' brands, comma-separated (e.g. test: a larger held-out set whose "
                        "photos are those a full build of as many brands would hold)")
    p.add_argument("--paired-scenes", action="store_true",
                   help="photograph each training counterfeit in its genuine photo's scene (hard negatives; "
                        "val and test photos are unchanged)")
    _split_args(p)
    p.set_defaults(func=_synth)

    p = sub.add_parser("marketplace", help="a simulated marketplace feed with planted counterfeit rings (+ truth.json)")
    p.add_argument("--out", type=Path, required=True, help="output folder (feed.jsonl, images/, truth.json)")
    p.add_argument("--seed", type=int, default=1, help="seed: the same seed builds the same bytes")
    p.add_argument("--force", action="store_true", help="replace a different build already in --out")
    p.add_argument("--rings", type=int, default=10, help="planted rings")
    p.add_argument("--honest-sellers", type=int, default=160, help="honest sellers")
    p.add_argument("--resellers", type=int, default=25, help="resellers of genuine goods")
    p.add_argument("--lone-counterfeiters", type=int, default=15, help="counterfeiters outside any ring")
    p.add_argument("--source", type=Path, default=None,
                   help="grocery-packages folder (default: $MARKGUARD_DATA or ../shared/data, + /grocery-packages)")
    p.set_defaults(func=_marketplace)

    p = sub.add_parser("transforms", help="list the registered counterfeit transforms, one per line")
    p.set_defaults(func=_transforms)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder (manifest.jsonl, images/, contact_sheet.png)")
    p.add_argument("--seed", type=int, default=0, help="seed: the same seed builds the same bytes")
    p.add_argument("--force", action="store_true", help="replace a different build already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of brands in val (brand-disjoint)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share of brands in test (brand-disjoint)")


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(s) for s in text.split(",") if s.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 64,128,224, got {text!r}") from None
    if not sizes or min(sizes) < 16 or max(sizes) > 1024:
        raise argparse.ArgumentTypeError("sizes must lie in 16..1024 px")
    return sizes


def _splits(text: str) -> tuple[str, ...]:
    splits = tuple(sorted({s.strip() for s in text.split(",") if s.strip()}))
    if not splits or not set(splits) <= {"train", "val", "test"}:
        raise argparse.ArgumentTypeError(f"expected splits among train,val,test, got {text!r}")
    return splits


def _finish(report: BuildReport, stats: dict[str, Any], started: float) -> int:
    shown = dict(stats)
    skipped = shown.pop("skipped_inputs")
    shown["skipped_inputs"] = skipped[:50]
    if len(skipped) > 50:
        shown["skipped_inputs_more"] = len(skipped) - 50
    shown["out"] = str(report.out)
    shown["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(shown, indent=1))
    for s in skipped[:20]:
        print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
    return 0 if report.rows else 1


def _import_folder(args: argparse.Namespace) -> int:
    from markguard.datasets.import_folder import IMPORT_LIMITS, ImportOptions, build_import

    started = time.monotonic()
    limits = dataclasses.replace(IMPORT_LIMITS, max_members=args.max_members,
                                 max_total_bytes=args.max_total_mb * 1024**2, max_ratio=args.max_ratio)
    opts = ImportOptions(seed=args.seed, val_fraction=args.val_fraction, limits=limits)
    report, stats = build_import(args.src, args.out, opts=opts, force=args.force, progress=not args.quiet)
    return _finish(report, stats, started)


def _grocery(args: argparse.Namespace) -> int:
    from markguard.datasets.grocery import GroceryOptions, build_grocery
    from markguard.datasets.sources import default_data_root

    started = time.monotonic()
    source = args.source or default_data_root() / "grocery-packages"
    report, stats = build_grocery(args.out, source=source, opts=GroceryOptions(seed=args.seed), force=args.force,
                                  progress=not args.quiet)
    return _finish(report, stats, started)


def _grozi(args: argparse.Namespace) -> int:
    from markguard.datasets.grozi import MAX_REFS, GroziOptions, build_grozi
    from markguard.datasets.sources import default_data_root

    if not 1 <= args.refs_per_product <= MAX_REFS:
        raise SystemExit(f"markguard datasets grozi: --refs-per-product must lie in 1..{MAX_REFS}")
    started = time.monotonic()
    source = args.source or default_data_root() / "grozi120-insitu"
    report, stats = build_grozi(args.out, source=source, opts=GroziOptions(seed=args.seed, refs_per_product=args.refs_per_product),
                                force=args.force, progress=not args.quiet)
    return _finish(report, stats, started)


def _brandmarks(args: argparse.Namespace) -> int:
    from markguard.datasets.brandmarks import BrandmarkOptions, build_brandmarks

    started = time.monotonic()
    opts = BrandmarkOptions(brands=args.brands, sizes=args.sizes, fonts=args.fonts, counterfeits=args.counterfeits,
                            val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed)
    report, stats = build_brandmarks(args.out, opts=opts, force=args.force, progress=not args.quiet)
    return _finish(report, stats, started)


def _synth(args: argparse.Namespace) -> int:
    from markguard.datasets.sources import default_data_root
    from markguard.datasets.synth import SynthOptions, build_synth

    started = time.monotonic()
    opts = SynthOptions(brands=args.brands, per_brand=args.per_brand, counterfeits_per_genuine=args.counterfeits_per_genuine,
                        size=args.size, serial_rate=args.serial_rate, val_fraction=args.val_fraction,
                        test_fraction=args.test_fraction, seed=args.seed, splits=args.splits,
                        paired_scenes=args.paired_scenes)
    report, stats = build_synth(args.out, data_root=args.source or default_data_root(), opts=opts, force=args.force,
                                workers=args.workers, progress=not args.quiet)
    return _finish(report, stats, started)


def _marketplace(args: argparse.Namespace) -> int:
    from markguard.datasets.marketplace import MarketplaceOptions, build_marketplace
    from markguard.datasets.sources import default_data_root

    started = time.monotonic()
    opts = MarketplaceOptions(seed=args.seed, rings=args.rings, honest_sellers=args.honest_sellers,
                              resellers=args.resellers, lone_counterfeiters=args.lone_counterfeiters)
    stats = build_marketplace(args.out, source=args.source or default_data_root() / "grocery-packages", opts=opts,
                              force=args.force)
    print(json.dumps({**stats, "out": str(args.out), "seconds": round(time.monotonic() - started, 1)}, indent=1))
    return 0


def _transforms(args: argparse.Namespace) -> int:
    from markguard.datasets.transforms import transform_names

    for name in transform_names():
        print(name)
    return 0
