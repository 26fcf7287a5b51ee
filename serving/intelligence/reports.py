"""Transparency reports: figures for a period, computed from the catalog, as JSON, HTML and a PDF of charts.

Every figure is a query over the catalog (listings scored in [from, to), reviews made in it, rings
seen in it, references enrolled in it); nothing is typed in. `brand_id` cuts every figure to one
brand (a brand key's report): other brands' listings, reviews and references are not counted, and
rings count only when they touch the brand.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import statistics
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from markguard.serving.intelligence.tables import ListingEvidence, Ring
from markguard.serving.reviews import Review
from markguard.serving.state.schema import Brand, Listing, Reference

__all__ = ["build_report", "write_report"]


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _week(value: dt.datetime) -> str:
    year, week, _ = value.isocalendar()
    return f"{year}-W{week:02d}"


def build_report(session: Session, *, start: dt.datetime, end: dt.datetime, brand_id: int | None = None) -> dict[str, Any]:
    """The report's figures for listings scored in [start, end)."""
    names = dict(session.execute(select(Brand.id, Brand.name)).tuples().all())
    query = select(Listing).where(Listing.scored_at >= start, Listing.scored_at < end)
    if brand_id is not None:
        query = query.where(Listing.brand_id == brand_id)
    listings = session.scalars(query.order_by(Listing.id)).all()
    by_brand: dict[str, dict[str, int]] = {}
    by_week: dict[str, dict[str, int]] = {}
    models: dict[str, int] = {}
    for row in listings:
        brand = names.get(row.brand_id, "(no brand)") if row.brand_id is not None else "(no brand)"
        by_brand.setdefault(brand, {}).setdefault(row.decision, 0)
        by_brand[brand][row.decision] += 1
        week = _week(_utc(row.scored_at))
        by_week.setdefault(week, {}).setdefault(row.decision, 0)
        by_week[week][row.decision] += 1
        models[row.model_tag] = models.get(row.model_tag, 0) + 1
    ids = [row.id for row in listings]
    listed = dict(session.execute(select(ListingEvidence.listing_row_id, ListingEvidence.listed_at)
                                  .where(ListingEvidence.listing_row_id.in_(ids),
                                         ListingEvidence.listed_at.is_not(None))).tuples().all())
    delays = sorted((_utc(row.scored_at) - _utc(listed[row.id])).total_seconds() for row in listings if row.id in listed)
    decision_of = {row.id: row.decision for row in listings}
    rquery = select(Review).where(Review.created_at >= start, Review.created_at < end)
    if brand_id is not None:
        rquery = rquery.where(Review.brand_id == brand_id)
    confirmed = overturned = 0
    for review in session.scalars(rquery):
        decision = decision_of.get(review.listing_row_id) or session.get(Listing, review.listing_row_id).decision
        said_fake = decision in ("review", "takedown")
        if (str(review.label) == "counterfeit") == said_fake:
            confirmed += 1
        else:
            overturned += 1
    rings = [r for r in session.scalars(select(Ring).where(Ring.dissolved_at.is_(None)))
             if _utc(r.first_seen) < end and _utc(r.last_seen) >= start
             and (brand_id is None or brand_id in r.brand_ids)]
    refs: dict[str, dict[str, int]] = {}
    fquery = select(Reference.brand_id, Reference.kind).where(Reference.created_at >= start, Reference.created_at < end)
    if brand_id is not None:
        fquery = fquery.where(Reference.brand_id == brand_id)
    for ref_brand, kind in session.execute(fquery):
        counts = refs.setdefault(names.get(ref_brand, str(ref_brand)), {"genuine": 0, "counterfeit": 0})
        counts[str(kind.value if hasattr(kind, "value") else kind)] += 1
    return {
        "from": start.isoformat(), "to": end.isoformat(),
        "brand": names.get(brand_id) if brand_id is not None else None,
        "listings_scanned": len(listings),
        "decisions": {d: sum(1 for r in listings if r.decision == d) for d in ("pass", "review", "takedown")},
        "decisions_by_brand": {b: dict(sorted(v.items())) for b, v in sorted(by_brand.items())},
        "decisions_by_week": {w: dict(sorted(v.items())) for w, v in sorted(by_week.items())},
        "takedowns": sum(1 for r in listings if r.decision == "takedown"),
        "reviews": {"confirmed": confirmed, "overturned": overturned},
        "time_to_decision_s": {
            "listings": len(delays),
            "median": round(statistics.median(delays), 1) if delays else None,
            "p90": round(delays[min(len(delays) - 1, int(0.9 * len(delays)))], 1) if delays else None,
        },
        "rings": {"found": len(rings), "sizes": sorted((r.sellers for r in rings), reverse=True)},
        "references_added": dict(sorted(refs.items())),
        "model_versions": dict(sorted(models.items())),
    }


# report.html: no script, fetch, style or form; only the charts embedded as data: images
REPORT_CSP = "default-src 'none'; img-src data:; base-uri 'none'; form-action 'none'"


def _literal(text: Any) -> str:
    """`text` drawn by matplotlib as written: every `$` escaped, so a brand name is never parsed as math."""
    return str(text).replace("$", r"\$")


def _charts(figures: dict[str, Any]) -> list[Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    fig, ax = plt.subplots(figsize=(8, 4))
    weeks = list(figures["decisions_by_week"])
    bottom = [0] * len(weeks)
    for decision, colour in (("pass", "tab:green"), ("review", "tab:orange"), ("takedown", "tab:red")):
        values = [figures["decisions_by_week"][w].get(decision, 0) for w in weeks]
        ax.bar([_literal(w) for w in weeks], values, bottom=bottom, color=colour, label=decision)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title("Decisions by week")
    ax.legend()
    ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    out.append(fig)
    fig, ax = plt.subplots(figsize=(8, 4))
    brands = list(figures["decisions_by_brand"])
    flagged = [sum(v for k, v in figures["decisions_by_brand"][b].items() if k != "pass") for b in brands]
    ax.barh([_literal(b) for b in brands], flagged, color="tab:red")
    ax.set_title("Listings flagged (review or takedown) by brand")
    fig.tight_layout()
    out.append(fig)
    fig, ax = plt.subplots(figsize=(8, 4))
    sizes = figures["rings"]["sizes"]
    ax.bar(range(1, len(sizes) + 1), sizes, color="tab:purple")
    ax.set_title(f"Rings found: {len(sizes)} (sellers per ring)")
    ax.set_xlabel("ring")
    fig.tight_layout()
    out.append(fig)
    return out


def write_report(figures: dict[str, Any], out: Path) -> list[Path]:
    """`report.json`, `report.html` (charts embedded) and `report.pdf` (summary page and charts) in `out`."""
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    charts = _charts(figures)
    images = []
    for fig in charts:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        images.append(base64.b64encode(buf.getvalue()).decode())
    summary = [f"markguard transparency report {figures['from'][:10]} – {figures['to'][:10]}"
               + (f" ({figures['brand']})" if figures["brand"] else ""),
               f"listings scanned: {figures['listings_scanned']}", f"takedowns: {figures['takedowns']}",
               f"reviews confirmed / overturned: {figures['reviews']['confirmed']} / {figures['reviews']['overturned']}",
               f"median time from listing to decision (s): {figures['time_to_decision_s']['median']}",
               f"rings found: {figures['rings']['found']}",
               "model versions: " + ", ".join(f"{k} ({v})" for k, v in figures["model_versions"].items())]
    with PdfPages(out / "report.pdf", metadata={"Creator": "markguard"}) as pdf:
        page = plt.figure(figsize=(8.27, 11.69))
        page.text(0.08, 0.95, _literal("\n\n".join(summary)), va="top", fontsize=10, wrap=True)
        pdf.savefig(page)
        plt.close(page)
        for fig in charts:
            pdf.savefig(fig)
            plt.close(fig)
    e = html.escape
    body = "".join(f"<li>{e(line)}</li>" for line in summary[1:])
    imgs = "".join(f'<img src="data:image/png;base64,{b}"><br>' for b in images)
    (out / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{REPORT_CSP}\"><title>{e(summary[0])}</title></head><body>"
        f"<h1>{e(summary[0])}</h1><ul>{body}</ul>{imgs}<h2>Figures</h2><pre>{e(json.dumps(figures, indent=1))}</pre>"
        "</body></html>\n", encoding="utf-8")
    return [out / "report.json", out / "report.html", out / "report.pdf"]
