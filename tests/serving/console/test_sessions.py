"""Console session tokens and CSRF tokens, without a browser: forged, altered, expired or foreign
tokens are refused, and a revoked key ends its sessions."""

from __future__ import annotations

import time

from markguard.serving.console.sessions import csrf_for, issue, login_csrf, principal_of, verify
from markguard.serving.keys import Role, create_key, revoke_key
from markguard.serving.state.home import Home


def test_a_session_token_names_the_key_id_not_the_key_and_cannot_be_altered(tmp_path):
    home = Home(tmp_path / "a")
    key, who = create_key(home, role=Role.MODERATOR)
    token = issue(home, who.key_id, minutes=5)
    assert key.split("_")[2] not in token and who.key_id in token
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
