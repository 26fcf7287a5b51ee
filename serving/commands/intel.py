"""`markguard rings ...`, `markguard case ...`, `markguard report`: counterfeit intelligence from the catalog."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
from pathlib import Path

from markguard.serving.cli import add_home_argument
from markguard.vision.errors import MarkguardError

__all__ = ["register"]


def _time(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date or ISO time, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("rings", help="seller networks: update, rebuild, list, show")
    sub = p.add_subparsers(dest="rings_command", metavar="ACTION", required=True)
    q = sub.add_parser("update", help="take in listings scored since the last update")
    q.add_argument("--photos", action="store_true",
                   help="first compute missing evidence (vectors, known-fake matches) from kept photos (loads the model)")
    add_home_argument(q)
    q.set_defaults(func=_update, rebuild=False)
    q = sub.add_parser("rebuild", help="recompute every edge and ring from the whole catalog")
    q.add_argument("--photos", action="store_true", help="as for update")
    add_home_argument(q)
    q.set_defaults(func=_update, rebuild=True)
    q = sub.add_parser("list", help="live rings, best first")
    q.add_argument("--brand", help="only rings selling this brand")
    q.add_argument("--since", type=_time, help="only rings seen at or after this time")
    q.add_argument("--json", action="store_true")
    add_home_argument(q)
    q.set_defaults(func=_list)
    q = sub.add_parser("show", help="one ring: sellers, listings, evidence")
    q.add_argument("ring", type=int)
    q.add_argument("--json", action="store_true")
    add_home_argument(q)
    q.set_defaults(func=_show)

    p = subparsers.add_parser("case", help="investigator case bundles: export, verify")
    sub = p.add_subparsers(dest="case_command", metavar="ACTION", required=True)
    q = sub.add_parser("export", help="write a ring's evidence bundle")
    q.add_argument("ring", type=int)
    q.add_argument("--out", type=Path, required=True)
    add_home_argument(q)
    q.set_defaults(func=_export)
    q = sub.add_parser("verify", help="re-hash a bundle against its manifest.sha256 (exit 1 if altered)")
    q.add_argument("folder", type=Path)
    q.set_defaults(func=_verify)

    p = subparsers.add_parser("alliance", help="share a brand's known-fake references with the alliance (opt-in)")
    sub = p.add_subparsers(dest="alliance_command", metavar="ACTION", required=True)
    q = sub.add_parser("share", help="opt a brand in (all its known fakes, or --references)")
    q.add_argument("brand")
    q.add_argument("--references", type=lambda t: [int(x) for x in t.split(",") if x.strip()],
                   help="comma-separated reference ids: share only these")
    add_home_argument(q)
    q.set_defaults(func=_alliance)
    q = sub.add_parser("revoke", help="opt a brand out")
    q.add_argument("brand")
    add_home_argument(q)
    q.set_defaults(func=_alliance)
    q = sub.add_parser("list", help="who shares what")
    add_home_argument(q)
    q.set_defaults(func=_alliance)

    p = subparsers.add_parser("report", help="a transparency report for a period (JSON, HTML, PDF)")
    p.add_argument("--from", dest="start", type=_time, required=True)
    p.add_argument("--to", dest="end", type=_time, required=True)
    p.add_argument("--brand", help="one brand's report")
    p.add_argument("--out", type=Path, required=True)
    add_home_argument(p)
    p.set_defaults(func=_report)


def _home(args: argparse.Namespace):  # noqa: ANN202
    from markguard.serving.state.home import Home

    return Home(args.home)


def _brand_id(home, name: str | None) -> int | None:  # noqa: ANN001
    from markguard.serving.brands import get_brand

    if name is None:
        return None
    with home.sessions() as session:
        return get_brand(session, name).id


def _update(args: argparse.Namespace) -> int:
    from markguard.serving.intelligence.rings import rebuild_rings, update_rings

    home = _home(args)
    backfilled = None
    if args.photos:
        from markguard.serving.engine import ScoringEngine
        from markguard.serving.intelligence.backfill import backfill_evidence

        backfilled = backfill_evidence(ScoringEngine(home, ocr=False))
    report = (rebuild_rings if args.rebuild else update_rings)(home)
    print(json.dumps({**report.__dict__, "evidence_backfilled": backfilled}))
    return 0


def _list(args: argparse.Namespace) -> int:
    from markguard.serving.intelligence.rings import list_rings

    home = _home(args)
    brand_id = _brand_id(home, args.brand)
    with home.sessions() as session:
        rings = list_rings(session, brand_id=brand_id, since=args.since)
    if args.json:
        print(json.dumps(rings, indent=1))
        return 0
    print(f"{'ring':>5} {'score':>6} {'sellers':>7} {'listings':>8} {'flagged':>7}  last seen                  brands")
    for r in rings:
        print(f"{r['id']:>5} {r['score']:>6.3f} {r['sellers']:>7} {r['listings']:>8} {r['flagged_share']:>7.2f}  "
              f"{r['last_seen']:<26} {', '.join(r['brands'])}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from markguard.serving.intelligence.rings import ring_detail

    with _home(args).sessions() as session:
        detail = ring_detail(session, args.ring)
    if args.json:
        print(json.dumps(detail, indent=1))
        return 0
    print(f"ring {detail['id']}: score {detail['score']}, {detail['sellers']} sellers, {detail['listings']} listings, "
          f"brands {', '.join(detail['brands'])}, seen {detail['first_seen']} – {detail['last_seen']}")
    print("sellers: " + ", ".join(detail["members"]))
    for e in detail["edges"]:
        print(f"  {e['sellers'][0]} – {e['sellers'][1]}: {e['kind']} (weight {e['weight']}, {e['count']} pairs)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from markguard.serving.intelligence.cases import export_case

    report = export_case(_home(args), args.ring, args.out, actor=f"cli:{getpass.getuser()}", role="admin")
    print(json.dumps({"ring": report.ring_id, "out": str(report.out), "files": report.files,
                      "manifest_sha256": report.manifest_sha256}))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from markguard.serving.intelligence.cases import verify_case

    problems = verify_case(args.folder)
    for p in problems:
        print(p)
    print("intact" if not problems else f"{len(problems)} problem(s)")
    return 0 if not problems else 1


def _alliance(args: argparse.Namespace) -> int:
    from markguard.serving.intelligence.sharing import revoke_sharing, share_known_fakes, sharing_status

    home = _home(args)
    with home.sessions.begin() as session:
        if args.alliance_command == "share":
            share_known_fakes(session, args.brand, reference_ids=args.references)
        elif args.alliance_command == "revoke":
            revoke_sharing(session, args.brand)
    with home.sessions() as session:
        print(json.dumps(sharing_status(session), indent=1))
    return 0


def _report(args: argparse.Namespace) -> int:
    from markguard.serving.intelligence.reports import build_report, write_report

    if args.end <= args.start:
        raise MarkguardError("--to must come after --from")
    home = _home(args)
    brand_id = _brand_id(home, args.brand)
    with home.sessions() as session:
        figures = build_report(session, start=args.start, end=args.end, brand_id=brand_id)
    files = write_report(figures, args.out)
    print(json.dumps({"listings_scanned": figures["listings_scanned"], "files": [str(f) for f in files]}))
    return 0
