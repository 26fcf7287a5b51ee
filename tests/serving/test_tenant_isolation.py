"""Tenant isolation as a property (hypothesis): over routes, roles and brand-name variants (case, whitespace,
NFKC/fullwidth, Greek/Cyrillic look-alikes, percent-encoding), a brand key never reads, lists or changes
another brand's data: it gets 403 or 404, never a 2xx carrying the other brand's objects, and the other
brand's catalog rows are the same after every request. Other roles get 403 on routes they may not use,
and no name variant ever resolves to a brand other than the one it spells.

In-process (the API app over a real home: the shipped model, real references, a real catalog)."""

from __future__ import annotations

import dataclasses
import io
import unicodedata
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

PREFIX = "/v1"
VICTIM, TENANT = "Oatly", "Arla"  # the tenant's key is Arla's; Oatly is the other brand
ROLES = ("admin", "platform", "moderator", "investigator", "arla")

# letters of the two brand names and characters that look like them (Greek, Cyrillic, other scripts)
LOOK_ALIKES = {"O": "ΟОՕ〇", "o": "οо০", "a": "аα", "t": "τт", "l": "Iӏ|ǀ", "y": "уγ", "A": "ΑА", "r": "г",
               "L": "Ꮮ"}
SPACES = (" ", "\t", "\u00a0", "\u3000", "\u2003")


def _fullwidth(c: str) -> str:
    return chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c


@st.composite
def variants(draw: st.DrawFn, name: str) -> tuple[str, bool]:
    """A spelling of `name` (or of a look-alike of it), and whether its `%xx` runs reach the server raw
    (the server decodes them) or quoted again (the server sees a literal `%`)."""
    chars = []
    for c in name:
        how = draw(st.sampled_from(("keep", "swapcase", "fullwidth", "look-alike", "percent")))
        if how == "swapcase":
            c = c.swapcase()
        elif how == "fullwidth":
            c = _fullwidth(c)
        elif how == "look-alike" and c in LOOK_ALIKES:
            c = draw(st.sampled_from(LOOK_ALIKES[c]))
        elif how == "percent":
            c = quote(c, safe="") if not c.isalnum() else f"%{ord(c):02X}"
        chars.append(c)
    text = "".join(chars)
    pad = st.text(alphabet=st.sampled_from(SPACES), max_size=2)
    text = draw(pad) + text + draw(pad)
    return text, draw(st.booleans())


def _path(name: str, raw_percent: bool) -> str:
    return quote(name, safe="%" if raw_percent else "")


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


@dataclasses.dataclass(frozen=True)
class Op:
    """One request against the brand a name spells: who may make it, and whether it writes."""

    name: str
    roles: tuple[str, ...]  # the roles this route admits (admins pass every route); others get 403
    send: Callable[[Any, dict[str, str], str, dict[str, Any]], Any]
    writes: bool = False


def _ops() -> list[Op]:
    def b(name: str) -> str:
        return f"{PREFIX}/brands/{name}"

    return [
        Op("show brand", ("arla",), lambda c, h, n, w: c.get(b(n), headers=h)),
        Op("patch brand", ("arla",), lambda c, h, n, w: c.patch(b(n), headers=h, json={"review_at": 0.123}), True),
        Op("list references", ("arla",), lambda c, h, n, w: c.get(b(n) + "/references", headers=h)),
        Op("upload reference", ("arla",), lambda c, h, n, w: c.post(
            b(n) + "/references", headers=h, files={"files": ("x.png", _png(), "image/png")}), True),
        Op("delete reference", ("arla",), lambda c, h, n, w: c.delete(
            b(n) + f"/references/{w['victim_refs'][0]}", headers=h), True),
        Op("delete via own brand", ("arla",), lambda c, h, n, w: c.delete(
            b(TENANT) + f"/references/{w['victim_refs'][-1]}", headers=h), True),
        Op("import serials", ("arla",), lambda c, h, n, w: c.post(
            b(n) + "/serials", headers=h, files={"file": ("s.txt", b"ZX-0001\nZX-0002\n", "text/plain")}), True),
        Op("rings of brand", ("arla", "investigator"), lambda c, h, n, w: c.get(
            f"{PREFIX}/rings", headers=h, params={"brand": n})),
        Op("reviews", ("arla", "moderator"), lambda c, h, n, w: c.get(f"{PREFIX}/reviews", headers=h)),
        Op("reviews of listing", ("arla", "moderator"), lambda c, h, n, w: c.get(
            f"{PREFIX}/reviews", headers=h, params={"listing_id": w["victim_listing"]})),
        Op("report", ("arla",), lambda c, h, n, w: c.get(
            f"{PREFIX}/reports", headers=h, params={"from": "2000-01-01", "to": "2100-01-01"})),
        Op("score as the brand", ("platform",), lambda c, h, n, w: c.post(
            f"{PREFIX}/score", headers=h, data={"brand": n}, files={"image": ("x.png", _png(), "image/png")}), True),
    ]


OPS = _ops()


def _snapshot(root) -> dict[str, Any]:
    """The victim brand's rows: policy, references, products, serials, reviews."""
    from sqlalchemy import func, select

    from markguard.serving.state.home import Home
    from markguard.serving.state.schema import Brand, Reference

    home = Home(root)
    try:
        with home.sessions() as session:
            brand = session.scalar(select(Brand).where(Brand.name == VICTIM))
            refs = session.scalars(select(Reference.id).where(Reference.brand_id == brand.id)
                                   .order_by(Reference.id)).all()
            tables = {}
            for table in Brand.metadata.sorted_tables:
                if "brand_id" in table.c:
                    tables[table.name] = session.scalar(
                        select(func.count()).select_from(table).where(table.c.brand_id == brand.id))
            return {"policy": (brand.review_at, brand.takedown_at, list(brand.wordmarks or []), brand.serial_pattern,
                               brand.serial_checksum, brand.genuine_from_reviews), "refs": list(refs), "rows": tables}
    finally:
        home.close()


@pytest.fixture(scope="module")
def world(attack_home, attack_client):
    """Keys for every role, a scored and reviewed listing of each brand, and the victim's secrets."""
    from markguard.serving.keys import Role, create_key
    from markguard.serving.state.home import Home

    home = Home(attack_home.root)
    keys = dict(attack_home.keys)
    keys["investigator"] = create_key(home, role=Role.INVESTIGATOR)[0]
    home.close()
    platform = {"Authorization": f"Bearer {keys['platform']}"}
    moderator = {"Authorization": f"Bearer {keys['moderator']}"}
    for brand, photo, listing in ((VICTIM, attack_home.photos[0], "victim-listing"),
                                  (TENANT, attack_home.photos[2], "tenant-listing")):
        r = attack_client.post(f"{PREFIX}/score", headers=platform, files={"image": (photo.name, photo.read_bytes())},
                               data={"brand": brand, "listing_id": listing, "seller_id": f"seller-{brand}"})
        assert r.status_code == 200, r.text
        r = attack_client.post(f"{PREFIX}/reviews", headers=moderator,
                               json={"listing_id": listing, "label": "counterfeit", "note": "isolation"})
        assert r.status_code == 201, r.text
    before = _snapshot(attack_home.root)
    assert before["refs"] and before["rows"]
    r = attack_client.get(f"{PREFIX}/brands/{VICTIM}/references",
                          headers={"Authorization": f"Bearer {keys['oatly']}"})
    secrets = {x["sha256"] for x in r.json()["references"]} | {"victim-listing", "seller-Oatly"}
    return {"keys": keys, "victim_refs": before["refs"], "victim_listing": "victim-listing", "before": before,
            "secrets": secrets}


def _spells(text: str, name: str) -> bool:
    """Whether the server, folding case, width and whitespace (never look-alikes), reads `text` as `name`."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold() == name.casefold()


@settings(max_examples=120, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(op=st.sampled_from(OPS), role=st.sampled_from(ROLES), variant=variants(VICTIM))
def test_a_brand_key_never_reaches_another_brand(attack_client, attack_home, world, op, role, variant):
    name, raw_percent = variant
    if role in op.roles and op.writes and role != "arla" or role == "admin" and op.writes:
        return  # a write this role may make (an admin's anywhere, a platform's score): not a tenant's reach
    headers = {"Authorization": f"Bearer {world['keys'][role]}"}
    r = op.send(attack_client, headers, _path(name, raw_percent), world)
    assert r.status_code < 500, (op.name, role, name, r.status_code, r.text)
    if role != "admin" and role not in op.roles:
        assert r.status_code == 403, (op.name, role, name, r.status_code, r.text)
    if role == "arla":
        assert not 200 <= r.status_code < 300 or op.name in ("reviews", "reviews of listing", "report"), \
            (op.name, name, r.status_code, r.text)
        leaked = [s for s in world["secrets"] if s in r.text]
        assert not leaked, (op.name, name, r.status_code, leaked)
        if r.status_code == 200:
            assert "oatly" not in unicodedata.normalize("NFKC", r.text).casefold(), (op.name, name, r.text)
    if r.status_code == 200 and op.name == "show brand":  # a name resolves to the brand it spells, or to none
        received = unquote(name) if raw_percent else name
        assert r.json()["name"] == VICTIM and _spells(received, VICTIM), (role, name, r.json()["name"])
    if role != "admin":
        assert _snapshot(attack_home.root) == world["before"], (op.name, role, name)


def test_the_variants_really_reach_the_victim_for_its_own_key(attack_client, world):
    """The variants that spell the victim's name do resolve for the victim's own key (so a 404 to the tenant
    is isolation, not a name the server never resolves)."""
    headers = {"Authorization": f"Bearer {world['keys']['oatly']}"}
    for name in ("oatly", " OATLY ", "ｏａｔｌｙ", "Oat\u3000ly".replace("\u3000", ""), "%4Fatly"):
        r = attack_client.get(f"{PREFIX}/brands/{_path(name, raw_percent=True)}", headers=headers)
        assert r.status_code == 200 and r.json()["name"] == VICTIM, (name, r.status_code, r.text)
    for look_alike in ("Οatly", "Оatly", "Oаtly"):  # Greek Omicron, Cyrillic O, Cyrillic a: other names
        r = attack_client.get(f"{PREFIX}/brands/{_path(look_alike, raw_percent=False)}", headers=headers)
        assert r.status_code == 404, (look_alike, r.status_code, r.text)
