"""API keys: `mg_<key id>_<secret>`, shown once, stored as the SHA-256 of the secret.

The key decides the tenant and the role, never a field in a request. Lookup is by the public key id;
the secret is compared in constant time. Secrets are 32 random bytes, so a plain SHA-256 (no slow
KDF) is the right hash: there is nothing to brute-force.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import hmac
import secrets

from sqlalchemy import select

from markguard.serving.brands import get_brand
from markguard.serving.limits import ApiError, RateLimiter
from markguard.serving.state.home import Home
from markguard.serving.state.schema import ApiKey, Brand
from markguard.vision.errors import MarkguardError

__all__ = ["authorize", "Role", "Principal", "create_key", "authenticate", "revoke_key"]

_PREFIX = "mg"


class Role(enum.StrEnum):
    ADMIN = "admin"  # everything, every brand
    PLATFORM = "platform"  # the marketplace: scores listings
    BRAND = "brand"  # one brand: its references, serials and policy
    MODERATOR = "moderator"  # reviews scored listings
    INVESTIGATOR = "investigator"  # reads every ring, exports cases and reports


@dataclasses.dataclass(frozen=True)
class Principal:
    key_id: str
    role: Role
    brand_id: int | None  # set for brand keys: the only brand they see
    brand_name: str | None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(home: Home, *, role: Role, brand: str | None = None, label: str = "") -> tuple[str, Principal]:
    """Create a key; returns the full key (shown once, never stored) and who it is."""
    if (role is Role.BRAND) != (brand is not None):
        raise MarkguardError("a brand key needs --brand, and only brand keys take one")
    if len(label) > 200:  # the catalog's column; PostgreSQL enforces it
        raise MarkguardError("a key's label is at most 200 characters")
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    with home.sessions.begin() as session:
        brand_row = get_brand(session, brand) if brand else None
        session.add(
            ApiKey(
                key_id=key_id,
                secret_hash=_hash(secret),
                role=role.value,
                brand_id=brand_row.id if brand_row else None,
                label=label,
            )
        )
    principal = Principal(key_id, role, brand_row.id if brand_row else None, brand_row.name if brand_row else None)
    return f"{_PREFIX}_{key_id}_{secret}", principal


def authenticate(home: Home, token: str | None) -> Principal | None:
    """Who holds `token`, or None for a missing, malformed, unknown, wrong or revoked key."""
    if not token:
        return None
    parts = token.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != _PREFIX or len(parts[1]) != 16:
        return None
    key_id, secret = parts[1], parts[2]
    with home.sessions() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
        # Compare even when the id is unknown, so timing does not reveal which ids exist.
        expected = row.secret_hash if row is not None else _hash(secrets.token_urlsafe(32))
        if not hmac.compare_digest(expected, _hash(secret)) or row is None or row.revoked_at is not None:
            return None
        brand_name = session.get(Brand, row.brand_id).name if row.brand_id is not None else None
        return Principal(row.key_id, Role(row.role), row.brand_id, brand_name)


def revoke_key(home: Home, key_id: str) -> None:
    with home.sessions.begin() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
        if row is None:
            raise MarkguardError(f"unknown key {key_id!r}")
        row.revoked_at = dt.datetime.now(dt.UTC)


def authorize(home: Home, header: str, limiter: RateLimiter, *roles: Role) -> Principal:
    """The bearer key of an `Authorization` header, checked for the roles a route allows (admins pass
    every route) and charged to the key's rate limit: 401, 429 or 403 as `ApiError`, else its principal."""
    token = header[7:].strip() if header[:7].lower() == "bearer " else None
    principal = authenticate(home, token)
    if principal is None:
        raise ApiError(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})
    wait = limiter.take(principal.key_id)
    if wait:
        raise ApiError(429, "rate limit exceeded", headers={"Retry-After": str(max(1, round(wait)))})
    if principal.role is not Role.ADMIN and principal.role not in roles:
        raise ApiError(403, f"a {principal.role.value} key cannot do this")
    return principal

