"""Every `MARKGUARD_*` environment variable, named once, with its default and its check.

`get_settings()` reads the environment each time it is called (cheap), so a process sees the values
it was started with and tests may change them. Bad values fail at start-up with one line naming the
variable (`markguard` checks them before any command; the service when it is imported).
`markguard config show` prints the effective values with secrets masked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from markguard.vision.errors import MarkguardError

__all__ = ["Settings", "get_settings", "masked", "SECRET_FIELDS"]

SECRET_FIELDS = frozenset({"database_url", "admin_key"})


def _default_data() -> Path:
    """`../shared/data` beside the repository (or beside the working folder)."""
    beside_repo = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return beside_repo if beside_repo.is_dir() else Path.cwd().parent / "shared" / "data"


class Settings(BaseSettings):
    """The effective configuration; `MARKGUARD_<FIELD>` sets each field (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="MARKGUARD_", extra="ignore", frozen=True, env_ignore_empty=True)

    # -- state ---------------------------------------------------------------------------------
    home: Path = Field(Path(".markguard"), description="state home: catalog, blobs, index, models")
    database_url: str | None = Field(
        None, description="catalog database; unset: SQLite in the home. postgresql+psycopg://USER:PASS@HOST:PORT/DB")
    data: Path = Field(
        default_factory=_default_data,
        validation_alias=AliasChoices("MARKGUARD_DATA", "MARKGUARD_SHARED_DATA"),  # the old name still works
        description="data root holding grocery-packages/ and clothing/ (datasets, demo, benchmarks)")

    # -- the service ---------------------------------------------------------------------------
    model: str | None = Field(
        None, description="BentoML model tag the service serves (markguard:VERSION); unset: the home's promoted "
        "model, inside a Bento the model it pins")
    admin_key: SecretStr | None = Field(
        None, description="an admin API key (mg_<16 hex>_<secret of 32+ characters>) created at start-up if the "
        "catalog lacks it: the first admin without a shell; stored hashed, never logged")
    workers: int = Field(1, ge=1, le=64, description="scoring worker processes")
    embed_workers: int | None = Field(
        None, ge=1, le=64, description="embedder processes behind adaptive batching; unset: one per core, at most 4")
    embed_threads: int | None = Field(
        None, ge=1, le=256, description="threads per embedder process; unset: MARKGUARD_THREADS, else cores / embed workers")
    worker_threads: int | None = Field(
        None, ge=1, le=256, description="threads per scoring worker; unset: MARKGUARD_THREADS, else 1")
    threads: int | None = Field(None, ge=1, le=256, description="fallback for both thread counts above")
    max_batch: int = Field(4, ge=1, le=4096, description="crops per embedder forward pass (raise it on a GPU)")
    onnx_cache: Path | None = Field(
        None, description="folder of ONNX graphs exported for ONNX Runtime, shared by processes (read by vision/runtime.py); unset: ~/.cache/markguard/onnx, empty: none")
    max_latency_ms: int = Field(60000, ge=1, description="how long a batch may wait to fill, in ms")
    batching: bool = Field(True, description="0: each request runs its own forward pass in its worker (baseline)")
    ocr: bool = Field(True, description="0: no text reading (no wordmark or serial evidence)")
    ocr_gate: bool = Field(False, description="1: text read and geometry checked only where they can change the "
                           "decision (vision.pipeline.OcrGate), as `markguard scan` scores")
    rate: float = Field(50.0, gt=0, description="requests/s per API key, shared by every worker of the home")
    burst: int = Field(100, ge=1, description="requests an API key may send at once")
    max_body: int = Field(64 * 1024 * 1024, ge=1024, description="largest request body, in bytes")
    console_secure_cookie: bool = Field(True, description="the console's session cookie is Secure (HTTPS only); "
                                        "0 for a console on plain-HTTP loopback")
    console_session_minutes: int = Field(480, ge=1, le=7 * 24 * 60, description="console sign-in lifetime, in minutes")
    stop_timeout: float = Field(30.0, gt=0, le=3600, description="seconds `serve` waits after SIGTERM before it "
                                "kills every process it started")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")):
            raise ValueError("must start with sqlite:/// or postgresql+psycopg://")
        if value.startswith("postgres:"):  # the libpq spelling; SQLAlchemy wants postgresql
            value = "postgresql" + value[len("postgres"):]
        return value

    @field_validator("admin_key")
    @classmethod
    def _admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        from markguard.serving.bootstrap import parse_key

        parse_key(value.get_secret_value().strip())  # ValueError, without echoing the key
        return SecretStr(value.get_secret_value().strip())


def get_settings() -> Settings:
    """The settings from the environment now; a bad value raises one `MarkguardError` naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            name = "MARKGUARD_DATA" if field in ("data", "MARKGUARD_DATA") else f"MARKGUARD_{field.upper()}"
            shown = "" if field in SECRET_FIELDS else f" (got {os.environ.get(name, '')!r})"
            problems.append(f"{name}{shown}: {error['msg']}")
        raise MarkguardError("bad environment: " + "; ".join(problems)) from None


def masked(settings: Settings) -> dict[str, Any]:
    """The settings as plain values, with passwords and other secrets replaced by `***`."""
    values: dict[str, Any] = {}
    for name, value in settings.model_dump().items():
        if name == "admin_key" and value:
            values[name] = "***"
        elif name in SECRET_FIELDS and value:
            values[name] = _mask_url(value)
        elif isinstance(value, Path):
            values[name] = str(value)
        else:
            values[name] = value
    return values


def _mask_url(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "***"
