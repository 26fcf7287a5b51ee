"""Case bundles for investigators: one ring's evidence, self-contained and provably unaltered.

`export_case` writes `case.json` (listings, sellers, serial hashes, decisions, reviews, times, model
tags, evidence edges), the photos (`photos/SHA256.img`, as kept, and `annotated/ROW.png`, each with
its listing, decision and evidence drawn on it, at most `ANNOTATED_SIDE` on a side), `network.png`
(the ring's graph), `report.html`, and last `manifest.sha256` (SHA-256 of every other file). Files
are named by what the server decided (the photo's hash, the listing's catalog row), never by a
client's `listing_id`, which is only data in `case.json`. `verify_case` re-hashes a bundle and names
every changed, missing or added file. Each export is written to the `case_exports` audit log.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import html
import io
import json
from pathlib import Path
from typing import Any

import cv2
from PIL import Image, ImageDraw
from sqlalchemy import select

from markguard.serving.budget import draw_budget
from markguard.serving.intelligence.rings import ring_detail
from markguard.serving.intelligence.tables import CaseExport
from markguard.serving.reviews import Review
from markguard.serving.state.home import Home
from markguard.serving.state.schema import ListingSerial
from markguard.vision.decode import decode_image
from markguard.vision.errors import MarkguardError
from markguard.vision.weights import sha256_file

__all__ = ["CaseReport", "export_case", "verify_case", "MANIFEST"]

MANIFEST = "manifest.sha256"
ANNOTATED_SIDE = 2048  # px: an annotated photo's longest side at most (the photo as kept is in photos/)
_KIND_COLOURS = {"photo": "tab:blue", "serial": "tab:red", "known_fake": "black", "embedding": "tab:purple",
                 "template": "tab:green"}
# the bundle's report.html: no script, fetch or form; its inline style, the embedded network picture and the
# annotated photos beside it (opened from disk: `file:`, or from wherever the bundle is served: 'self')
REPORT_CSP = ("default-src 'none'; img-src 'self' data: file:; style-src 'unsafe-inline'; base-uri 'none'; "
              "form-action 'none'")


@dataclasses.dataclass(frozen=True)
class CaseReport:
    ring_id: int
    out: Path
    files: int
    manifest_sha256: str


def _literal(text: Any) -> str:
    """`text` drawn by matplotlib as written: every `$` escaped, so a seller id is never parsed as math."""
    return str(text).replace("$", r"\$")


def _network_png(detail: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    graph = nx.MultiGraph()
    graph.add_nodes_from(detail["members"])
    for e in detail["edges"]:
        graph.add_edge(*e["sellers"], kind=e["kind"], weight=e["weight"])
    pos = nx.spring_layout(graph, seed=0)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_color="#f4b942", node_size=500)
    nx.draw_networkx_labels(graph, pos, ax=ax, font_size=7, labels={n: _literal(n) for n in graph})
    from matplotlib.lines import Line2D

    handles = []
    for kind, colour in _KIND_COLOURS.items():
        edges = [(a, b) for a, b, d in graph.edges(data=True) if d["kind"] == kind]
        if edges:
            nx.draw_networkx_edges(graph, pos, edgelist=edges, ax=ax, edge_color=colour, width=1.5, alpha=0.7)
            handles.append(Line2D([0], [0], color=colour, label=kind))
    if handles:
        ax.legend(handles=handles, loc="lower left", fontsize=8)
    ax.set_title(f"ring {detail['id']}: {detail['sellers']} sellers, {detail['listings']} listings")
    ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _annotate(data: bytes, lines: list[str], *, flagged: bool) -> bytes:
    """The photo (at most `ANNOTATED_SIDE` on a side) with a banner of its evidence (listing, seller,
    decision, the edges it is part of)."""
    pixels = decode_image(data)
    h, w = pixels.shape[:2]
    scale = ANNOTATED_SIDE / max(h, w)
    if scale < 1:
        pixels = cv2.resize(pixels, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    image = Image.fromarray(pixels)
    banner = 14 * len(lines) + 8
    canvas = Image.new("RGB", (image.width, image.height + banner), (255, 255, 255))
    canvas.paste(image, (0, banner))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, canvas.width - 1, banner - 1], fill=(200, 40, 40) if flagged else (60, 60, 60))
    for i, line in enumerate(lines):
        draw.text((4, 4 + 14 * i), line, fill=(255, 255, 255))
    draw.rectangle([0, banner, canvas.width - 1, canvas.height - 1], outline=(200, 40, 40) if flagged else (60, 60, 60),
                   width=3)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def _html(case: dict[str, Any], network: bytes) -> str:
    e = html.escape
    def photo(x: dict[str, Any]) -> str:
        return f'<a href="{e(x["annotated"])}"><img src="{e(x["annotated"])}" width="120"></a>' if x.get("annotated") else ""

    rows = "".join(
        f"<tr><td>{e(str(x['listing_id']))}</td><td>{e(str(x['seller_id']))}</td><td>{e(str(x['brand']))}</td>"
        f"<td>{e(str(x['title']))}</td><td>{x['risk']}</td><td>{e(x['decision'])}</td><td>{e(x['scored_at'])}</td>"
        f"<td>{e(', '.join(r['label'] for r in x['reviews']))}</td><td>{photo(x)}</td></tr>"
        for x in case["listings"])
    edges = "".join(
        f"<tr><td>{e(a)} – {e(b)}</td><td>{e(x['kind'])}</td><td>{x['weight']}</td><td>{x['count']}</td>"
        f"<td>{e(json.dumps(x['examples']))}</td></tr>"
        for x in case["edges"] for a, b in [x["sellers"]])
    ring = case["ring"]
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{REPORT_CSP}"><title>markguard case: ring {ring['id']}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 6px;font-size:12px}}</style>
</head><body><h1>Ring {ring['id']}</h1>
<p>score {ring['score']} · {ring['sellers']} sellers · {ring['listings']} listings · brands {e(', '.join(ring['brands']))}
· flagged share {ring['flagged_share']} · first seen {e(ring['first_seen'])} · last seen {e(ring['last_seen'])}</p>
<p>Exported {e(case['exported_at'])} by {e(case['exported_by'])}. Every file's SHA-256 is in {MANIFEST};
check with <code>markguard case verify DIR</code>.</p>
<h2>Network</h2><img src="data:image/png;base64,{base64.b64encode(network).decode()}">
<h2>Evidence</h2><table><tr><th>sellers</th><th>kind</th><th>weight</th><th>listing pairs</th><th>examples (listing rows, detail)</th></tr>{edges}</table>
<h2>Listings</h2><table><tr><th>listing</th><th>seller</th><th>brand</th><th>title</th><th>risk</th><th>decision</th><th>scored</th><th>reviews</th><th>photo</th></tr>{rows}</table>
</body></html>
"""


def export_case(home: Home, ring_id: int, out: Path, *, actor: str, role: str,
                visible_to: int | None = None) -> CaseReport:
    """Write ring `ring_id`'s bundle into `out` (new or empty); `visible_to` cuts it to one brand's view."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MarkguardError(f"{out} exists and is not an empty folder")
    with home.sessions() as session:
        detail = ring_detail(session, ring_id, visible_to=visible_to)
        rows = [x["row"] for x in detail["listings_shown"]]
        serials: dict[int, list[str]] = {}
        for row_id, digest in session.execute(select(ListingSerial.listing_row_id, ListingSerial.serial_hmac)
                                              .where(ListingSerial.listing_row_id.in_(rows))):
            serials.setdefault(row_id, []).append(digest)
        reviews: dict[int, list[dict[str, Any]]] = {}
        for r in session.scalars(select(Review).where(Review.listing_row_id.in_(rows)).order_by(Review.id)):
            reviews.setdefault(r.listing_row_id, []).append(
                {"label": str(r.label), "note": r.note, "at": r.created_at.isoformat()})
    (out / "photos").mkdir(parents=True, exist_ok=True)
    (out / "annotated").mkdir(exist_ok=True)
    kinds_of: dict[int, set[str]] = {}
    for edge in detail["edges"]:
        for example in edge["examples"]:
            for row in example["listings"]:
                kinds_of.setdefault(row, set()).add(edge["kind"])
    listings = []
    for x in detail["listings_shown"]:
        item = {**x, "serial_hmacs": sorted(set(serials.get(x["row"], []))), "reviews": reviews.get(x["row"], [])}
        try:
            data = home.get_blob(x["image_sha256"])
        except (FileNotFoundError, MarkguardError):
            data = None
        if data is not None:
            photo = f"photos/{x['image_sha256']}.img"
            (out / photo).write_bytes(data)
            lines = [f"{x['listing_id']}  seller {x['seller_id']}", f"{x['decision']}  risk {x['risk']}",
                     "evidence: " + (", ".join(sorted(kinds_of.get(x['row'], set()))) or "none shown")]
            draw_budget().charge_image(data, f"listing {x['row']}")  # 503 while the process holds its share
            annotated = f"annotated/{int(x['row'])}.png"  # the catalog row: one file per listing, inside `out`
            (out / annotated).write_bytes(_annotate(data, lines, flagged=x["decision"] != "pass"))
            item.update(photo=photo, annotated=annotated)
        listings.append(item)
    now = dt.datetime.now(dt.UTC)
    ring = {k: v for k, v in detail.items() if k not in ("listings_shown", "edges", "members")}
    case = {"ring": ring, "sellers": detail["members"], "listings": listings,
            "listings_hidden": detail["listings_hidden"], "edges": detail["edges"],
            "models": sorted({x["model"] for x in listings}), "exported_at": now.isoformat(), "exported_by": actor}
    (out / "case.json").write_text(json.dumps(case, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    network = _network_png(detail)
    (out / "network.png").write_bytes(network)
    (out / "report.html").write_text(_html(case, network), encoding="utf-8")
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = "".join(f"{sha256_file(p)}  {p.relative_to(out).as_posix()}\n" for p in files)
    (out / MANIFEST).write_text(manifest, encoding="utf-8")
    manifest_sha = hashlib.sha256(manifest.encode()).hexdigest()
    with home.sessions.begin() as session:
        session.add(CaseExport(ring_id=ring_id, actor=actor, role=role, brand_id=visible_to, files=len(files),
                               manifest_sha256=manifest_sha, created_at=now))
    return CaseReport(ring_id, out, len(files), manifest_sha)


def verify_case(folder: Path) -> list[str]:
    """Problems found re-hashing a bundle (`changed: f`, `missing: f`, `unlisted: f`); empty when intact."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise MarkguardError(f"{folder}: no {MANIFEST}")
    listed: dict[str, str] = {}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise MarkguardError(f"{manifest}: malformed line {line!r}")
        listed[name] = digest
    problems = []
    for name, digest in sorted(listed.items()):
        path = folder / name
        if folder.resolve() not in path.resolve().parents:
            problems.append(f"outside: {name}")
        elif not path.is_file():
            problems.append(f"missing: {name}")
        elif sha256_file(path) != digest:
            problems.append(f"changed: {name}")
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST}
    problems += [f"unlisted: {name}" for name in sorted(present - set(listed))]
    return problems

