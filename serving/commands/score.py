"""`markguard score IMAGE...`: one score JSON object per image, in the order given (`-`: paths from stdin)."""

from __future__ import annotations

import argparse
import json
import sys

from markguard.serving.cli import add_home_argument, text_argument
from markguard.vision.decode import MAX_BYTES
from markguard.vision.errors import ImageError, MarkguardError

__all__ = ["register"]

_CHUNK = 16  # images embedded together
_MANY = 20  # from this many photos on, point at the service (the model and index load once there)
_ID_LIMIT = 200  # characters of --listing, --seller and --title, as the API takes them


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("score", help="score listing photos; prints one JSON object per image")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="photo paths; `-` reads paths from stdin, one per line")
    p.add_argument("--brand", type=text_argument, help="the brand the listing claims")
    p.add_argument("--product", type=text_argument, help="the product the listing claims (needs --brand)")
    p.add_argument("--seller", type=text_argument, help="the seller's id, for reuse across sellers")
    p.add_argument("--listing", type=text_argument, help="the listing's id")
    p.add_argument("--title", type=text_argument,
                   help="the listing's title (stored with the listing, echoed as claimed.title)")
    p.add_argument("--no-record", action="store_true", help="do not record the listing in the catalog")
    p.add_argument("--no-ocr", action="store_true", help="skip reading text (faster; no wordmark or serial evidence)")
    add_home_argument(p)
    p.set_defaults(func=cmd_score)


def cmd_score(args: argparse.Namespace) -> int:
    from markguard.serving.engine import ScoreRequest, ScoringEngine
    from markguard.serving.state.home import Home

    if args.product and not args.brand:
        raise MarkguardError("--product needs --brand")
    for option in ("listing", "seller", "title"):
        value = getattr(args, option)
        if value is not None and len(value) > _ID_LIMIT:
            raise MarkguardError(f"--{option} is longer than {_ID_LIMIT} characters")
    images = _paths(args.images)
    if not images:
        raise MarkguardError("no image paths given (stdin was empty)")
    if len(images) >= _MANY:
        print(f"markguard: hint: scoring {len(images)} photos; for many photos or repeated runs, `markguard serve` "
              "keeps the model and index loaded (POST /v1/score_batch)", file=sys.stderr)
    engine = ScoringEngine(Home(args.home), ocr=not args.no_ocr)
    failed = 0
    for start in range(0, len(images), _CHUNK):
        requests = []
        for path in images[start : start + _CHUNK]:
            try:
                data = _read(path)
            except MarkguardError as exc:
                print(f"markguard: error: {path}: {exc}", file=sys.stderr)
                failed += 1
                continue
            requests.append(
                ScoreRequest(data, brand=args.brand, product=args.product, seller=args.seller, listing=args.listing,
                             title=args.title, label=path)
            )
        try:
            results = engine.score_many(requests, record=not args.no_record)
        except ImageError:  # find the bad photo(s): score the chunk one by one
            results = []
            for request in requests:
                try:
                    results.append(engine.score(request, record=not args.no_record))
                except ImageError as exc:
                    print(f"markguard: error: {request.label}: {exc}", file=sys.stderr)
                    failed += 1
        for result in results:
            print(json.dumps(result.to_dict()), flush=True)
    return 2 if failed else 0


def _paths(given: list[str]) -> list[str]:
    """The paths as given, with `-` replaced by the lines of stdin (blank lines skipped)."""
    if given.count("-") > 1:
        raise MarkguardError("`-` (paths from stdin) may be given once")
    paths: list[str] = []
    for item in given:
        if item == "-":
            paths.extend(line.rstrip("\r\n") for line in sys.stdin if line.strip())
        else:
            paths.append(item)
    return paths


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except IsADirectoryError:
        raise MarkguardError("is a directory") from None
    except OSError as exc:
        raise MarkguardError(exc.strerror or str(exc)) from None
    except ValueError:  # a path no file system takes (a NUL byte, from stdin or a file list)
        raise MarkguardError("not a valid path (holds a NUL character)") from None
    if len(data) > MAX_BYTES:
        raise MarkguardError(f"larger than the {MAX_BYTES}-byte limit")
    return data
