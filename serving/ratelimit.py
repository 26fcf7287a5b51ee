"""A `limits` storage on a SQL database, so every worker process (and, on PostgreSQL, every host) of one
home draws from one rate-limit budget.

`SqlStorage` implements the counters `limits` needs for its sliding-window-counter strategy: `incr` is one
atomic `INSERT ... ON CONFLICT DO UPDATE ... RETURNING` (SQLite 3.35+ and PostgreSQL), which restarts a
counter whose window expired, and one `SELECT` reads both windows; the strategy's weighting of the previous and current windows is the
library's (`TimestampedSlidingWindow` keys, as its Redis and memcached storages use).

On SQLite the counters live in their own file in the home (`HOME/ratelimit.sqlite`, WAL,
`synchronous=OFF`: a lost counter after a power cut is harmless), never in the catalog, so the request
path does not queue behind catalog writers; the storage creates its table there. On PostgreSQL they
live in the catalog database, in the table `markguard_rate_limits`, which the catalog's migration 0008
creates (opening the `Home` migrates it, under the migration advisory lock, before a server builds its
limiter); a database that lacks it is refused with a clear error. Counters only: safe to empty.
"""

from __future__ import annotations

import random
import time
from math import floor

from limits.storage.base import SlidingWindowCounterSupport, Storage, TimestampedSlidingWindow
from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from markguard.serving.state.catalog import sqlite_wal
from markguard.vision.errors import MarkguardError

__all__ = ["SqlStorage", "storage_url_for_home"]

_META = MetaData()
_TABLE = Table(
    "markguard_rate_limits", _META,
    Column("key", String(300), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("expires_at", Float, nullable=False),
)


def storage_url_for_home(root: str, database_url: str | None) -> str:
    """Where a home's rate-limit counters live: its PostgreSQL catalog database, else a SQLite file."""
    if database_url and database_url.startswith("postgresql"):
        return database_url
    return f"sqlite:///{root}/ratelimit.sqlite"


class SqlStorage(Storage, SlidingWindowCounterSupport, TimestampedSlidingWindow):
    """Counters in one SQL table; see the module docstring."""

    STORAGE_SCHEME = ["markguard+sql"]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: float | str | bool) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.url = uri
        self.engine = self._engine(uri)
        with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":  # the home's own counters file: every worker may create it
                conn.execute(self._CREATE)
            elif not inspect(conn).has_table(_TABLE.name):
                raise MarkguardError(f"the catalog database {self.engine.url.render_as_string(hide_password=True)}"
                                     f" has no {_TABLE.name} table: open the home first (its migrations make it)")

    @staticmethod
    def _engine(uri: str) -> Engine:
        url = make_url(uri)
        if url.get_backend_name() != "sqlite":
            return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)
        engine = create_engine(url, connect_args={"timeout": 10})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout=10000")
            sqlite_wal(cursor)
            cursor.execute("PRAGMA synchronous=OFF")
            cursor.close()

        return engine

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return SQLAlchemyError

    # -- counters (plain SQL, the same on SQLite and PostgreSQL; compiled once) -----------------------
    _INCR = text(
        'INSERT INTO markguard_rate_limits ("key", "count", expires_at) VALUES (:key, :amount, :expires) '
        'ON CONFLICT ("key") DO UPDATE SET '
        '"count" = CASE WHEN markguard_rate_limits.expires_at <= :now THEN :amount '
        'ELSE markguard_rate_limits."count" + :amount END, '
        'expires_at = CASE WHEN markguard_rate_limits.expires_at <= :now THEN :expires '
        'ELSE markguard_rate_limits.expires_at END '
        'RETURNING "count"')
    _CREATE = text('CREATE TABLE IF NOT EXISTS markguard_rate_limits ("key" VARCHAR(300) NOT NULL PRIMARY KEY, '
                   '"count" INTEGER NOT NULL, expires_at FLOAT NOT NULL)')
    _DECR = text('UPDATE markguard_rate_limits SET "count" = "count" - :amount WHERE "key" = :key')
    _GET = text('SELECT "key", "count", expires_at FROM markguard_rate_limits '
                'WHERE "key" IN (:a, :b) AND expires_at > :now')
    _PURGE = text("DELETE FROM markguard_rate_limits WHERE expires_at <= :now")

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        with self.engine.begin() as conn:
            count = int(conn.execute(self._INCR, {"key": key, "amount": amount, "expires": now + expiry,
                                                  "now": now}).scalar_one())
            if random.random() < 0.001:  # now and then, forget expired windows
                conn.execute(self._PURGE, {"now": now})
        return count

    def decr(self, key: str, amount: int = 1) -> None:
        with self.engine.begin() as conn:
            conn.execute(self._DECR, {"key": key, "amount": amount})

    def _rows(self, a: str, b: str) -> dict[str, tuple[int, float]]:
        with self.engine.connect() as conn:
            rows = conn.execute(self._GET, {"a": a, "b": b, "now": time.time()}).all()
        return {row[0]: (int(row[1]), float(row[2])) for row in rows}

    def get(self, key: str) -> int:
        row = self._rows(key, key).get(key)
        return row[0] if row else 0

    def get_expiry(self, key: str) -> float:
        row = self._rows(key, key).get(key)
        return row[1] if row else time.time()

    def check(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(select(1))
            return True
        except SQLAlchemyError:
            return False

    def reset(self) -> int | None:
        with self.engine.begin() as conn:
            return conn.execute(delete(_TABLE)).rowcount

    def clear(self, key: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(_TABLE).where(_TABLE.c.key == key))

    # -- the sliding window counter (the logic of limits' own storages) ---------------------------------
    def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = time.time()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        previous_count, previous_ttl, current_count, _ = self._window(previous_key, current_key, expiry, now)
        if floor(previous_count * previous_ttl / expiry + current_count) + amount > limit:
            return False
        current_count = self.incr(current_key, 2 * expiry, amount=amount)
        if floor(previous_count * previous_ttl / expiry + current_count) > limit:
            self.decr(current_key, amount)  # another process won the race: give the entry back
            return False
        return True

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        now = time.time()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        return self._window(previous_key, current_key, expiry, now)

    def _window(self, previous_key: str, current_key: str, expiry: int, now: float) -> tuple[int, float, int, float]:
        rows = self._rows(previous_key, current_key)  # one query for both windows
        previous_count, current_count = rows.get(previous_key, (0, 0.0))[0], rows.get(current_key, (0, 0.0))[0]
        previous_ttl = 0.0 if previous_count == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous_count, previous_ttl, current_count, current_ttl

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        previous_key, current_key = self.sliding_window_keys(key, expiry, time.time())
        self.clear(previous_key)
        self.clear(current_key)
