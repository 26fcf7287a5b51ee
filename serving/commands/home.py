"""`markguard home sweep`: remove a home's debris (temporary files, unreferenced blobs, old index versions)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from markguard.serving.cli import add_home_argument

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    home = subparsers.add_parser("home", help="look after a state home")
    sub = home.add_subparsers(dest="home_command", metavar="ACTION", required=True)
    p = sub.add_parser("sweep", help="remove temporary files, unreferenced blobs and old index versions")
    p.add_argument("--min-age", type=float, default=None, metavar="SECONDS",
                   help="leave anything younger alone, so writes in flight are safe (default: 3600)")
    add_home_argument(p)
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from markguard.serving.state.home import Home
    from markguard.serving.state.sweep import MIN_AGE_S, sweep

    report = sweep(Home(args.home), min_age_s=MIN_AGE_S if args.min_age is None else max(0.0, args.min_age))
    print(json.dumps(dataclasses.asdict(report), sort_keys=True), flush=True)
    return 0
