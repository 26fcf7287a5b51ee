"""`markguard review add LISTING counterfeit|genuine` and `markguard review list`: moderators' labels
from the command line, the same as `POST /v1/reviews` and `GET /v1/reviews` (see `serving.reviews`)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from markguard.serving.cli import add_home_argument
from markguard.serving.state.home import Home

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    review = subparsers.add_parser("review", help="label scored listings genuine or counterfeit; list reviews")
    sub = review.add_subparsers(dest="review_command", metavar="ACTION", required=True)
    p = sub.add_parser("add", help="label the newest score of a listing (its photo moves between the brand's references)")
    p.add_argument("listing", help="the listing id it was scored with (--listing, `listing_id`)")
    p.add_argument("label", choices=("genuine", "counterfeit"))
    p.add_argument("--note", default="", help="why (kept with the review)")
    p.add_argument("--reviewer", default="cli", help="who reviews (recorded as the reviewer; default: cli)")
    add_home_argument(p)
    p.set_defaults(func=cmd_review_add)
    p = sub.add_parser("list", help="every review, oldest first (JSON Lines)")
    p.add_argument("--listing", help="only this listing's reviews")
    p.add_argument("--limit", type=int, default=100)
    add_home_argument(p)
    p.set_defaults(func=cmd_review_list)


def cmd_review_add(args: argparse.Namespace) -> int:
    from markguard.serving.registry import ensure_default_model
    from markguard.serving.reviews import record_review
    from markguard.serving.state.schema import ReferenceKind

    home = Home(args.home)
    artifact = ensure_default_model(home)
    report = record_review(home, artifact, artifact.load_embedder(fuse=True), listing_id=args.listing,
                           label=ReferenceKind(args.label), reviewer_key_id=args.reviewer[:32], note=args.note)
    print(json.dumps(dataclasses.asdict(report), sort_keys=True), flush=True)
    return 0


def cmd_review_list(args: argparse.Namespace) -> int:
    from markguard.serving.reviews import list_reviews

    for report in list_reviews(Home(args.home), listing_id=args.listing, limit=args.limit):
        print(json.dumps(dataclasses.asdict(report), sort_keys=True), flush=True)
    return 0
