"""`markguard serials import BRAND FILE`: register a brand's genuine serials (stored as keyed hashes)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from markguard.serving.cli import add_home_argument
from markguard.serving.state.home import Home

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    serials = subparsers.add_parser("serials", help="the brands' genuine-serial registries")
    sub = serials.add_subparsers(dest="serials_command", metavar="ACTION", required=True)
    p = sub.add_parser("import", help="import genuine serials from a CSV (a `serial` column, else the first) or text file")
    p.add_argument("brand")
    p.add_argument("file", type=Path)
    add_home_argument(p)
    p.set_defaults(func=cmd_serials_import)


def cmd_serials_import(args: argparse.Namespace) -> int:
    from markguard.serving.serials import import_serials

    home = Home(args.home)
    report = import_serials(home, args.brand, args.file, progress=sys.stderr.isatty())
    print(json.dumps(dataclasses.asdict(report), sort_keys=True), flush=True)
    return 0
