"""What the brand page reads from the catalog beyond `serving.listings`: the reference gallery."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from markguard.serving.state.schema import Brand, Product, Reference

__all__ = ["brand_gallery"]


def brand_gallery(session: Session, brand: Brand) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The brand's references by product ("(any product)": the brand as a whole), then by kind."""
    rows = session.execute(select(Reference, Product.name).outerjoin(Product, Product.id == Reference.product_id)
                           .where(Reference.brand_id == brand.id).order_by(Product.name, Reference.id)).all()
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for ref, product in rows:
        kinds = out.setdefault(product or "(any product)", {"genuine": [], "counterfeit": []})
        kinds[ref.kind.value].append({"id": ref.id, "width": ref.width, "height": ref.height,
                                      "source": ref.source.rsplit("/", 1)[-1][-80:]})
    return out
