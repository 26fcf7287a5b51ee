"""`markguard bench NAME [ARGS...]`: run one benchmark; each prints ratios against a baseline it runs itself."""

from __future__ import annotations

import argparse
import importlib

__all__ = ["register", "BENCHMARKS"]

# name → module with `get_args_parser()` and `main(argv) -> int` (torchvision references style).
BENCHMARKS = {
    "ocr": "markguard.training.benchmarks.ocr",
    "index": "markguard.serving.benchmarks.index",
    "scoring": "markguard.serving.benchmarks.scoring",
    "embedder": "markguard.training.benchmarks.embedder",
    "serve": "markguard.serving.bench_serve",
    "scan": "markguard.serving.benchmarks.scan",
    "rings": "markguard.serving.benchmarks.rings",
    "duplicates": "markguard.serving.benchmarks.duplicates",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help=f"run a benchmark: {', '.join(BENCHMARKS)}")
    p.add_argument("name", choices=sorted(BENCHMARKS))
    p.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options (see `bench NAME --help`)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        module = importlib.import_module(BENCHMARKS[args.name])
    except ModuleNotFoundError as exc:
        if exc.name == BENCHMARKS[args.name]:
            print(f"markguard: benchmark {args.name!r} is not built yet")
            return 2
        raise
    return int(module.main(args.args) or 0)
