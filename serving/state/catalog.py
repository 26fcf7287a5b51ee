"""The catalog database: SQLite in the home by default, PostgreSQL through MARKGUARD_DATABASE_URL.

The schema is only ever created by Alembic migrations, so the same code upgrades an existing catalog.
On PostgreSQL (`pip install 'markguard[postgres]'`, URL `postgresql+psycopg://user:pass@host/db`)
migrations and writers also take advisory locks, so processes on several hosts sharing one catalog
(and one home folder) queue instead of racing.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from markguard.vision.errors import MarkguardError

__all__ = ["open_engine", "migrate", "session_factory", "advisory_lock", "sqlite_wal", "WRITE_LOCK", "MIGRATE_LOCK"]

_MIGRATIONS = Path(__file__).with_name("migrations")
# PostgreSQL advisory lock keys (any two distinct 64-bit numbers; they only need to be markguard's own).
WRITE_LOCK = 0x6D67_7772_6974_6501  # "mgwrite"
MIGRATE_LOCK = 0x6D67_6D69_6772_6101  # "mgmigra"


def sqlite_wal(cursor: Any, *, seconds: float = 10.0) -> None:
    """Switch a SQLite file to WAL. The switch takes the file's exclusive lock, and SQLite answers
    "database is locked" at once, without its busy handler, while another process opening the new file
    holds it (two workers starting on a fresh home): tried again until `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def open_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise MarkguardError("MARKGUARD_DATABASE_URL is not a database URL (sqlite:///PATH or "
                             "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB)") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise MarkguardError(f"unsupported catalog database {backend!r}: use SQLite or PostgreSQL")
    if backend == "postgresql":
        if parsed.drivername == "postgresql":  # SQLAlchemy's default driver is psycopg2; ours is psycopg 3
            parsed = parsed.set(drivername="postgresql+psycopg")
        try:
            return create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=10)
        except (ModuleNotFoundError, NoSuchModuleError):
            raise MarkguardError("PostgreSQL needs its driver: pip install 'markguard[postgres]'") from None
    if backend == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            sqlite_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def migrate(engine: Engine) -> None:
    """Bring the catalog to the newest schema (a no-op when it is there already)."""
    config = alembic_config(engine)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # released at commit; concurrent starts queue here
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATE_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextlib.contextmanager
def advisory_lock(engine: Engine, key: int) -> Iterator[Connection | None]:
    """Hold a PostgreSQL session-level advisory lock (on its own connection); nothing on SQLite."""
    if engine.dialect.name != "postgresql":
        yield None
        return
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        connection.commit()
        try:
            yield connection
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
