"""The first admin key without a shell: `MARKGUARD_ADMIN_KEY` names a key that the service creates at
start-up when the catalog lacks it.

The operator generates the key (`markguard key generate`, or any `mg_<16 hex>_<32+ URL-safe characters>`)
and hands it to the deployment as a secret; every worker runs `bootstrap_admin_key` when it starts, and
only the first one writes (the key id is the catalog's unique key, so a second writer's insert fails and
is ignored). The catalog stores the SHA-256 of the secret, like every key (`serving.keys`); neither the
key nor its secret is ever logged. Revoking it (`markguard key revoke ID`) sticks: a revoked key id is not
created again. Rotate by setting a new key and revoking the old one.
"""

from __future__ import annotations

import re
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from markguard.serving.state.home import Home
from markguard.serving.state.schema import ApiKey

__all__ = ["generate_key", "parse_key", "bootstrap_admin_key"]

_KEY = re.compile(r"^mg_([0-9a-f]{16})_([A-Za-z0-9_-]{32,200})$")
LABEL = "bootstrap (MARKGUARD_ADMIN_KEY)"


def generate_key() -> str:
    """A fresh key in the form `serving.keys.create_key` hands out (for MARKGUARD_ADMIN_KEY)."""
    return f"mg_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"


def parse_key(key: str) -> tuple[str, str]:
    """(key id, secret); ValueError (never quoting the key) when it is not `mg_<16 hex>_<32+ characters>`."""
    match = _KEY.match(key.strip())
    if match is None:
        raise ValueError("must be mg_<16 lowercase hex>_<32 to 200 URL-safe characters> (markguard key generate)")
    return match.group(1), match.group(2)


def bootstrap_admin_key(home: Home, key: str) -> str:
    """Create the admin key `key` unless its id exists; returns `created`, `present` or `revoked`."""
    from markguard.serving.keys import _hash

    key_id, secret = parse_key(key)
    with home.sessions() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
    if row is None:
        try:
            with home.sessions.begin() as session:
                session.add(ApiKey(key_id=key_id, secret_hash=_hash(secret), role="admin", brand_id=None, label=LABEL))
            return "created"
        except IntegrityError:  # another worker created it first
            with home.sessions() as session:
                row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
            if row is None:
                raise
    if row.secret_hash != _hash(secret) or row.role != "admin":
        raise ValueError(f"MARKGUARD_ADMIN_KEY: key id {key_id} exists with another secret or role")
    return "revoked" if row.revoked_at is not None else "present"
