"""Deleting references: catalog rows, then every model's index vectors, then blobs nothing else uses."""

from __future__ import annotations

from sqlalchemy import select

from markguard.serving.brands import get_brand
from markguard.serving.indexing import commit_then_index
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Reference
from markguard.serving.state.sweep import drop_unreferenced_blobs
from markguard.vision.errors import NotFound

__all__ = ["delete_references"]


def delete_references(home: Home, *, brand: str, ids: list[int]) -> list[int]:
    """Delete `ids` of `brand`; an id of another brand is reported as unknown, never touched.

    Write-ahead like enroll: the catalog commit is the delete; the indexes and the blobs follow, and a
    crash between them leaves what `reconcile` (indexes) and `markguard home sweep` (blobs) clean up.
    """
    with home.write_lock(), home.sessions() as session:
        brand_row = get_brand(session, brand)
        rows = list(session.scalars(select(Reference).where(Reference.id.in_(ids), Reference.brand_id == brand_row.id)))
        unknown = sorted(set(ids) - {r.id for r in rows})
        if unknown:
            raise NotFound(f"brand {brand_row.name!r} has no reference {', '.join(map(str, unknown))}")
        doomed = sorted(r.id for r in rows)
        shas = {r.sha256 for r in rows}
        for row in rows:
            session.delete(row)
        session.flush()
        commit_then_index(home, session, removed=doomed)
        drop_unreferenced_blobs(home, shas)
    return doomed
