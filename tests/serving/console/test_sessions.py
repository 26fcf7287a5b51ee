"""Console session tokens and CSRF tokens, without a browser: forged, altered, expired or foreign
tokens are refused, and a revoked key ends its sessions."""

from __future__ import annotations

import time

from markguard.serving.bootstrap import parse_key
from markguard.serving.console.sessions import csrf_for, issue, login_csrf, principal_of, verify
from markguard.serving.keys import Role, create_key, revoke_key
from markguard.serving.state.home import Home


def test_a_session_token_names_the_key_id_not_the_key_and_cannot_be_altered(tmp_path):
    home = Home(tmp_path / "a")
    key, who = create_key(home, role=Role.MODERATOR)
    token = issue(home, who.key_id, minutes=5)
    assert parse_key(key)[1] not in token and who.key_id in token  # the secret may hold '_' itself
    session = verify(home, token)
    assert session is not None and session.key_id == who.key_id and session.csrf == csrf_for(home, session.nonce)
    version, key_id, expires, nonce, signature = token.split(".")
    altered = [
        ".".join([version, "0" * 16, expires, nonce, signature]),  # another key id
        ".".join([version, key_id, str(int(expires) + 3600), nonce, signature]),  # a later expiry
        ".".join([version, key_id, expires, nonce, signature[:-1] + ("A" if signature[-1] != "A" else "B")]),
        ".".join(["v0", key_id, expires, nonce, signature]),
        token + ".x", "", "garbage", "a" * 400,
    ]
    assert [verify(home, t) for t in altered] == [None] * len(altered)
    other = Home(tmp_path / "b")  # another home's secret signs differently
    assert verify(other, token) is None
    assert issue(home, who.key_id, minutes=5) != token  # a fresh nonce, a fresh CSRF token, each sign-in
    assert verify(home, issue(home, who.key_id, minutes=5)).csrf != session.csrf
    assert login_csrf(home, "pre") != login_csrf(other, "pre")
    home.close()
    other.close()


def test_expired_tokens_and_revoked_keys_end_the_session(tmp_path, monkeypatch):
    home = Home(tmp_path / "a")
    _, who = create_key(home, role=Role.INVESTIGATOR)
    token = issue(home, who.key_id, minutes=1)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 61)
    assert verify(home, token) is None
    monkeypatch.setattr(time, "time", lambda: now)
    assert verify(home, token) is not None
    assert principal_of(home, who.key_id).role is Role.INVESTIGATOR
    revoke_key(home, who.key_id)
    assert principal_of(home, who.key_id) is None
    assert principal_of(home, "f" * 16) is None
    home.close()


def test_sign_out_revokes_the_session_so_a_copied_cookie_is_refused(tmp_path, database_url):
    """Through the real app (test client), on each catalog backend: sign in, copy the session cookie, sign
    out; the copy no longer opens a page nor posts a form, while another session of the same key works."""
    import re

    from starlette.testclient import TestClient

    from markguard.serving.api import Backend, build_app, local_embed
    from markguard.serving.console.sessions import COOKIE
    from markguard.serving.engine import ScoringEngine
    from markguard.serving.limits import RateLimiter

    home = Home(tmp_path / "home")
    key, _ = create_key(home, role=Role.MODERATOR)
    engine = ScoringEngine(home, ocr=False)
    app = build_app(Backend(engine=engine, embed=local_embed(engine), limiter=RateLimiter(rate=1000.0, burst=1000)))

    def sign_in(client: TestClient) -> str:
        form = client.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        r = client.post("/console/login", data={"key": key, "csrf": csrf}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/console/queue", r.text[:500]
        return client.cookies[COOKIE]

    def queue(token: str) -> int:
        with TestClient(app, base_url="https://testserver") as fresh:  # no cookie jar of its own: only the copy
            return fresh.get("/console/queue", headers={"Cookie": f"{COOKIE}={token}"},
                             follow_redirects=False).status_code

    with TestClient(app, base_url="https://testserver") as browser, \
            TestClient(app, base_url="https://testserver") as other:
        token, other_token = sign_in(browser), sign_in(other)
        assert queue(token) == 200
        page = browser.get("/console/queue")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        r = browser.post("/console/logout", data={"csrf": csrf}, follow_redirects=False)
        assert r.status_code == 303 and COOKIE not in browser.cookies
        assert verify(home, token) is None
        assert queue(token) == 303  # back to the sign-in form, although the token's signature and expiry are good
        with TestClient(app, base_url="https://testserver") as thief:
            r = thief.post("/console/logout", data={"csrf": csrf}, headers={"Cookie": f"{COOKIE}={token}"},
                           follow_redirects=False)
            assert r.status_code == 401
        assert queue(other_token) == 200  # only the session that signed out ends
    home.close()
