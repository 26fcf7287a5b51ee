"""Brand-specific serial numbers for printed labels: a prefix, digits and a Luhn check digit.

Each brand's format is fixed by a hash of its name, so the same brand always prints the same kind
of serial and a checker can tell a well-formed serial from a counterfeiter's guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from markguard.datasets.splits import unit_hash

__all__ = ["SerialFormat", "serial_format", "luhn_digit"]

_SEPARATORS = ("-", "", "/", " ")


@dataclass(frozen=True)
class SerialFormat:
    """`PREFIX` + separator + `digits` digits, the last of which is a Luhn check digit."""

    prefix: str
    digits: int
    separator: str

    @property
    def pattern(self) -> str:
        return f"^{re.escape(self.prefix)}{re.escape(self.separator)}[0-9]{{{self.digits}}}$"

    def make(self, rng: np.random.Generator, *, valid: bool = True) -> str:
        """A serial in this format; with `valid=False` its check digit is wrong (a forged serial)."""
        body = "".join(str(int(d)) for d in rng.integers(0, 10, self.digits - 1))
        check = luhn_digit(body)
        if not valid:
            check = (check + int(rng.integers(1, 10))) % 10
        return f"{self.prefix}{self.separator}{body}{check}"

    def check(self, serial: str) -> bool:
        """True when `serial` has this format and a correct check digit."""
        if not re.match(self.pattern, serial):
            return False
        digits = serial[-self.digits :]
        return luhn_digit(digits[:-1]) == int(digits[-1])


def luhn_digit(body: str) -> int:
    """The Luhn check digit that makes `body + digit` pass the Luhn test."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return (10 - total % 10) % 10


def serial_format(brand: str) -> SerialFormat:
    """The brand's serial format: letters from its name, 7-11 digits, a separator, all by hash."""
    letters = re.sub(r"[^A-Z]", "", brand.upper()) or "MG"
    size = 2 + int(unit_hash("serial-prefix", brand) * 2)
    prefix = (letters + "XX")[:size]
    digits = 7 + int(unit_hash("serial-digits", brand) * 5)
    sep = _SEPARATORS[int(unit_hash("serial-sep", brand) * len(_SEPARATORS))]
    return SerialFormat(prefix=prefix, digits=digits, separator=sep)
