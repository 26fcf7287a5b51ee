"""`markguard`: one entry point, one sub-command per task.

Every command is a function of an argv list (`main(["score", "photo.jpg"])`), so tests run it
in-process. Expected failures (`MarkguardError`) become one line on stderr and exit code 2; nothing
prints a traceback at a user.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from markguard.vision.errors import MarkguardError

__all__ = ["main", "build_parser", "add_home_argument"]

# Modules that add sub-commands: each has `register(subparsers)`, setting `func(args) -> int`.
# Imported only when the parser is built, so that `markguard score` does not import training code.
COMMAND_MODULES = (
    "markguard.serving.commands.catalog",
    "markguard.serving.commands.score",
    "markguard.serving.commands.serve",
    "markguard.serving.commands.model",
    "markguard.serving.commands.keys",
    "markguard.serving.commands.demo",
    "markguard.datasets.cli",
    "markguard.training.cli",
    "markguard.serving.commands.bench",
    "markguard.serving.commands.serials",
    "markguard.serving.commands.intel",
)


def add_home_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(os.environ.get("MARKGUARD_HOME", ".markguard")),
        help="state directory (default: $MARKGUARD_HOME or ./.markguard)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="markguard", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a part not built yet; anything missing inside it is a real error
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except MarkguardError as exc:
        print(f"markguard: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("markguard: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
