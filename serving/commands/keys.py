"""`markguard key create|revoke|generate`: API keys for the HTTP service."""

from __future__ import annotations

import argparse
import json

from markguard.serving.cli import add_home_argument

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from markguard.serving.keys import Role

    key = subparsers.add_parser("key", help="create and revoke API keys")
    sub = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    p = sub.add_parser("create", help="create a key; it is printed once and stored only as a hash")
    p.add_argument("--role", required=True, choices=[r.value for r in Role])
    p.add_argument("--brand", help="the brand a brand key belongs to")
    p.add_argument("--label", default="", help="a note for whoever lists keys later")
    add_home_argument(p)
    p.set_defaults(func=cmd_create)
    p = sub.add_parser("generate", help="print a new key for MARKGUARD_ADMIN_KEY (stores nothing: the service "
                       "creates it as the first admin key at start-up)")
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("revoke", help="revoke a key by its id (the part after mg_)")
    p.add_argument("key_id")
    add_home_argument(p)
    p.set_defaults(func=cmd_revoke)


def cmd_create(args: argparse.Namespace) -> int:
    from markguard.serving.catalog import Catalog
    from markguard.serving.keys import Role
    from markguard.serving.state.home import Home

    key, principal = Catalog(Home(args.home)).create_key(role=Role(args.role), brand=args.brand, label=args.label)
    print(json.dumps({"key": key, "key_id": principal.key_id, "role": principal.role.value, "brand": principal.brand_name}))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from markguard.serving.bootstrap import generate_key

    print(generate_key())
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from markguard.serving.catalog import Catalog
    from markguard.serving.state.home import Home

    Catalog(Home(args.home)).revoke_key(args.key_id)
    print(json.dumps({"revoked": args.key_id}))
    return 0
