"""vision: text — OCR lines → wordmark spelling evidence and serial candidates (pure functions, no OCR).

A difference that OCR confusion explains (O/0, I/l/1, S/5, B/8, Z/2, rn/m, vv/w, case) is not a
misspelling; a small edit it does not explain is, and a misspelt wordmark is strong counterfeit
evidence. Serials are normalised for OCR confusions where the brand's pattern wants the other class
(a letter where it wants a digit and the reverse), then checked by the pattern and the check digit.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import itertools
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from markguard.vision.patterns import PatternError, SerialPattern, compile_pattern

__all__ = [
    "WordmarkMatch",
    "WordmarkHit",
    "match_wordmarks",
    "CHECKSUMS",
    "register_checksum",
    "checksum_ok",
    "check_digit",
    "SerialCandidate",
    "extract_serials",
    "normalize_serial",
    "serial_key",
    "pattern_alphabet",
]

# ----------------------------------------------------------------------------------------------
# Wordmarks
# ----------------------------------------------------------------------------------------------

# Characters EasyOCR confuses, folded to one representative (after casefolding).
_FOLD = str.maketrans({"0": "o", "1": "l", "i": "l", "|": "l", "!": "l", "5": "s", "8": "b", "2": "z"})
_FOLD_SEQUENCES = (("rn", "m"), ("vv", "w"))


class WordmarkMatch(enum.StrEnum):
    EXACT = "exact"  # the brand's wordmark, up to OCR confusions
    NEAR_MISS = "near_miss"  # a small edit that OCR confusion does not explain: a misspelling
    OTHER_BRAND = "other_brand"  # another brand's wordmark


@dataclasses.dataclass(frozen=True)
class WordmarkHit:
    text: str  # the OCR text that matched (one or a few adjacent words of a line)
    brand: str  # whose wordmark it is (or nearly is)
    match: WordmarkMatch
    distance: int  # edits between the confusion-folded texts: 0 for exact and other_brand


def _skeleton(text: str) -> str:
    """Casefolded, letters and digits only, OCR confusions folded: equal skeletons are one spelling."""
    folded = "".join(c for c in text.casefold() if c.isalnum() or c in "|!").translate(_FOLD)
    for seq, rep in _FOLD_SEQUENCES:
        folded = folded.replace(seq, rep)
    return folded


def _max_edits(length: int) -> int:
    """How many unexplained edits still make a near miss: none for short marks (too many real words)."""
    return 0 if length < 5 else 1 if length < 9 else 2


def edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions, adjacent transpositions."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]


def _spans(line: str, max_words: int) -> Iterable[tuple[int, int, str]]:
    words = line.split()
    for n in range(1, max_words + 1):
        for i in range(len(words) - n + 1):
            yield i, i + n, " ".join(words[i : i + n])


def match_wordmarks(
    texts: Sequence[str], *, brand: str | None, wordmarks: Mapping[str, Sequence[str]]
) -> list[WordmarkHit]:
    """Each OCR line's words against every brand's wordmarks (`wordmarks`: brand name → its marks).

    Near misses are judged against the claimed `brand` only (all brands when it is None); another
    brand's wordmark counts when it is read exactly. Within a line, words already matched are not
    matched again, and an exact match beats a near miss.
    """
    own = [brand] if brand is not None else list(wordmarks)
    marks = [(b, _skeleton(m)) for b, ms in wordmarks.items() for m in ms if _skeleton(m)]
    max_words = max((len(m.split()) for ms in wordmarks.values() for m in ms), default=1) + 1
    hits: list[WordmarkHit] = []
    for line in texts:
        found: list[tuple[int, int, int, WordmarkHit]] = []  # (rank, start, end, hit)
        for start, end, span in _spans(line, max_words):
            skel = _skeleton(span)
            if not skel:
                continue
            for owner, mark in marks:
                if skel == mark:
                    kind = WordmarkMatch.EXACT if owner in own else WordmarkMatch.OTHER_BRAND
                    found.append((0, start, end, WordmarkHit(span, owner, kind, 0)))
                elif owner in own and abs(len(skel) - len(mark)) <= _max_edits(len(mark)):
                    distance = edit_distance(skel, mark)
                    if 0 < distance <= _max_edits(len(mark)):
                        found.append((distance, start, end, WordmarkHit(span, owner, WordmarkMatch.NEAR_MISS, distance)))
        taken: set[int] = set()
        for _, start, end, hit in sorted(found, key=lambda f: (f[0], -(f[2] - f[1]), f[1])):
            words = set(range(start, end))
            if words & taken:
                continue
            taken |= words
            hits.append(hit)
    return hits


# ----------------------------------------------------------------------------------------------
# Check digits
# ----------------------------------------------------------------------------------------------

# name → function computing the check character of a payload of digits
CHECKSUMS: dict[str, Callable[[str], str]] = {}


def register_checksum(name: str) -> Callable[[Callable[[str], str]], Callable[[str], str]]:
    """Make a check-digit scheme usable by name (tests parametrize over `CHECKSUMS`)."""

    def wrap(fn: Callable[[str], str]) -> Callable[[str], str]:
        if name in CHECKSUMS:
            raise ValueError(f"checksum {name!r} registered twice")
        CHECKSUMS[name] = fn
        return fn

    return wrap


@register_checksum("luhn")
def _luhn(payload: str) -> str:
    total = 0
    for i, c in enumerate(reversed(payload)):
        d = int(c) * (2 if i % 2 == 0 else 1)  # the digit left of the check digit is doubled
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


@register_checksum("gs1")
def _gs1(payload: str) -> str:
    """GTIN/SSCC: weights 3, 1, 3, … from the digit left of the check digit."""
    total = sum(int(c) * (3 if i % 2 == 0 else 1) for i, c in enumerate(reversed(payload)))
    return str((10 - total % 10) % 10)


@register_checksum("iso7064-mod11-2")
def _iso7064_mod11_2(payload: str) -> str:
    """ISO 7064 MOD 11-2 (ISNI, ORCID): check value 10 is written 'X'."""
    p = 0
    for c in payload:
        p = (p + int(c)) * 2 % 11
    value = (12 - p) % 11
    return "X" if value == 10 else str(value)


def check_digit(scheme: str, payload: str) -> str:
    """The check character that `scheme` appends to the digit string `payload`."""
    if scheme not in CHECKSUMS:
        raise ValueError(f"unknown checksum {scheme!r}; known: {sorted(CHECKSUMS)}")
    if not payload.isdigit() or not payload.isascii():
        raise ValueError(f"payload must be digits, got {payload!r}")
    return CHECKSUMS[scheme](payload)


def checksum_ok(scheme: str, serial: str) -> bool | None:
    """Whether the serial's digits end in a valid check digit; None when the scheme is `none`.

    The check runs over the serial's digits (letters and separators are skipped); for ISO 7064 a
    final 'X' is the check character.
    """
    if scheme in ("none", "", None):
        return None
    if scheme not in CHECKSUMS:
        raise ValueError(f"unknown checksum {scheme!r}; known: {sorted(CHECKSUMS)}")
    chars = [c for c in serial if c.isascii() and c.isdigit()]
    alnum = [c for c in serial if c.isalnum()]
    if scheme == "iso7064-mod11-2" and alnum and alnum[-1] in "xX":
        chars.append("X")
    if len(chars) < 2:
        return False
    return CHECKSUMS[scheme]("".join(chars[:-1])) == chars[-1].upper()


# ----------------------------------------------------------------------------------------------
# Serials
# ----------------------------------------------------------------------------------------------

# Letter ↔ digit confusions of OCR, tried where the pattern wants the other class.
_TO_DIGIT = {"O": "0", "D": "0", "Q": "0", "I": "1", "L": "1", "S": "5", "B": "8", "Z": "2", "G": "6", "A": "4", "T": "7"}
_TO_LETTER = {"0": "OD", "1": "IL", "5": "S", "8": "B", "2": "Z", "6": "G", "4": "A", "7": "T"}
_ALTERNATES = {k: tuple(v) for k, v in _TO_DIGIT.items()} | {k: tuple(v) for k, v in _TO_LETTER.items()}
_SPLIT = re.compile(r"[\s:;,|]+")
_NOT_ALNUM = re.compile(r"[^0-9A-Za-z]+")
_MAX_TRIES = 20_000  # regex full-matches per candidate: bounds the substitution search
_MAX_STORED_PATTERN = 4096  # characters: new patterns are capped lower when set (serving.caps)


@dataclasses.dataclass(frozen=True)
class SerialCandidate:
    text: str  # as OCR read it
    normalized: str  # after confusion fixes (the text itself when no pattern fits)
    format_ok: bool | None  # None: the brand registered no pattern
    checksum_ok: bool | None  # None: the brand registered no check digit
    substitutions: int  # confusion fixes applied
    line: int  # index of the OCR line it came from


def serial_key(text: str) -> str:
    """The form a serial is hashed in: letters and digits only, upper case (separators and case ignored)."""
    return _NOT_ALNUM.sub("", text).upper()


def _compiled(pattern: str) -> SerialPattern:
    """The brand's pattern on RE2 (linear-time matching: a tenant's pattern cannot stall a worker)."""
    return compile_pattern(pattern, max_chars=_MAX_STORED_PATTERN)


@functools.lru_cache(maxsize=64)
def pattern_alphabet(pattern: str) -> str:
    """The characters a pattern's matches may contain (for an OCR allowlist); letters and digits if unsure."""
    fallback = string.ascii_uppercase + string.digits
    try:
        from re import _parser  # type: ignore[attr-defined]

        chars = _walk(_parser.parse(pattern), _parser)
    except Exception:  # an exotic pattern: the safe superset
        return fallback
    return "".join(sorted(chars)) if chars else fallback


def _walk(tree: Any, p: Any) -> set[str]:
    out: set[str] = set()
    printable = {c for c in string.printable if not c.isspace() or c == " "}
    for op, av in tree:
        if op is p.LITERAL:
            out.add(chr(av))
        elif op is p.IN:
            if any(o is p.NEGATE for o, _ in av):
                raise ValueError("negated class")
            for o, a in av:
                if o is p.LITERAL:
                    out.add(chr(a))
                elif o is p.RANGE:
                    out |= {chr(c) for c in range(a[0], a[1] + 1)}
                elif o is p.CATEGORY and a is p.CATEGORY_DIGIT:
                    out |= set(string.digits)
                elif o is p.CATEGORY and a is p.CATEGORY_WORD:
                    out |= set(string.ascii_letters + string.digits + "_")
                else:
                    raise ValueError("unsupported class")
        elif op in (p.MAX_REPEAT, p.MIN_REPEAT, p.POSSESSIVE_REPEAT):
            out |= _walk(av[2], p)
        elif op is p.SUBPATTERN:
            out |= _walk(av[-1], p)
        elif op is p.BRANCH:
            for branch in av[1]:
                out |= _walk(branch, p)
        elif op is p.AT:
            continue
        elif op is p.ANY:
            out |= printable
        else:
            raise ValueError(f"unsupported {op}")
    return out


def normalize_serial(text: str, *, pattern: str, max_substitutions: int = 4) -> tuple[str, int] | None:
    """The fewest-confusion-fixes reading of `text` that fully matches `pattern`, and the fix count.

    Upper-casing is free when the pattern rejects the text as read; each letter↔digit swap costs one.
    None when no reading within `max_substitutions` (and a third of the length) matches.
    """
    regex = _compiled(pattern)
    if regex.fullmatch(text):
        return text, 0
    base = text.upper()
    if regex.fullmatch(base):
        return base, 0
    spots = [i for i, c in enumerate(base) if c in _ALTERNATES]
    limit = min(max_substitutions, max(1, len(base) // 3), len(spots))
    tries = 0
    chars = list(base)
    for k in range(1, limit + 1):
        for positions in itertools.combinations(spots, k):
            for choice in itertools.product(*(_ALTERNATES[base[i]] for i in positions)):
                tries += 1
                if tries > _MAX_TRIES:
                    return None
                for i, c in zip(positions, choice, strict=True):
                    chars[i] = c
                candidate = "".join(chars)
                for i in positions:
                    chars[i] = base[i]
                if regex.fullmatch(candidate):
                    return candidate, k
    return None


@functools.lru_cache(maxsize=64)
def _widths(pattern: str) -> range:
    try:
        from re import _parser  # type: ignore[attr-defined]

        lo, hi = _parser.parse(pattern).getwidth()
    except Exception:
        return range(0)
    return range(lo, min(hi, lo + 3) + 1) if 4 <= lo <= 40 else range(0)


def _windows(
    line: str, line_no: int, *, pattern: str, checksum: str, max_substitutions: int
) -> list[tuple[tuple[int, bool, int], int, int, SerialCandidate]]:
    """The line's last letters and digits, as wide as the pattern: a serial run into its label ("SNAB123…")."""
    key = serial_key(line)
    out = []
    for width in _widths(pattern):
        if len(key) >= width:
            i = len(key) - width
            norm = normalize_serial(key[i : i + width], pattern=pattern, max_substitutions=max_substitutions)
            if norm is not None:
                ok = checksum_ok(checksum, norm[0])
                cand = SerialCandidate(line, norm[0], True, ok, norm[1], line_no)
                out.append(((norm[1], ok is False, -len(norm[0])), i, i + width, cand))
    return out


def _separators(pattern: str) -> list[str]:
    alphabet = pattern_alphabet(pattern)
    return [""] + [c for c in " -/." if c in alphabet]


def _serial_like(token: str) -> bool:
    key = serial_key(token)
    digits = sum(c.isdigit() for c in key)
    return len(key) >= 6 and digits >= 4 and digits >= 0.4 * len(key)


def extract_serials(
    texts: Sequence[str], *, pattern: str | None, checksum: str = "none", max_substitutions: int = 4, limit: int = 8
) -> list[SerialCandidate]:
    """Serial candidates in OCR lines: words and joins of up to 3 adjacent words, normalised by the pattern.

    Per line the best readings win (fewest fixes, then a valid check digit, then the longest), and
    words they cover are not read again; serial-like words no reading fits are reported with
    `format_ok=False` (an impossible format is evidence too). Without a pattern, serial-like words
    are reported as read with `format_ok=None`.
    """
    if pattern:
        try:
            _compiled(pattern)
        except PatternError:  # stored before patterns were checked by RE2: judged as no pattern
            pattern = None
    out: dict[str, SerialCandidate] = {}
    for line_no, line in enumerate(texts):
        words = [w for w in _SPLIT.split(line) if w]
        found: list[tuple[tuple[int, bool, int], int, int, SerialCandidate]] = []
        if pattern:
            for n in range(1, min(3, len(words)) + 1):
                for i in range(len(words) - n + 1):
                    for sep in _separators(pattern) if n > 1 else [""]:
                        raw = sep.join(words[i : i + n])
                        for variant in dict.fromkeys([raw, re.sub(r"[^0-9A-Za-z]", "", raw)]):
                            norm = normalize_serial(variant, pattern=pattern, max_substitutions=max_substitutions)
                            if norm is None:
                                continue
                            text = " ".join(words[i : i + n])
                            ok = checksum_ok(checksum, norm[0])
                            cand = SerialCandidate(text, norm[0], True, ok, norm[1], line_no)
                            found.append(((norm[1], ok is False, -len(norm[0])), i, i + n, cand))
        if pattern and not found:
            found = _windows(line, line_no, pattern=pattern, checksum=checksum, max_substitutions=max_substitutions)
            found = [(rank, 0, len(words), cand) for rank, _, _, cand in found]
        taken: set[int] = set()
        for _, start, end, cand in sorted(found, key=lambda f: f[0]):
            span = set(range(start, end))
            if not span & taken:
                taken |= span
                out.setdefault(cand.normalized, cand)
        for i, word in enumerate(words):
            if i in taken or not _serial_like(word):
                continue
            key = serial_key(word)
            cand = SerialCandidate(word, key, False if pattern else None, checksum_ok(checksum, key), 0, line_no)
            out.setdefault(cand.normalized, cand)
    ranked = sorted(out.values(), key=lambda c: (c.format_ok is not True, c.substitutions, c.checksum_ok is False))
    return ranked[:limit]
