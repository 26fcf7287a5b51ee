"""A state home: everything one markguard deployment knows, in one folder. Two homes share nothing.

    HOME/catalog.sqlite     catalog (unless MARKGUARD_DATABASE_URL names another database)
    HOME/secret.key         per-home secret for keyed hashes (serials), mode 0600
    HOME/blobs/ab/<sha256>  enrolled images, content-addressed, written once
    HOME/index/<model tag>/ FAISS index versions and their manifest (see vision.index)
    HOME/models/<tag>/      model artifacts
    HOME/write.lock         held by every writer, so concurrent enrolls queue instead of racing
                            (on PostgreSQL also an advisory lock, for writers on other hosts)

A home is private to the account that runs markguard: folders 0700, files 0600 (the catalog holds
keyed hashes and key hashes, the blobs are brands' unreleased images). An existing home is tightened
when opened.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
import time
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
        self.root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        _private(self.root, _DIR_MODE)
        for sub in ("blobs", "index", "models"):
            (self.root / sub).mkdir(mode=_DIR_MODE, exist_ok=True)
            _private(self.root / sub, _DIR_MODE)
        if database_url is None:
            from markguard.serving.settings import get_settings

            database_url = get_settings().database_url
        url = database_url or f"sqlite:///{self.root / 'catalog.sqlite'}"
        if url == f"sqlite:///{self.root / 'catalog.sqlite'}":
            for name in ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"):
                if name == "catalog.sqlite" or (self.root / name).exists():  # SQLite gives -wal/-shm the db's mode
                    os.close(os.open(self.root / name, os.O_RDWR | os.O_CREAT, _FILE_MODE))
                    _private(self.root / name, _FILE_MODE)
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
    def write_lock(self, *, timeout_s: float | None = None) -> Iterator[bool]:
        """Serialise writers across processes (an enroll, a model promotion, a migration).

        The file lock covers this home's files (blobs, index); on PostgreSQL an advisory lock also covers
        writers of the same catalog on other hosts. Yields True once held; with `timeout_s`, yields False
        when another writer still holds the file lock after that many seconds (a reader that only wants to
        save a repair goes on without saving)."""
        with self._file_lock(timeout_s) as held:
            if not held:
                yield False
                return
            with advisory_lock(self.engine, WRITE_LOCK):
                yield True

    @contextlib.contextmanager
    def photo_lock(self, sha256: str) -> Iterator[None]:
        """Serialise the writers of one photo's references across threads, processes and (on PostgreSQL)
        hosts: a review reads which references earlier reviews made of the photo, then moves them, and
        two reviews at once must not both act on what they read. Taken before `write_lock`, never inside
        it. One of 256 stripes by the photo's hash, so the lock files stay few."""
        stripe = int(self.blob_path(sha256).name[:2], 16)
        folder = self.root / "locks"
        folder.mkdir(mode=_DIR_MODE, exist_ok=True)
        with self._file_lock(None, folder / f"photo-{stripe:02x}.lock"), advisory_lock(self.engine, PHOTO_LOCK + stripe):
            yield

    @contextlib.contextmanager
    def serial_import_lock(self, brand_id: int) -> Iterator[None]:
        """Serialise one brand's serial imports across processes and (on PostgreSQL) hosts: an import
        removes the rows of the brand's imports that never finished, which only holds while none runs.
        Taken before `write_lock`, never inside it."""
        folder = self.root / "locks"
        folder.mkdir(mode=_DIR_MODE, exist_ok=True)
        with self._file_lock(None, folder / f"serials-{brand_id}.lock"), \
                advisory_lock(self.engine, SERIAL_IMPORT_LOCK + brand_id):
            yield

    @contextlib.contextmanager
    def _file_lock(self, timeout_s: float | None = None, path: Path | None = None) -> Iterator[bool]:
        path = self.root / "write.lock" if path is None else path
        with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE), "r+b") as fh:
            held = _flock(fh.fileno(), timeout_s)
            try:
                yield held
            finally:
                if held:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- blobs ---------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise IntegrityError(f"not a SHA-256: {sha256!r}")
        return self.root / "blobs" / sha256[:2] / sha256

    def put_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if path.exists():
            os.utime(path)  # young again: the sweeper leaves a blob alone while a writer is about to name it
        else:
            path.parent.mkdir(mode=_DIR_MODE, exist_ok=True)
            atomic_write_bytes(path, data, mode=_FILE_MODE)
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


def _flock(fd: int, timeout_s: float | None) -> bool:
    if timeout_s is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


_DIR_MODE = 0o700
_FILE_MODE = 0o600
PHOTO_LOCK = 0x6D67_7068_6F74_6F00  # "mgphoto", + one of 256 stripes: PostgreSQL advisory keys of photo_lock
SERIAL_IMPORT_LOCK = 0x2D67_7365_7200_0000  # "mgser" (its top bit cleared: a signed key), + the brand's id


def _private(path: Path, mode: int) -> None:
    """Tighten `path` to `mode` when this account owns it (a shared, read-only home is left as it is)."""
    try:
        if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)
    except OSError:
        pass


def _safe_name(name: str) -> str:
    if not name or name.startswith(".") or any(c not in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_." for c in name):
        raise IntegrityError(f"unsafe name {name!r}")
    return name
