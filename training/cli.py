"""`markguard train` and `markguard evaluate` (the scripts' own parsers' options, run in-process)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from markguard.training.args import add_evaluate_arguments, add_train_arguments

    p = subparsers.add_parser("train", help="train the embedder, calibrate the fusion, write a model artifact")
    add_train_arguments(p)
    p.set_defaults(func=_train)
    p = subparsers.add_parser("evaluate", help="evaluate a model artifact on a dataset manifest")
    add_evaluate_arguments(p)
    p.set_defaults(func=_evaluate)


def _train(args: argparse.Namespace) -> int:
    from markguard.training.train import run

    return run(args)


def _evaluate(args: argparse.Namespace) -> int:
    from markguard.training.evaluate import run

    return run(args)
