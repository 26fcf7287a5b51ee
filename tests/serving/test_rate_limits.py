"""Rate limits shared by processes (a real SQLite store in the home), `RateLimit-*` headers, and the one
JSON access-log line of each request (one id, the key id, the brand)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from starlette.responses import JSONResponse
from starlette.testclient import TestClient

_TAKER = r"""
import json, sys, time
from markguard.serving.limits import RateLimiter
url, start, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
limiter = RateLimiter(rate=0.1, burst=10, storage_url=url)  # 10 per 100 s
while time.time() < start:
    time.sleep(0.005)
print(json.dumps([limiter.take("key-1") == 0.0 for _ in range(n)]))
"""


def test_two_processes_share_one_budget(tmp_path: Path, database_url: str | None) -> None:
    """On each catalog backend: a SQLite file in the home, or the home's PostgreSQL database."""
    from markguard.serving.ratelimit import storage_url_for_home
    from markguard.serving.state.home import Home

    url = storage_url_for_home(str(tmp_path), database_url)
    assert url == database_url if database_url else url.endswith("ratelimit.sqlite")
    Home(tmp_path / "home").close()  # as the service does: the catalog (and on PostgreSQL its counters' table) first
    start = time.time() + 3.0  # both processes imported and connected, then they race
    procs = [subprocess.Popen([sys.executable, "-c", _TAKER, url, str(start), "8"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out))
    allowed = [sum(r) for r in results]
    # 16 requests against one budget of 10: exactly 10 pass (per-process counters would pass all 16)
    assert sum(allowed) == 10, allowed
    assert all(a >= 2 for a in allowed), allowed  # both processes drew from it


def test_the_counters_table_is_the_catalog_migrations_on_postgresql_and_its_own_file_on_sqlite(
        tmp_path: Path, database_url: str | None) -> None:
    """PostgreSQL: migration 0008 makes `markguard_rate_limits` (a database that was never migrated is
    refused with a clear error, not a failing first request); downgraded and upgraded again, it comes
    back. SQLite: the counters live in the home's `ratelimit.sqlite`, never in the catalog."""
    from alembic import command
    from sqlalchemy import inspect

    from markguard.serving.ratelimit import SqlStorage, storage_url_for_home
    from markguard.serving.state.catalog import alembic_config
    from markguard.serving.state.home import Home
    from markguard.vision.errors import MarkguardError

    url = storage_url_for_home(str(tmp_path / "home"), database_url)
    if database_url:
        with pytest.raises(MarkguardError, match="no markguard_rate_limits table"):
            SqlStorage(url)
    home = Home(tmp_path / "home")
    try:
        storage = SqlStorage(url)
        assert storage.incr("k", 60) == 1 and storage.incr("k", 60) == 2
        in_catalog = inspect(home.engine).has_table("markguard_rate_limits")
        assert in_catalog == bool(database_url)
        if database_url:
            config = alembic_config(home.engine)
            for target in ("0007", "head"):
                with home.engine.begin() as connection:
                    config.attributes["connection"] = connection
                    (command.downgrade if target == "0007" else command.upgrade)(config, target)
                assert inspect(home.engine).has_table("markguard_rate_limits") == (target == "head")
        storage.engine.dispose()
    finally:
        home.close()


def _app(home, limiter):
    from markguard.serving.keys import Role, authorize
    from markguard.serving.limits import ApiError, GuardMiddleware, note_request

    async def app(scope, receive, send):
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            who = authorize(home, headers.get("authorization", ""), limiter, Role.BRAND)
            note_request(brand=who.brand_name)
            response = JSONResponse({"ok": True})
        except ApiError as exc:
            response = JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)
        await response(scope, receive, send)

    return GuardMiddleware(app)


def test_ratelimit_headers_and_one_access_log_line(tmp_path: Path, caplog) -> None:
    from markguard.serving.brands import add_brand
    from markguard.serving.keys import Role, create_key
    from markguard.serving.limits import RateLimiter
    from markguard.serving.ratelimit import storage_url_for_home
    from markguard.serving.state.home import Home

    home = Home(tmp_path / "home")
    with home.sessions.begin() as session:
        add_brand(session, "Oatly")
    key, who = create_key(home, role=Role.BRAND, brand="Oatly")
    limiter = RateLimiter(rate=0.03, burst=3, storage_url=storage_url_for_home(str(home.root), None))
    client = TestClient(_app(home, limiter))
    caplog.set_level(logging.INFO, logger="markguard.serving")
    responses = [client.get("/x", headers={"Authorization": f"Bearer {key}"}) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert [r.headers["ratelimit-limit"] for r in responses] == ["3"] * 4
    assert [r.headers["ratelimit-remaining"] for r in responses] == ["2", "1", "0", "0"]
    assert all(1 <= int(r.headers["ratelimit-reset"]) <= 100 for r in responses)
    assert 1 <= int(responses[3].headers["retry-after"]) <= 100
    assert responses[0].headers["ratelimit-policy"] == "3;w=100"

    lines = [r for r in caplog.records if r.getMessage() == "request"]
    assert len(lines) == 4  # one line per request
    for record, response in zip(lines, responses, strict=True):
        fields = record.fields
        assert fields["trace_id"] == response.headers["x-request-id"]
        assert fields["key_id"] == who.key_id and fields["status"] == response.status_code
        assert fields["brand"] == ("Oatly" if response.status_code == 200 else None)
        assert key not in json.dumps(fields)
    assert len({r.fields["trace_id"] for r in lines}) == 4

    unknown = client.get("/x", headers={"Authorization": "Bearer mg_0123456789abcdef_nope"})
    assert unknown.status_code == 401 and "ratelimit-limit" not in unknown.headers
    home.close()
