"""Alliance sharing: a brand opts in to share its known-fake references (all, or a chosen subset).

Off by default and revocable. Only `kind=counterfeit` references of the sharing brand can be shared;
genuine references and the serial registry never are. `shared_known_fakes` is what scoring would
read: the shared references' ids, each attributed to the brand that shared it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from markguard.serving.brands import get_brand
from markguard.serving.intelligence.tables import BrandSharing
from markguard.serving.state.schema import Brand, Reference, ReferenceKind
from markguard.vision.errors import MarkguardError

__all__ = ["SharedFake", "share_known_fakes", "revoke_sharing", "shared_known_fakes", "sharing_status"]


@dataclasses.dataclass(frozen=True)
class SharedFake:
    reference_id: int
    brand: str  # who shared it


def share_known_fakes(session: Session, brand: str, *, reference_ids: list[int] | None = None) -> BrandSharing:
    """Opt `brand` in: its counterfeit references (`reference_ids`: only these) become alliance evidence."""
    row = get_brand(session, brand)
    if reference_ids is not None:
        wanted = sorted(set(reference_ids))
        found = set(session.scalars(select(Reference.id).where(
            Reference.id.in_(wanted), Reference.brand_id == row.id, Reference.kind == ReferenceKind.COUNTERFEIT)))
        refused = [i for i in wanted if i not in found]
        if refused:
            raise MarkguardError(f"not known-fake references of {row.name}: {refused}")
        reference_ids = wanted
    sharing = session.get(BrandSharing, row.id) or BrandSharing(brand_id=row.id)
    sharing.shared, sharing.reference_ids, sharing.updated_at = True, reference_ids, dt.datetime.now(dt.UTC)
    session.add(sharing)
    return sharing


def revoke_sharing(session: Session, brand: str) -> None:
    """Opt `brand` out: its references stop being alliance evidence at once."""
    row = get_brand(session, brand)
    sharing = session.get(BrandSharing, row.id)
    if sharing is not None:
        sharing.shared, sharing.reference_ids, sharing.updated_at = False, None, dt.datetime.now(dt.UTC)


def shared_known_fakes(session: Session, *, exclude_brand_id: int | None = None) -> list[SharedFake]:
    """Every reference shared with the alliance now (a brand's own are left out with `exclude_brand_id`)."""
    out = []
    query = (select(BrandSharing, Brand.name).join(Brand, Brand.id == BrandSharing.brand_id)
             .where(BrandSharing.shared.is_(True)))
    for sharing, name in session.execute(query):
        if sharing.brand_id == exclude_brand_id:
            continue
        refs = select(Reference.id).where(Reference.brand_id == sharing.brand_id,
                                          Reference.kind == ReferenceKind.COUNTERFEIT)
        if sharing.reference_ids is not None:
            refs = refs.where(Reference.id.in_(sharing.reference_ids))
        out += [SharedFake(ref_id, name) for ref_id in session.scalars(refs.order_by(Reference.id))]
    return out


def sharing_status(session: Session) -> list[dict[str, object]]:
    rows = session.execute(select(BrandSharing, Brand.name).join(Brand, Brand.id == BrandSharing.brand_id)
                           .order_by(Brand.name))
    return [{"brand": name, "shared": s.shared, "references": "all" if s.reference_ids is None else s.reference_ids,
             "updated_at": s.updated_at.isoformat()} for s, name in rows]
