"""Plain-text tables for people at a terminal (scripts ask for `--json`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

__all__ = ["print_table"]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, file: TextIO | None = None) -> None:
    """Left-aligned columns, two spaces apart; the last column is not padded."""
    out = file or sys.stdout
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for line in (list(headers), *rows):
        cells = [cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=False)] + [line[-1]]
        print("  ".join(cells).rstrip(), file=out, flush=True)
