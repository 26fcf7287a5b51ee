"""`markguard brand ...`, `markguard enroll`, `markguard reference ...`: the brands' reference sets."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from markguard.serving.catalog import Catalog, serial_checksums
from markguard.serving.cli import add_home_argument, text_argument
from markguard.serving.state.home import Home
from markguard.serving.state.schema import ReferenceKind
from markguard.serving.tables import print_table

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    brand = subparsers.add_parser("brand", help="add, list, show and update brands")
    brand_sub = brand.add_subparsers(dest="brand_command", metavar="ACTION", required=True)
    p = brand_sub.add_parser("add", help="add a brand")
    p.add_argument("name")
    p.add_argument("--wordmark", action="append", default=None, type=text_argument,
                   help="a text mark of the brand (repeatable)")
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
    p.add_argument("--wordmark", action="append", default=None, type=text_argument,
                   help="replace the wordmarks (repeatable)")
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
    p.add_argument("--product", type=text_argument, help="the product these images show")
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
    p.add_argument("--serial-checksum", choices=serial_checksums(), help="check digit over the serial's digits")


def _policy_arguments(args: argparse.Namespace) -> dict[str, object]:
    """The policy fields the command line gives (the catalog service checks them)."""
    given = {"serial_pattern": args.serial_pattern, "serial_checksum": args.serial_checksum,
             "review_at": getattr(args, "review_at", None), "takedown_at": getattr(args, "takedown_at", None)}
    changes: dict[str, object] = {k: v for k, v in given.items() if v is not None}
    if getattr(args, "genuine_from_reviews", None) is not None:
        changes["genuine_from_reviews"] = args.genuine_from_reviews == "yes"
    return changes


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
    catalog = Catalog(Home(args.home))
    policy = catalog.create_brand(args.name, wordmarks=args.wordmark, **_policy_arguments(args))
    _print(dataclasses.asdict(catalog.brand(policy.name)))
    return 0


def cmd_brand_list(args: argparse.Namespace) -> int:
    summaries = Catalog(Home(args.home)).brands()
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
    _print(dataclasses.asdict(Catalog(Home(args.home)).brand(args.name)))
    return 0


def cmd_brand_update(args: argparse.Namespace) -> int:
    catalog = Catalog(Home(args.home))
    changes = _policy_arguments(args)
    if args.wordmark is not None:
        changes["wordmarks"] = args.wordmark
    policy = catalog.update_policy(args.name, **changes)
    _print(dataclasses.asdict(catalog.brand(policy.name)))
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    from markguard.serving.enroll import collect_inputs, enroll
    from markguard.serving.registry import ensure_default_model

    home = Home(args.home)
    Catalog(home).policy(args.brand)  # an unknown brand fails before any image is read
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
    for ref in Catalog(Home(args.home)).references(args.brand):
        _print({k: v for k, v in dataclasses.asdict(ref).items() if k != "created_at"})
    return 0


def cmd_reference_delete(args: argparse.Namespace) -> int:
    _print({"deleted": Catalog(Home(args.home)).delete_references(args.brand, args.ids)})
    return 0


