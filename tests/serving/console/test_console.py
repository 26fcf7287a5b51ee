"""The web console in headless Chromium against a real `markguard serve` (fixtures in conftest.py)."""

from __future__ import annotations

import io
import re
import zipfile

import httpx
import pytest

from markguard.serving.bootstrap import parse_key
from markguard.serving.reviews import list_reviews
from markguard.serving.state.home import Home

pytestmark = pytest.mark.timeout(900)


def _reviews(console, prefix: str) -> list:
    home = Home(console.root)
    try:
        return [r for r in list_reviews(home, limit=500) if r.listing_id.startswith(prefix)]
    finally:
        home.close()


def test_sign_in_as_each_role_cookie_and_sign_out(pages, console):
    landing = {"moderator": "Review queue", "oatly": "Oatly", "investigator": "Seller rings", "admin": "Review queue"}
    for role, heading in landing.items():
        page = pages.signed_in(role)
        assert page.locator("h1").inner_text() == heading, role
        pages.check(page)
        [cookie] = [c for c in page.context.cookies() if c["name"] == "mg_console"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert cookie["expires"] > 0  # expiring, not a browser-session cookie
        # neither the key nor its secret (which may hold '_' itself: split("_")[2] once gave '')
        assert console.keys[role] not in cookie["value"] and parse_key(console.keys[role])[1] not in cookie["value"]
        assert page.evaluate("document.cookie") == ""  # scripts cannot read it
    # sign-out ends the session: the next page asks to sign in again, and so does a copy of the cookie
    # taken before (the server revoked the session, not only the browser its cookie)
    copied = [c for c in page.context.cookies() if c["name"] == "mg_console"]
    with page.expect_navigation():
        page.click("#sign-out")
    assert page.url.endswith("/console/login")
    page.goto(console.url + "/console/rings")
    assert "/console/login" in page.url
    thief = pages.new()
    thief.context.add_cookies(copied)
    thief.goto(console.url + "/console/rings")
    assert "/console/login" in thief.url
    # wrong keys and platform keys get no session
    for key, error in (("mg_0123456789abcdef_nope", "not valid"), (console.keys["platform"], "no console")):
        page = pages.new()
        page.goto(console.url + "/console/login")
        pages.check(page)
        page.fill("#key", key)
        with page.expect_navigation():
            page.click("#sign-in")
        assert error in page.locator("#error").inner_text()
        assert not [c for c in page.context.cookies() if c["name"] == "mg_console"]
    pages.assert_local()


def test_pages_send_a_strict_content_security_policy(console):
    r = httpx.get(console.url + "/console/login")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "<script>" not in r.text and not re.search(r"\son[a-z]+=", r.text)  # no inline script or handler


def test_moderator_clears_twenty_flagged_listings_with_the_keyboard(pages, console):
    page = pages.signed_in("moderator")
    page.goto(console.url + "/console/queue?brand=Oatly&order=riskiest")
    rows = page.locator("#queue tbody tr")
    assert rows.count() == 20
    risks = [float(x.strip("%")) for x in page.locator("#queue tbody td:nth-child(5)").all_inner_texts()]
    assert risks == sorted(risks, reverse=True)
    pages.check(page)
    page.screenshot(path=str(console.shots / "queue.png"))
    # one skip first: the highlight moves, nothing is recorded
    first = rows.nth(0).get_attribute("data-row")
    page.keyboard.press("s")
    assert "current" in rows.nth(1).get_attribute("class")
    page.keyboard.press("k")
    assert "current" in rows.nth(0).get_attribute("class")
    labels = {}
    for i in range(20):
        row = page.locator("#queue tbody tr.current")
        row_id = int(row.get_attribute("data-row"))
        key = "c" if i % 2 else "g"
        labels[row_id] = "counterfeit" if key == "c" else "genuine"
        with page.expect_navigation():
            page.keyboard.press(key)
        assert page.locator("#queue tbody tr").count() == 19 - i
    assert page.locator("#empty").is_visible()
    assert int(first) in labels
    reviews = _reviews(console, "q-")
    assert len(reviews) == 20
    by_row = {console.rows[r.listing_id]: r.label for r in reviews}
    assert by_row == labels  # each key press labelled the row it highlighted
    moderator_key_id = console.keys["moderator"].split("_")[1]
    assert {r.reviewer for r in reviews} == {moderator_key_id}
    assert all(r.reference_id for r in reviews if r.label == "counterfeit")  # known fakes now
    pages.assert_local()


def test_listing_view_and_a_review_changes_the_next_score(pages, console):
    page = pages.signed_in("moderator")
    page.goto(console.url + "/console/queue?brand=Arla")
    with page.expect_navigation():
        page.click(f"#queue a[href*='/console/listings/{console.rows['a-2']}?']")
    assert page.locator("h1").inner_text() == "Listing a-2"
    for img in page.locator("main img").all():  # the evidence photo and each reference shown
        assert page.evaluate("(i) => i.complete && i.naturalWidth > 0", img.element_handle()), img.get_attribute("src")
    assert page.locator(".refs img").count() >= 1
    assert page.locator("#signals tbody tr").count() >= 3
    assert page.locator("#earlier").inner_text().count("a-1") == 1  # the same photo, posted by another seller
    assert page.locator("#no-history").is_visible()
    pages.check(page)
    page.screenshot(path=str(console.shots / "listing.png"))
    risk_before = page.locator("#risk").inner_text()
    page.fill("#note", "box print is blurred, wrong font")
    page.locator("#note").blur()
    with page.expect_navigation():
        page.keyboard.press("c")
    assert "reviewed counterfeit" in page.locator(".flash").inner_text()
    [review] = _reviews(console, "a-2")
    assert review.label == "counterfeit" and review.note == "box print is blurred, wrong font"
    page.goto(f"{console.url}/console/listings/{console.rows['a-2']}")
    assert page.locator("#reviewed").inner_text() == "counterfeit"
    history = page.locator("#history").inner_text()
    assert "counterfeit" in history and "wrong font" in history
    # the next score of the photo meets the moderator's known fake
    after = httpx.post(console.url + "/score", headers={"Authorization": f"Bearer {console.keys['platform']}"},
                       files={"image": ("a.jpg", console.photos["a-2"].read_bytes(), "image/jpeg")},
                       data={"brand": "Arla", "listing_id": "a-3", "seller_id": "ring-c"}, timeout=120).json()
    top = after["matches"][0]
    assert top["reference_id"] == review.reference_id and top["kind"] == "counterfeit"
    assert after["risk"] * 100 > float(risk_before.strip("%"))
    pages.assert_local()


def test_listing_view_shows_text_and_serial_checks(pages, console):
    page = pages.signed_in("moderator")
    page.goto(f"{console.url}/console/listings/{console.rows['o-1']}")
    assert page.locator("#ocr-lines li").all_inner_texts()[0].startswith("OATLY")
    cells = page.locator("#serials tbody td").all_inner_texts()
    assert cells == ["7350047180017", "7350047180017", "True", "False", "False", "2"]
    assert page.locator("#evidence").evaluate("i => i.complete && i.naturalWidth > 0")
    assert "q-01" in page.locator("#earlier").inner_text()  # the same photo, scored before
    pages.check(page)


def test_a_listing_one_moderator_opened_is_held_from_another(pages, console):
    row = console.rows["a-1"]
    first = pages.signed_in("moderator")
    first.goto(f"{console.url}/console/listings/{row}")
    assert first.locator("#review-form").count() == 1 and first.locator("#held").count() == 0
    second = pages.signed_in("moderator2")
    second.goto(console.url + "/console/queue?brand=Arla&decision=any")
    assert f"/console/listings/{row}?" not in second.content()  # left out of the other moderator's queue
    second.goto(f"{console.url}/console/listings/{row}")
    assert "claimed by another moderator" in second.locator("#held").inner_text()
    assert second.locator("#review-form").count() == 0
    pages.check(second)
    token = second.locator("input[name=csrf]").first.get_attribute("value")
    r = second.request.post(f"{console.url}/console/listings/{row}/review", form={"label": "genuine", "csrf": token},
                            max_redirects=0)
    assert r.status == 409
    assert _reviews(console, "a-1") == []


def test_brand_uploads_a_zip_of_references_and_deletes_one(pages, console, grocery):
    page = pages.signed_in("oatly")
    photos = sorted((grocery / "iconic").rglob("*.jpg"))
    photos = [p for p in photos if not p.name.lower().startswith(("oatly", "arla"))][:3]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in photos:
            zf.write(p, f"pack/{p.name}")
    page.set_input_files("#files", files=[{"name": "refs.zip", "mimeType": "application/zip", "buffer": buf.getvalue()}])
    page.fill("#product", "Barista-Edition")
    assert page.locator("#upload-progress").get_attribute("value") == "0"
    with page.expect_navigation(timeout=120_000):
        page.click("#upload")
    assert "added 3 reference(s)" in page.locator(".flash").inner_text()
    section = page.locator("h3", has_text="Barista-Edition")
    assert section.count() == 1
    cards = page.locator("li.ref-card")
    before = cards.count()
    pages.check(page)
    ref_id = page.locator("li.ref-card").last.get_attribute("data-ref")
    with page.expect_navigation():
        page.locator(f"li.ref-card[data-ref='{ref_id}'] button").click()
    assert f"deleted reference {ref_id}" in page.locator(".flash").inner_text()
    assert page.locator("li.ref-card").count() == before - 1
    pages.assert_local()


def test_a_brand_cannot_reach_another_brands_pages_or_images(pages, console):
    page = pages.signed_in("oatly")
    arla_ref = console.references["Arla"][0]
    arla_row = console.rows["a-1"]
    for path in ("/console/brands/Arla", f"/console/references/{arla_ref}/image", f"/console/listings/{arla_row}",
                 f"/console/listings/{arla_row}/image", f"/console/listings/{arla_row}/evidence.png",
                 "/console/brands/arla"):
        r = page.goto(console.url + path)
        assert r.status == 404, path
    assert page.goto(console.url + "/console/queue").status == 403
    # their own objects answer
    oatly_ref = console.references["Oatly"][0]
    assert page.goto(f"{console.url}/console/references/{oatly_ref}/image").status == 200
    assert page.goto(f"{console.url}/console/listings/{console.rows['q-01']}").status == 200
    pages.check(page)
    # every link and image on their pages stays inside their brand
    for path in ("/console/brands/Oatly", "/console/rings", "/console/reports", f"/console/listings/{console.rows['q-02']}"):
        page.goto(console.url + path)
        pages.check(page)
        targets = page.eval_on_selector_all("a[href], img[src], form[action]",
                                            "els => els.map(e => e.getAttribute('href') || e.getAttribute('src') || e.getAttribute('action'))")
        assert not [t for t in targets if "Arla" in t or f"/references/{arla_ref}/" in t or f"/listings/{arla_row}" in t]
        assert page.locator("body").inner_text().count("Arla") == 0
    # a form aimed at another brand, with this session's valid token, changes nothing
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    r = page.request.post(f"{console.url}/console/brands/Arla/references/{arla_ref}/delete", form={"csrf": csrf},
                          max_redirects=0)
    assert r.status == 404
    pages.assert_local()


def test_forms_without_a_valid_csrf_token_are_refused(pages, console):
    page = pages.signed_in("moderator")
    row = console.rows["q-05"]
    before = len(_reviews(console, "q-05"))
    page.goto(f"{console.url}/console/listings/{row}")
    token = page.locator("input[name=csrf]").first.get_attribute("value")
    url = f"{console.url}/console/listings/{row}/review"
    for form in ({"label": "genuine"}, {"label": "genuine", "csrf": token[:-2] + "xx"}, {"label": "genuine", "csrf": ""}):
        r = page.request.post(url, form=form, max_redirects=0)
        assert r.status == 403, form
    assert len(_reviews(console, "q-05")) == before
    r = page.request.post(url, form={"label": "genuine", "csrf": token}, max_redirects=0)
    assert r.status == 303  # the same form with the token goes through
    assert len(_reviews(console, "q-05")) == before + 1
    # another session's token is not this session's
    other = pages.signed_in("moderator")
    other_token = other.locator("input[name=csrf]").first.get_attribute("value")
    assert other_token != token
    assert page.request.post(url, form={"label": "genuine", "csrf": other_token}, max_redirects=0).status == 403
    # a brand's policy form and sign-out need it too
    brand = pages.signed_in("oatly")
    r = brand.request.post(f"{console.url}/console/brands/Oatly/policy", form={"review_at": "0.9"}, max_redirects=0)
    assert r.status == 403
    assert brand.request.post(f"{console.url}/console/logout", max_redirects=0).status == 403
    # the sign-in form needs the token bound to its own cookie
    fresh = pages.new()
    r = fresh.request.post(f"{console.url}/console/login", form={"key": console.keys["moderator"]}, max_redirects=0)
    assert r.status == 403
    assert not [c for c in fresh.context.cookies() if c["name"] == "mg_console"]


def test_investigator_rings_and_admin_pages_are_accessible(pages, console):
    page = pages.signed_in("investigator")
    assert page.locator("#rings tbody tr").count() >= 1
    pages.check(page)
    with page.expect_navigation():
        page.locator("#rings a").first.click()
    assert page.locator("img.network").evaluate("i => i.complete && i.naturalWidth > 0")
    pages.check(page)
    with page.expect_download() as download:
        page.click("#export")
    data = download.value.path().read_bytes()
    assert zipfile.ZipFile(io.BytesIO(data)).namelist()
    admin = pages.signed_in("admin")
    for path in ("/console/brands", "/console/brands/Arla", "/console/reports", "/console/rings",
                 f"/console/listings/{console.rows['a-1']}", "/console/queue?decision=any&reviewed=any",
                 "/console/nope"):
        admin.goto(console.url + path)
        pages.check(admin)
        if path.startswith("/console/queue"):  # the time filter: nothing scored in 2000, all of it since then
            assert admin.locator("#queue tbody tr").count() >= 20
            admin.goto(console.url + path + "&since=2000-01-01&until=2000-12-31")
            assert admin.locator("#empty").is_visible()
            admin.goto(console.url + path + "&since=2000-01-01")
            assert admin.locator("#queue tbody tr").count() >= 20
        if path == "/console/reports":  # the report's charts, drawn by serving.intelligence.reports
            charts = admin.locator("img.chart")
            assert charts.count() == 3
            for img in charts.all():
                assert img.evaluate("i => i.complete && i.naturalWidth > 0"), img.get_attribute("src")
    pages.assert_local()
