"""`markguard config show`: the effective settings (every `MARKGUARD_*` variable), secrets masked."""

from __future__ import annotations

import argparse
import json
import os

from markguard.serving.tables import print_table

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    config = subparsers.add_parser("config", help="show the effective configuration")
    sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    p = sub.add_parser("show", help="every MARKGUARD_* setting, its value and where it came from (secrets masked)")
    p.add_argument("--json", action="store_true", help="one JSON object of the values, for scripts")
    p.set_defaults(func=cmd_show)


def cmd_show(args: argparse.Namespace) -> int:
    from markguard.serving.settings import Settings, get_settings, masked

    values = masked(get_settings())
    if args.json:
        print(json.dumps(values, sort_keys=True))
        return 0
    rows = []
    for name, field in Settings.model_fields.items():
        variable = f"MARKGUARD_{name.upper()}"
        value = values[name]
        names = [variable, "MARKGUARD_SHARED_DATA"] if name == "data" else [variable]  # the old name still works
        shown = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        source = "environment" if any(os.environ.get(n) for n in names) else "default"
        rows.append([variable, shown, source, field.description or ""])
    print_table(["VARIABLE", "VALUE", "FROM", "MEANING"], rows)
    return 0
