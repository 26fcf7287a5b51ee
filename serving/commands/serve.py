"""`markguard serve`: run the BentoML service on this home."""

from __future__ import annotations

import argparse
import os
import sys

from markguard.serving.cli import add_home_argument
from markguard.serving.lifecycle import supervise
from markguard.serving.settings import get_settings

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve the scoring API (BentoML) on this home")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--workers", type=int, default=None,
                   help="scoring worker processes (default: MARKGUARD_WORKERS or 1), one thread each")
    p.add_argument("--embed-workers", type=int, default=None,
                   help="embedder processes behind adaptive batching (default: MARKGUARD_EMBED_WORKERS, else one per "
                        "core up to 4), each with MARKGUARD_EMBED_THREADS threads (default: cores / processes)")
    p.add_argument("--stop-timeout", type=float, default=get_settings().stop_timeout,
                   help="seconds a SIGTERM/SIGINT leaves in-flight requests before every process of the server is "
                        "killed (default: MARKGUARD_STOP_TIMEOUT or 30)")
    add_home_argument(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from markguard.serving.registry import ensure_default_model
    from markguard.serving.state.home import Home
    from markguard.serving.state.sweep import sweep

    home = Home(args.home)
    ensure_default_model(home)  # prepare once here, not racing in every worker
    sweep(home)  # debris a crash left (older than an hour: nothing in flight)
    os.environ["MARKGUARD_HOME"] = str(home.root)
    if args.workers is not None:
        os.environ["MARKGUARD_WORKERS"] = str(max(1, args.workers))
    if args.embed_workers is not None:
        os.environ["MARKGUARD_EMBED_WORKERS"] = str(max(1, args.embed_workers))
    os.environ.setdefault("BENTOML_HOME", str(home.root / "bentoml"))
    argv = [sys.executable, "-m", "bentoml", "serve", "markguard.serving.service:Markguard",
            "--host", args.host, "--port", str(args.port)]
    # a child tied to this process, not an exec: killed with it, and killed after --stop-timeout on a stop
    return supervise(argv, stop_timeout=max(0.0, args.stop_timeout))
