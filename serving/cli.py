"""`markguard`: one entry point, one sub-command per task.

Every command is a function of an argv list (`main(["score", "photo.jpg"])`), so tests run it
in-process. Expected failures (`MarkguardError`) become one line on stderr and exit code 2; nothing
prints a traceback at a user, not even when a pipe closes early (`markguard brand list | head -1`).
`--home DIR` is accepted before or after the command; the environment (`MARKGUARD_*`, see
`markguard config show`) is checked before any command runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from markguard.vision.errors import MarkguardError

__all__ = ["main", "build_parser", "add_home_argument", "text_argument"]

# Modules that add sub-commands: each has `register(subparsers)`, setting `func(args) -> int`.
# Imported only when the parser is built, so that `markguard score` does not import training code.
COMMAND_MODULES = (
    "markguard.serving.commands.catalog",
    "markguard.serving.commands.score",
    "markguard.serving.commands.scan",
    "markguard.serving.commands.serve",
    "markguard.serving.commands.model",
    "markguard.serving.commands.keys",
    "markguard.serving.commands.demo",
    "markguard.datasets.cli",
    "markguard.training.cli",
    "markguard.serving.commands.bench",
    "markguard.serving.commands.serials",
    "markguard.serving.commands.reviews",
    "markguard.serving.commands.config",
    "markguard.serving.commands.home",
    "markguard.serving.commands.intel",
)
_HOME_HELP = "state directory (default: $MARKGUARD_HOME or ./.markguard)"


def add_home_argument(parser: argparse.ArgumentParser) -> None:
    """`--home DIR` after the command; `main` fills it from the global `--home` or the settings."""
    parser.add_argument("--home", type=Path, default=None, metavar="DIR", help=_HOME_HELP)


def text_argument(value: str) -> str:
    """An argparse `type` for text that is stored or looked up (ids, titles, names): refused at parse time
    (exit 2) when it holds NUL or bytes that are not UTF-8 (which Python carries as lone surrogates), which
    the catalog cannot store. File paths are not text: they take any bytes the file system does."""
    if "\0" in value:
        raise argparse.ArgumentTypeError("holds a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("is not valid UTF-8 text") from None
    return value


def _version() -> str:
    try:
        return version("markguard")
    except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="markguard", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"markguard {_version()}")
    # A separate dest: a sub-command's own --home default would otherwise overwrite this one.
    parser.add_argument("--home", dest="global_home", type=Path, default=None, metavar="DIR", help=_HOME_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:  # a listed module that is missing is a broken install: fail, never hide its commands
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from markguard.serving.settings import get_settings

    try:
        settings = get_settings()  # a bad MARKGUARD_* value stops here, before any work
    except MarkguardError as exc:
        print(f"markguard: error: {exc}", file=sys.stderr)
        return 2
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:  # answered before the commands (and torch) are imported
        print(f"markguard {_version()}")
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "home"):  # the command takes a home: after it, before it, or from the settings
        if args.home is not None and args.global_home is not None and args.home != args.global_home:
            parser.error(f"--home given twice: {args.global_home} and {args.home}")
        args.home = args.home or args.global_home or settings.home
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except MarkguardError as exc:
        print(f"markguard: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("markguard: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as `cat` would
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by it


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is no real file (captured in a test): nothing to flush to
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
