"""`markguard train`, `markguard evaluate` and `markguard calibrate` (the scripts' own parsers' options, run in-process)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    from markguard.training.args import add_calibrate_arguments, add_evaluate_arguments, add_train_arguments

    p = subparsers.add_parser("train", help="train the embedder, calibrate the fusion, write a model artifact")
    add_train_arguments(p)
    p.set_defaults(func=_train)
    p = subparsers.add_parser("evaluate", help="evaluate a model artifact on a dataset manifest")
    add_evaluate_arguments(p)
    p.set_defaults(func=_evaluate)
    p = subparsers.add_parser("calibrate", help="recalibrate a model artifact's fusion on the calibration sets (no training)")
    add_calibrate_arguments(p)
    p.set_defaults(func=_calibrate)


def _train(args: argparse.Namespace) -> int:
    from markguard.training.train import run

    return run(args)


def _evaluate(args: argparse.Namespace) -> int:
    from markguard.training.evaluate import run

    return run(args)


def _calibrate(args: argparse.Namespace) -> int:
    from markguard.training.recalibrate import run

    return run(args)
