"""Deleting references: catalog rows and every model's index vectors, in one locked step."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from markguard.serving.brands import get_brand
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Reference
from markguard.vision.errors import NotFound
from markguard.vision.index import ReferenceIndex, read_manifest

__all__ = ["delete_references"]


def delete_references(home: Home, *, brand: str, ids: list[int]) -> list[int]:
    """Delete `ids` of `brand`; an id of another brand is reported as unknown, never touched."""
    with home.write_lock(), home.sessions() as session:
        brand_row = get_brand(session, brand)
        rows = list(session.scalars(select(Reference).where(Reference.id.in_(ids), Reference.brand_id == brand_row.id)))
        unknown = sorted(set(ids) - {r.id for r in rows})
        if unknown:
            raise NotFound(f"brand {brand_row.name!r} has no reference {', '.join(map(str, unknown))}")
        for row in rows:
            session.delete(row)
        session.flush()
        doomed = np.array([r.id for r in rows], dtype=np.int64)
        for directory in sorted((home.root / "index").iterdir()):
            if directory.is_dir() and read_manifest(directory) is not None:
                index = ReferenceIndex.load(directory)
                if index.remove(doomed):
                    index.save(directory, extra={"model_tag": directory.name})
        session.commit()
    return sorted(int(i) for i in doomed)
