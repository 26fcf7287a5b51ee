"""A state home: everything one markguard deployment knows, in one folder. Two homes share nothing.

    HOME/catalog.sqlite     catalog (unless MARKGUARD_DATABASE_URL names another database)
    HOME/secret.key         per-home secret for keyed hashes (serials), mode 0600
    HOME/blobs/ab/<sha256>  enrolled images, content-addressed, written once
    HOME/index/<model tag>/ FAISS index versions and their manifest (see vision.index)
    HOME/models/<tag>/      model artifacts
    HOME/write.lock         held by every writer, so concurrent enrolls queue instead of racing
                            (on PostgreSQL also an advisory lock, for writers on other hosts)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from markguard.serving.state.catalog import WRITE_LOCK, advisory_lock, migrate, open_engine, session_factory
from markguard.vision.atomic import atomic_write_bytes
from markguard.vision.errors import IntegrityError, MarkguardError

__all__ = ["Home"]


class Home:
    def __init__(self, root: str | os.PathLike[str], *, database_url: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("blobs", "index", "models"):
            (self.root / sub).mkdir(exist_ok=True)
        if database_url is None:
            from markguard.serving.settings import get_settings

            database_url = get_settings().database_url
        url = database_url or f"sqlite:///{self.root / 'catalog.sqlite'}"
        self.engine: Engine = open_engine(url)
        try:
            with self.write_lock():
                migrate(self.engine)
        except OperationalError as exc:
            self.engine.dispose()
            where = self.engine.url.render_as_string(hide_password=True)
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
            raise MarkguardError(f"cannot open the catalog database {where}: {reason}") from None
        self.sessions: sessionmaker[Session] = session_factory(self.engine)

    # -- paths ---------------------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def index_dir(self, model_tag: str) -> Path:
        return self.root / "index" / _safe_name(model_tag)

    def model_dir(self, model_tag: str) -> Path:
        return self.models_dir / _safe_name(model_tag)

    # -- locking -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Serialise writers across processes (an enroll, a model promotion, a migration).

        The file lock covers this home's files (blobs, index); on PostgreSQL an advisory lock also
        covers writers of the same catalog on other hosts.
        """
        with self._file_lock(), advisory_lock(self.engine, WRITE_LOCK):
            yield

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        with open(self.root / "write.lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- blobs ---------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise IntegrityError(f"not a SHA-256: {sha256!r}")
        return self.root / "blobs" / sha256[:2] / sha256

    def put_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            atomic_write_bytes(path, data)
        return digest

    def get_blob(self, sha256: str) -> bytes:
        data = self.blob_path(sha256).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise IntegrityError(f"blob {sha256[:12]}… is corrupt")
        return data

    # -- secrets -------------------------------------------------------------------------------
    def secret(self) -> bytes:
        """The per-home secret for keyed hashes, created on first use."""
        path = self.root / "secret.key"
        if not path.exists():
            with self._file_lock():
                if not path.exists():
                    atomic_write_bytes(path, secrets.token_bytes(32), mode=0o600)
        return path.read_bytes()

    def keyed_hash(self, text: str) -> str:
        return hmac.new(self.secret(), text.encode("utf-8"), hashlib.sha256).hexdigest()

    def close(self) -> None:
        self.engine.dispose()


def _safe_name(name: str) -> str:
    if not name or name.startswith(".") or any(c not in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_." for c in name):
        raise IntegrityError(f"unsafe name {name!r}")
    return name
