"""`markguard brand ...`, `markguard enroll`, `markguard reference ...`: the brands' reference sets."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from sqlalchemy import select

from markguard.serving.brands import (
    add_brand,
    check_serial_pattern,
    check_wordmarks,
    get_brand,
    list_brands,
    summarize,
)
from markguard.serving.cli import add_home_argument
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Brand, Reference, ReferenceKind
from markguard.serving.tables import print_table
from markguard.vision.errors import MarkguardError

__all__ = ["register"]

# Check-digit schemes a brand may register; vision.text implements each.
SERIAL_CHECKSUMS = ("none", "luhn", "gs1", "iso7064-mod11-2")


def register(subparsers: argparse._SubParsersAction) -> None:
    brand = subparsers.add_parser("brand", help="add, list, show and update brands")
    brand_sub = brand.add_subparsers(dest="brand_command", metavar="ACTION", required=True)
    p = brand_sub.add_parser("add", help="add a brand")
    p.add_argument("name")
    p.add_argument("--wordmark", action="append", default=None, help="a text mark of the brand (repeatable)")
    _add_serial_arguments(p)
    add_home_argument(p)
    p.set_defaults(func=cmd_brand_add)
    p = brand_sub.add_parser("list", help="list brands (a table; --json: JSON lines)")
    p.add_argument("--json", action="store_true", help="one JSON object per brand, for scripts")
    add_home_argument(p)
    p.set_defaults(func=cmd_brand_list)
    p = brand_sub.add_parser("show", help="show one brand as JSON")
    p.add_argument("name")
    add_home_argument(p)
    p.set_defaults(func=cmd_brand_show)
    p = brand_sub.add_parser("update", help="change a brand's policy or wordmarks")
    p.add_argument("name")
    p.add_argument("--wordmark", action="append", default=None, help="replace the wordmarks (repeatable)")
    p.add_argument("--review-at", type=_unit_float, help="risk from which a listing goes to review")
    p.add_argument("--takedown-at", type=_unit_float, help="risk from which a listing is taken down")
    p.add_argument("--genuine-from-reviews", choices=("yes", "no"),
                   help="a listing reviewed genuine becomes a genuine reference of the brand (default: no)")
    _add_serial_arguments(p)
    add_home_argument(p)
    p.set_defaults(func=cmd_brand_update)

    p = subparsers.add_parser("enroll", help="enroll reference images (files, folders, zip archives)")
    p.add_argument("brand")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--product", help="the product these images show")
    p.add_argument("--kind", choices=[k.value for k in ReferenceKind], default="genuine")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of failing the enroll")
    add_home_argument(p)
    p.set_defaults(func=cmd_enroll)

    ref = subparsers.add_parser("reference", help="list and delete enrolled references")
    ref_sub = ref.add_subparsers(dest="reference_command", metavar="ACTION", required=True)
    p = ref_sub.add_parser("list", help="a brand's references as JSON lines")
    p.add_argument("brand")
    add_home_argument(p)
    p.set_defaults(func=cmd_reference_list)
    p = ref_sub.add_parser("delete", help="delete references by id")
    p.add_argument("brand")
    p.add_argument("ids", nargs="+", type=_reference_id)
    add_home_argument(p)
    p.set_defaults(func=cmd_reference_delete)


def _add_serial_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--serial-pattern", metavar="REGEX", help="the full-match pattern of the brand's genuine serials (RE2 syntax: no backreferences or "
                        "look-arounds; '' clears it)")
    p.add_argument("--serial-checksum", choices=SERIAL_CHECKSUMS, help="check digit over the serial's digits")


def _apply_serial_arguments(brand: Brand, args: argparse.Namespace) -> None:
    if args.serial_pattern is not None:
        if len(args.serial_pattern) > 500:  # the catalog's column; PostgreSQL enforces it
            raise MarkguardError("--serial-pattern is longer than 500 characters")
        try:
            brand.serial_pattern = check_serial_pattern(args.serial_pattern)
        except MarkguardError as exc:
            raise MarkguardError(f"--serial-pattern: {exc}") from None
    if args.serial_checksum is not None:
        brand.serial_checksum = args.serial_checksum


def _reference_id(text: str) -> int:
    value = int(text)
    if not 1 <= value < 2**63:
        raise argparse.ArgumentTypeError("a reference id is between 1 and 2^63-1")
    return value


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _print(obj: object) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


def cmd_brand_add(args: argparse.Namespace) -> int:
    home = Home(args.home)
    with home.write_lock(), home.sessions.begin() as session:
        brand = add_brand(session, args.name, wordmarks=args.wordmark)
        _apply_serial_arguments(brand, args)
        session.flush()
        _print(dataclasses.asdict(summarize(session, brand)))
    return 0


def cmd_brand_list(args: argparse.Namespace) -> int:
    home = Home(args.home)
    with home.sessions() as session:
        summaries = list_brands(session)
    if args.json:
        for summary in summaries:
            _print(dataclasses.asdict(summary))
        return 0
    if not summaries:
        print("no brands yet: markguard brand add NAME", file=sys.stderr)
        return 0
    rows = [[s.name, str(len(s.products)), str(s.genuine), str(s.counterfeit), _policy(s.review_at, s.takedown_at),
             s.serial_pattern or "-"] for s in summaries]
    print_table(["BRAND", "PRODUCTS", "GENUINE", "COUNTERFEIT", "REVIEW/TAKEDOWN AT", "SERIALS"], rows)
    return 0


def _policy(review_at: float | None, takedown_at: float | None) -> str:
    if review_at is None and takedown_at is None:
        return "model's"
    return "/".join("model's" if v is None else f"{v:g}" for v in (review_at, takedown_at))


def cmd_brand_show(args: argparse.Namespace) -> int:
    home = Home(args.home)
    with home.sessions() as session:
        _print(dataclasses.asdict(summarize(session, get_brand(session, args.name))))
    return 0


def cmd_brand_update(args: argparse.Namespace) -> int:
    home = Home(args.home)
    with home.write_lock(), home.sessions.begin() as session:
        brand = get_brand(session, args.name)
        if args.wordmark is not None:
            brand.wordmarks = check_wordmarks(args.wordmark)
        review = args.review_at if args.review_at is not None else brand.review_at
        takedown = args.takedown_at if args.takedown_at is not None else brand.takedown_at
        if review is not None and takedown is not None and review > takedown:
            raise MarkguardError("--review-at must not exceed --takedown-at")
        brand.review_at, brand.takedown_at = review, takedown
        if args.genuine_from_reviews is not None:
            brand.genuine_from_reviews = args.genuine_from_reviews == "yes"
        _apply_serial_arguments(brand, args)
        session.flush()
        _print(dataclasses.asdict(summarize(session, brand)))
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    from markguard.serving.enroll import collect_inputs, enroll
    from markguard.serving.registry import ensure_default_model

    home = Home(args.home)
    with home.sessions() as session:
        get_brand(session, args.brand)
    inputs = collect_inputs(args.paths)
    artifact = ensure_default_model(home)
    model = artifact.load_embedder()
    report = enroll(
        home,
        artifact,
        model,
        brand=args.brand,
        inputs=inputs,
        product=args.product,
        kind=ReferenceKind(args.kind),
        skip_bad=args.skip_bad,
        progress=sys.stderr.isatty(),
    )
    for label, reason in report.skipped:
        print(f"markguard: skipped {label}: {reason}", file=sys.stderr)
    _print(
        {
            "brand": args.brand,
            "product": args.product,
            "kind": args.kind,
            "added": len(report.added),
            "reference_ids": report.added,
            "duplicates": len(report.duplicates),
            "skipped": len(report.skipped),
            "model": artifact.tag,
        }
    )
    return 0


def cmd_reference_list(args: argparse.Namespace) -> int:
    from markguard.serving.enroll import public_label

    home = Home(args.home)
    with home.sessions() as session:
        brand = get_brand(session, args.brand)
        for ref in session.scalars(select(Reference).where(Reference.brand_id == brand.id).order_by(Reference.id)):
            _print(
                {
                    "id": ref.id,
                    "brand": brand.name,
                    "product": ref.product.name if ref.product else None,
                    "kind": str(ref.kind),
                    "sha256": ref.sha256,
                    "width": ref.width,
                    "height": ref.height,
                    "source": public_label(ref.source),
                }
            )
    return 0


def cmd_reference_delete(args: argparse.Namespace) -> int:
    from markguard.serving.references import delete_references

    home = Home(args.home)
    deleted = delete_references(home, brand=args.brand, ids=args.ids)
    _print({"deleted": deleted})
    return 0


