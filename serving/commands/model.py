"""`markguard model init|list|promote|register|pin`: the home's model registry."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from markguard.serving.cli import add_home_argument
from markguard.serving.tables import print_table

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="list, register and promote model artifacts")
    sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    p = sub.add_parser("init", help="register and promote the default model if the home has none")
    add_home_argument(p)
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("list", help="the home's models (a table; --json: JSON lines with their metrics)")
    p.add_argument("--json", action="store_true", help="one JSON object per model, metrics included, for scripts")
    add_home_argument(p)
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("register", help="copy an artifact folder into the home")
    p.add_argument("path", type=Path)
    p.add_argument("--promote", action="store_true")
    add_home_argument(p)
    p.set_defaults(func=cmd_register)
    p = sub.add_parser("promote", help="make a model the one that scores (re-embeds the references)")
    p.add_argument("tag")
    add_home_argument(p)
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("pin", help="pin the settings files of a model registered before they were pinned, "
                                   "as they are now (check them first)")
    p.add_argument("tag")
    add_home_argument(p)
    p.set_defaults(func=cmd_pin)


def _home(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from markguard.serving.state.home import Home

    return Home(args.home)


def cmd_init(args: argparse.Namespace) -> int:
    from markguard.serving.registry import ensure_default_model

    artifact = ensure_default_model(_home(args))
    print(json.dumps({"model": artifact.tag, "promoted": True}))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from markguard.serving.registry import list_models

    rows = list_models(_home(args))
    if args.json:
        for row in rows:
            print(json.dumps({"tag": row.tag, "promoted": row.promoted, "created_at": row.created_at.isoformat(),
                              "metrics": row.card.get("metrics", {})}, sort_keys=True), flush=True)
        return 0
    if not rows:
        print("no models yet: `markguard model init` registers the default one", file=sys.stderr)
        return 0
    table = [["*" if row.promoted else "", row.tag, row.created_at.strftime("%Y-%m-%d %H:%M"),
              _headline(row.card.get("metrics", {}))] for row in rows]
    print_table(["", "TAG", "REGISTERED (UTC)", "METRICS"], table)
    return 0


def _headline(metrics: dict) -> str:  # type: ignore[type-arg]
    """Each evaluated split's risk AUC (every metric: --json)."""
    shown = [f"{split} risk AUC {m['risk_auc']:.3f}" for split, m in sorted(metrics.items())
             if isinstance(m, dict) and isinstance(m.get("risk_auc"), float)]
    return ", ".join(shown) or "-"


def cmd_register(args: argparse.Namespace) -> int:
    from markguard.serving.registry import register_artifact

    artifact = register_artifact(_home(args), args.path)
    if args.promote:
        return cmd_promote(argparse.Namespace(home=args.home, tag=artifact.tag))
    print(json.dumps({"model": artifact.tag, "promoted": False}))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from markguard.serving.indexing import sync_index
    from markguard.serving.registry import promote, promoted_artifact

    home = _home(args)
    promote(home, args.tag)
    artifact = promoted_artifact(home)
    index = sync_index(home, artifact, artifact.load_embedder())  # re-embeds references, with progress
    print(json.dumps({"model": artifact.tag, "promoted": True, "references": len(index)}))
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    from markguard.serving.registry import pin_settings

    pinned = pin_settings(_home(args), args.tag)
    print(json.dumps({"model": args.tag, "pinned": "now" if pinned else "already"}))
    return 0
