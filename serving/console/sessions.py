"""Console sign-in: an API key exchanged for a signed, expiring session token, and CSRF tokens.

The cookie never holds the key. It holds `v1.<key id>.<expiry>.<nonce>.<signature>`, signed with a key
derived from the home's secret (`Home.secret`), so every worker and a restarted server accept it. Each
request checks the signature and the expiry, then the API key row again: a revoked key ends its
sessions at once. Signing out revokes the session on the server (its nonce goes in
`console_revoked_sessions` until the token would have expired), so a copy of the cookie taken before
sign-out is refused too. The CSRF token of a session is a keyed hash of its nonce; before sign-in, the
sign-in form's token is bound to a random cookie of its own (double submit). A page's notice ("policy
saved") travels in a short-lived signed cookie (`FLASH_COOKIE`), never in the URL: the redirect's URL
carries only a random `notice` id, and the page shows the cookie's text when the ids match, so no link can
put text on a console page.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
import time
from typing import Any

from sqlalchemy import String, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from markguard.serving.keys import Principal, Role
from markguard.serving.state.home import Home
from markguard.serving.state.schema import ApiKey, Base, Brand, UtcDateTime

__all__ = ["Session", "issue", "verify", "revoke", "purge_expired", "csrf_for", "login_csrf", "principal_of", "COOKIE",
           "PRE_COOKIE", "FLASH_COOKIE", "FLASH_SECONDS", "flash_token", "flash_text"]

COOKIE = "mg_console"
PRE_COOKIE = "mg_console_pre"  # the sign-in form's double-submit value
FLASH_COOKIE = "mg_console_flash"  # the next page's notice, signed by the server
FLASH_SECONDS = 60  # a notice not shown within this is dropped
_VERSION = "v1"


def _signing_key(home: Home) -> bytes:
    return hmac.new(home.secret(), b"markguard console session v1", hashlib.sha256).digest()


def _mac(home: Home, text: str) -> str:
    digest = hmac.new(_signing_key(home), text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class RevokedSession(Base):
    """A signed-out session (migration 0007): its token is refused until it would have expired anyway,
    when the row may go."""

    __tablename__ = "console_revoked_sessions"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)
    revoked_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class Session:
    """A verified session: whose key, until when, and its CSRF token."""

    def __init__(self, key_id: str, expires: int, nonce: str, csrf: str) -> None:
        self.key_id, self.expires, self.nonce, self.csrf = key_id, expires, nonce, csrf


def issue(home: Home, key_id: str, *, minutes: int) -> str:
    """A new session token for `key_id`, valid `minutes` from now."""
    body = f"{_VERSION}.{key_id}.{int(time.time()) + minutes * 60}.{secrets.token_urlsafe(16)}"
    return f"{body}.{_mac(home, body)}"


def verify(home: Home, token: str | None) -> Session | None:
    """The session of a cookie value, or None when it is malformed, forged or expired."""
    if not token or len(token) > 300:
        return None
    parts = token.split(".")
    if len(parts) != 5 or parts[0] != _VERSION or not parts[2].isdigit():
        return None
    body, signature = ".".join(parts[:4]), parts[4]
    if not hmac.compare_digest(_mac(home, body), signature):
        return None
    expires = int(parts[2])
    if expires < time.time():
        return None
    with home.sessions() as session:
        if session.get(RevokedSession, parts[3]) is not None:  # signed out: no copy of the cookie works
            return None
    return Session(parts[1], expires, parts[3], csrf_for(home, parts[3]))


def revoke(home: Home, session: Session) -> None:
    """Sign `session` out on the server (idempotent); rows of sessions that have expired anyway go."""
    now = dt.datetime.now(dt.UTC)
    try:
        with home.sessions.begin() as db:
            _purge(db, now)
            if db.get(RevokedSession, session.nonce) is None:
                db.add(RevokedSession(nonce=session.nonce, key_id=session.key_id, revoked_at=now,
                                      expires_at=dt.datetime.fromtimestamp(session.expires, dt.UTC)))
    except IntegrityError:  # a second sign-out of the same session, at the same moment: it is revoked
        pass


def purge_expired(home: Home) -> int:
    """Forget signed-out sessions whose tokens have expired anyway (`home sweep`); returns how many."""
    with home.sessions.begin() as db:
        return _purge(db, dt.datetime.now(dt.UTC))


def _purge(db: Any, now: dt.datetime) -> int:
    return db.execute(delete(RevokedSession).where(RevokedSession.expires_at < now)).rowcount or 0


def csrf_for(home: Home, nonce: str) -> str:
    return _mac(home, f"csrf.{nonce}")


def login_csrf(home: Home, pre: str) -> str:
    return _mac(home, f"login.{pre}")


def flash_token(home: Home, text: str, *, seconds: int = FLASH_SECONDS) -> tuple[str, str]:
    """A signed cookie value carrying the server's notice `text` (at most 500 characters), and its random id
    (for the redirect's URL)."""
    notice = secrets.token_urlsafe(9)
    encoded = base64.urlsafe_b64encode(text[:500].encode()).decode().rstrip("=")
    body = f"flash.{notice}.{encoded}.{int(time.time()) + seconds}"
    return f"{body}.{_mac(home, body)}", notice


def flash_text(home: Home, token: str | None, notice: str | None) -> str | None:
    """The notice of a flash cookie whose id is `notice`, or None when missing, another's, forged or expired."""
    if not token or not notice or len(token) > 1000:
        return None
    parts = token.split(".")
    if len(parts) != 5 or parts[0] != "flash" or not parts[3].isdigit():
        return None
    body = ".".join(parts[:4])
    if not hmac.compare_digest(_mac(home, body), parts[4]) or not same(parts[1], notice) \
            or int(parts[3]) < time.time():
        return None
    try:
        return base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4)).decode()
    except ValueError:
        return None


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


def principal_of(home: Home, key_id: str) -> Principal | None:
    """The key's principal, or None when the key is unknown or revoked."""
    with home.sessions() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
        if row is None or row.revoked_at is not None:
            return None
        brand_name = session.get(Brand, row.brand_id).name if row.brand_id is not None else None
        return Principal(row.key_id, Role(row.role), row.brand_id, brand_name)
