"""Brand serial patterns, compiled by RE2: matching runs in time linear in the text, whatever the pattern.

A pattern is stored by a tenant and run on every listing photo's OCR text that claims the brand, so
Python's backtracking `re` (where `(a+)+$` takes exponential time) must never see it. RE2 refuses
what it cannot match in linear time (backreferences, look-arounds): such a pattern is refused when
it is set, with the reason.
"""

from __future__ import annotations

import functools

import re2

from markguard.vision.errors import MarkguardError

__all__ = ["PatternError", "SerialPattern", "compile_pattern"]

_MAX_MEM = 8 * 1024 * 1024  # bytes RE2 may use for one compiled pattern (its default, stated)

SerialPattern = re2._Regexp  # noqa: SLF001 - the compiled type, for annotations


class PatternError(MarkguardError):
    """A serial pattern RE2 cannot compile, or one over the length cap."""


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # the reason goes into the error, not to stderr
    options.max_mem = _MAX_MEM
    return options


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str, *, max_chars: int = 256) -> SerialPattern:
    """The RE2 program for `pattern` (`fullmatch`, `search` as in `re`); `PatternError` when refused."""
    if not isinstance(pattern, str) or not pattern:
        raise PatternError("serial pattern must be a non-empty string")
    if len(pattern) > max_chars:
        raise PatternError(f"serial pattern longer than {max_chars} characters")
    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PatternError(f"serial pattern not accepted by RE2 (linear-time matching): {reason[:200]}") from None
