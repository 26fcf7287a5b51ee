"""A `limits` storage on a SQL database, so every worker process (and, on PostgreSQL, every host) of one
home draws from one rate-limit budget.

`SqlStorage` implements the counters `limits` needs for its sliding-window-counter strategy: `incr` is one
atomic `INSERT ... ON CONFLICT DO UPDATE ... RETURNING` (SQLite 3.35+ and PostgreSQL), which restarts a
counter whose window expired; the strategy's weighting of the previous and current windows is the
library's (`TimestampedSlidingWindow` keys, as its Redis and memcached storages use).

On SQLite the counters live in their own file in the home (`HOME/ratelimit.sqlite`, WAL,
`synchronous=OFF`: a lost counter after a power cut is harmless), never in the catalog, so the request
path does not queue behind catalog writers. On PostgreSQL they live in the catalog database, in the
table `markguard_rate_limits` (not part of the catalog's migrations: created if missing, safe to drop).
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
    case,
    create_engine,
    delete,
    event,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

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
        _META.create_all(self.engine, checkfirst=True)
        if self.engine.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        self._insert = insert

    @staticmethod
    def _engine(uri: str) -> Engine:
        url = make_url(uri)
        if url.get_backend_name() != "sqlite":
            return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)
        engine = create_engine(url, connect_args={"timeout": 10})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=OFF")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

        return engine

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return SQLAlchemyError

    # -- counters ------------------------------------------------------------------------------------
    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        t = _TABLE
        stmt = self._insert(t).values(key=key, count=amount, expires_at=now + expiry)
        expired = t.c.expires_at <= now
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.key],
            set_={"count": case((expired, amount), else_=t.c.count + amount),
                  "expires_at": case((expired, now + expiry), else_=t.c.expires_at)},
        ).returning(t.c.count)
        with self.engine.begin() as conn:
            count = int(conn.execute(stmt).scalar_one())
            if random.random() < 0.001:  # now and then, forget expired windows
                conn.execute(delete(t).where(t.c.expires_at <= now))
        return count

    def decr(self, key: str, amount: int = 1) -> None:
        t = _TABLE
        with self.engine.begin() as conn:
            conn.execute(t.update().where(t.c.key == key).values(count=t.c.count - amount))

    def _row(self, key: str) -> tuple[int, float] | None:
        t = _TABLE
        with self.engine.connect() as conn:
            row = conn.execute(select(t.c.count, t.c.expires_at).where(t.c.key == key)).first()
        if row is None or row.expires_at <= time.time():
            return None
        return int(row.count), float(row.expires_at)

    def get(self, key: str) -> int:
        row = self._row(key)
        return row[0] if row else 0

    def get_expiry(self, key: str) -> float:
        row = self._row(key)
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
        previous_count, current_count = self.get(previous_key), self.get(current_key)
        previous_ttl = 0.0 if previous_count == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous_count, previous_ttl, current_count, current_ttl

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        previous_key, current_key = self.sliding_window_keys(key, expiry, time.time())
        self.clear(previous_key)
        self.clear(current_key)
