"""The catalog service: brands and their policies, references and API keys, changed one way.

The CLI (`markguard brand|reference|key ...`) and the HTTP API (`serving/routes/`) both call this
module, so a rule (a threshold order, a checksum name, a cap) is checked once, whoever asks. Who may
ask (roles, tenants) is the caller's business: the API checks keys before it gets here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import select

from markguard.serving.brands import (
    BrandSummary,
    add_brand,
    check_serial_pattern,
    check_wordmarks,
    get_brand,
    list_brands,
    summarize,
)
from markguard.serving.keys import Principal, Role, create_key, revoke_key
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Brand, Reference
from markguard.vision.errors import MarkguardError
from markguard.vision.text import CHECKSUMS

__all__ = ["Catalog", "Policy", "ReferenceInfo", "serial_checksums"]


def serial_checksums() -> tuple[str, ...]:
    """The check-digit schemes a brand may choose (`none`, and every one `vision.text` registers)."""
    return ("none", *sorted(CHECKSUMS))


@dataclasses.dataclass(frozen=True)
class Policy:
    """How a brand is judged: its thresholds (None: the model's), wordmarks and serial rules."""

    name: str
    review_at: float | None
    takedown_at: float | None
    wordmarks: list[str]
    serial_pattern: str | None
    serial_checksum: str | None
    genuine_from_reviews: bool

    @classmethod
    def of(cls, row: Brand) -> Policy:
        return cls(row.name, row.review_at, row.takedown_at, list(row.wordmarks or []), row.serial_pattern,
                   row.serial_checksum, bool(row.genuine_from_reviews))


@dataclasses.dataclass(frozen=True)
class ReferenceInfo:
    id: int
    brand: str
    product: str | None
    kind: str
    sha256: str
    width: int | None
    height: int | None
    source: str | None  # the file name it was enrolled from, never the operator's folders
    created_at: str


_POLICY_FIELDS = ("review_at", "takedown_at", "wordmarks", "serial_pattern", "serial_checksum", "genuine_from_reviews")


class Catalog:
    """One home's catalog, as tenants and operators change it."""

    def __init__(self, home: Home) -> None:
        self.home = home

    # -- brands -------------------------------------------------------------------------------------
    def create_brand(self, name: str, *, wordmarks: list[str] | None = None, **policy: Any) -> Policy:
        """A new brand (409 if it, or a look-alike of it, exists), with any policy fields set at once."""
        with self.home.write_lock(), self.home.sessions.begin() as session:
            row = add_brand(session, name, wordmarks=wordmarks)
            self._apply(row, policy)
            session.flush()
            return Policy.of(row)

    def brands(self) -> list[BrandSummary]:
        with self.home.sessions() as session:
            return list_brands(session)

    def brand(self, name: str) -> BrandSummary:
        with self.home.sessions() as session:
            return summarize(session, get_brand(session, name))

    def policy(self, name: str) -> Policy:
        with self.home.sessions() as session:
            return Policy.of(get_brand(session, name))

    def update_policy(self, name: str, **changes: Any) -> Policy:
        """Change the given policy fields (a field left out is kept; `serial_pattern` '' or None clears it,
        `serial_checksum` None is `none`, `genuine_from_reviews` None is kept)."""
        with self.home.write_lock(), self.home.sessions.begin() as session:
            row = get_brand(session, name)
            self._apply(row, changes)
            return Policy.of(row)

    @staticmethod
    def _apply(row: Brand, changes: dict[str, Any]) -> None:
        unknown = set(changes) - set(_POLICY_FIELDS)
        if unknown:
            raise TypeError(f"not policy fields: {sorted(unknown)}")
        if "serial_checksum" in changes:
            checksum = changes["serial_checksum"] or "none"
            if checksum not in serial_checksums():
                raise MarkguardError(f"serial_checksum must be one of {list(serial_checksums())}")
            row.serial_checksum = checksum
        if "serial_pattern" in changes:
            row.serial_pattern = check_serial_pattern(changes["serial_pattern"])
        if "wordmarks" in changes:
            row.wordmarks = check_wordmarks(changes["wordmarks"] or [])
        for field in ("review_at", "takedown_at"):
            if field in changes:
                value = changes[field]
                if value is not None and not 0.0 <= value <= 1.0:
                    raise MarkguardError(f"{field} must be between 0 and 1")
                setattr(row, field, value)
        if row.review_at is not None and row.takedown_at is not None and row.review_at > row.takedown_at:
            raise MarkguardError("review_at must not exceed takedown_at")
        if changes.get("genuine_from_reviews") is not None:
            row.genuine_from_reviews = bool(changes["genuine_from_reviews"])

    # -- references ---------------------------------------------------------------------------------
    def references(self, brand: str, *, after: int = 0, limit: int | None = None) -> list[ReferenceInfo]:
        """A brand's references, oldest first (keyset pages: the last id seen as `after`)."""
        from markguard.serving.enroll import public_label  # (enroll, like indexing, imports the model code)

        with self.home.sessions() as session:
            row = get_brand(session, brand)
            query = select(Reference).where(Reference.brand_id == row.id, Reference.id > after).order_by(Reference.id)
            if limit is not None:
                query = query.limit(limit)
            return [ReferenceInfo(r.id, row.name, r.product.name if r.product else None, str(r.kind.value),
                                  r.sha256, r.width, r.height, public_label(r.source), r.created_at.isoformat())
                    for r in session.scalars(query)]

    def delete_references(self, brand: str, ids: list[int]) -> list[int]:
        from markguard.serving.references import delete_references

        return delete_references(self.home, brand=brand, ids=ids)

    # -- keys ---------------------------------------------------------------------------------------
    def create_key(self, *, role: Role, brand: str | None = None, label: str = "") -> tuple[str, Principal]:
        return create_key(self.home, role=role, brand=brand, label=label)

    def revoke_key(self, key_id: str) -> None:
        revoke_key(self.home, key_id)
