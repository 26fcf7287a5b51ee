"""What an error may show a caller: no server paths, no heap addresses, no value echoed in full.

Every API error body goes through `public_message` (the app's error handlers), so a message built from
a library's text (PIL names its `BytesIO`), a temporary upload path or a tenant's 100 kB brand name
still answers with a short line that says what was wrong.
"""

from __future__ import annotations

import re

__all__ = ["public_message", "MAX_MESSAGE", "MAX_ECHO"]

MAX_MESSAGE = 300  # characters of an error message
MAX_ECHO = 60  # characters of a rejected value quoted back

_ADDRESS = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")
_ABSOLUTE = re.compile(r"(?<![\w.~-])(?:/[^\s'\"/:!,;()<>]+)+/([^\s'\"/:!,;()<>]*)")
_QUOTED = re.compile(r"'([^'\n]*)'|\"([^\"\n]*)\"")


def public_message(text: str) -> str:
    """`text` without heap addresses and folders (a path keeps its last part), quoted values cut to
    `MAX_ECHO` characters, the whole to `MAX_MESSAGE`."""
    text = _ADDRESS.sub(lambda m: f"<{m.group(1).rsplit('.', 1)[-1]}>", str(text))
    text = _ABSOLUTE.sub(lambda m: m.group(1) or "…", text)
    text = _QUOTED.sub(_cut_quoted, text)
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _cut_quoted(match: re.Match[str]) -> str:
    quote = "'" if match.group(1) is not None else '"'
    value = match.group(1) if match.group(1) is not None else match.group(2)
    if len(value) <= MAX_ECHO:
        return match.group(0)
    return f"{quote}{value[: MAX_ECHO - 1]}…{quote}"
