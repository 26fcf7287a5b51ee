"""`markguard demo`: a small real catalog for a first run — the grocery brands and their products.

Enrolls each product's official catalogue ("iconic") image from the shared GroceryStore packages,
then creates a platform API key for trying the service. Safe to run again: existing brands and
references are kept (duplicates are skipped), and each run prints a new key.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from markguard.serving.cli import add_home_argument

__all__ = ["register"]

def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="enroll the grocery demo catalog and print an API key")
    p.add_argument("--data", type=Path, default=None,
                   help="the shared data folder (default: $MARKGUARD_DATA or ../shared/data)")
    p.add_argument("--no-key", action="store_true", help="do not create an API key")
    p.add_argument("--url", default="http://127.0.0.1:3000", help="where the service will listen (for the example)")
    add_home_argument(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from markguard.datasets.grocery import brand_of
    from markguard.serving.brands import add_brand, get_brand
    from markguard.serving.enroll import collect_inputs, enroll
    from markguard.serving.keys import Role, create_key
    from markguard.serving.registry import ensure_default_model
    from markguard.serving.settings import get_settings
    from markguard.serving.state.home import Home
    from markguard.vision.errors import MarkguardError, NotFound

    if args.data is None:
        args.data = get_settings().data
    iconic = sorted((args.data / "grocery-packages" / "iconic" / "Packages").glob("*/*/*_Iconic.jpg"))
    if not iconic:
        raise MarkguardError(f"{args.data}: no grocery-packages/iconic images found (set --data)")
    home = Home(args.home)
    artifact = ensure_default_model(home)
    model = artifact.load_embedder()
    with home.write_lock(), home.sessions.begin() as session:
        for brand in sorted({brand_of(p.parent.name) for p in iconic}):
            try:
                get_brand(session, brand)
            except NotFound:
                add_brand(session, brand)
    added = 0
    for path in tqdm(iconic, desc="demo catalog", unit="product"):
        report = enroll(home, artifact, model, brand=brand_of(path.parent.name), product=path.parent.name,
                        inputs=collect_inputs([path]))
        added += len(report.added)
    summary: dict[str, object] = {"products": len(iconic), "added": added, "model": artifact.tag, "home": str(home.root)}
    if not args.no_key:
        key, _ = create_key(home, role=Role.PLATFORM, label="demo")
        summary["api_key"] = key
        photo = args.data / "grocery-packages/val/Packages/Milk/Arla-Standard-Milk/Arla-Standard-Milk_001.jpg"
        print(
            f"\nmarkguard demo: {len(iconic)} products enrolled with model {artifact.tag}\n"
            f"API key (shown once): {key}\n"
            f"Try:\n  curl -s -X POST {args.url}/v1/score -H 'Authorization: Bearer {key}' \\\n"
            f"       -F image=@{photo} -F brand=Arla\n",
            file=sys.stderr,
        )
    print(json.dumps(summary))
    return 0
