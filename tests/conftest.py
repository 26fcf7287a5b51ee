"""Shared fixtures: real data from ../shared/data, a real model artifact, fresh state homes, and a
catalog on each backend (SQLite, and PostgreSQL when `MARKGUARD_TEST_DATABASE_URL` names a server)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from markguard.serving.settings import get_settings

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = get_settings().data  # MARKGUARD_DATA, else ../shared/data
GROCERY = SHARED_DATA / "grocery-packages"
GROZI = SHARED_DATA / "grozi120-insitu"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def grocery() -> Path:
    if not GROCERY.is_dir():
        pytest.skip(f"shared grocery data not found at {GROCERY}")
    return GROCERY


@pytest.fixture(scope="session")
def grozi() -> Path:
    """The GroZi-120 in-store frames (evaluation only: never train on them)."""
    if not GROZI.is_dir():
        pytest.skip(f"shared GroZi-120 frames not found at {GROZI}")
    return GROZI


@pytest.fixture(scope="session")
def fresh_synth(grocery: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Listing photos composed with a seed no build of the default config uses (new placements,
    backgrounds and transforms), at the default 256 px."""
    from markguard.datasets.synth import SynthOptions, build_synth

    out = tmp_path_factory.mktemp("synth-fresh") / "build"
    build_synth(out, data_root=grocery.parent, progress=False,
                opts=SynthOptions(brands=10, per_brand=2, size=256, val_fraction=0.0, test_fraction=0.0, seed=97))
    return out


@pytest.fixture(scope="session")
def imagenet_artifact(tmp_path_factory: pytest.TempPathFactory):
    from markguard.serving.registry import PROVISIONAL_FUSION
    from markguard.vision.artifact import build_imagenet_artifact

    return build_imagenet_artifact(tmp_path_factory.mktemp("models") / "imagenet", fusion=PROVISIONAL_FUSION)


@pytest.fixture(scope="session")
def verifier_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model with the candidate mark verifier and the fusion `markguard calibrate --verifier`
    fitted with it (`training/experiments/issue21/verifier-t4/`: measured, not shipped), as a folder."""
    import json

    from markguard.training.recalibrate import write_recalibrated
    from markguard.vision.artifact import load_artifact

    candidate = REPO / "training" / "experiments" / "issue21" / "verifier-t4"
    path = tmp_path_factory.mktemp("models") / "with-verifier"
    write_recalibrated(load_artifact(REPO / "serving" / "default_model"), path, verifier=candidate,
                       fusion=json.loads((candidate / "candidate_fusion.json").read_text()),
                       card=json.loads((candidate / "candidate_card.json").read_text()))
    return path


@pytest.fixture(scope="session")
def imagenet_embedder(imagenet_artifact):
    return imagenet_artifact.load_embedder()


# -- catalog backends -------------------------------------------------------------------------
# A test that uses `database_url` (directly or through `home_dir`) runs once per backend; mark it
# `sqlite_only` when it measures something of SQLite's (file contents, memory) rather than the catalog,
# `postgresql_only` when only a server can have it (several hosts on one catalog).
BACKENDS = ("sqlite", "postgresql")
TEST_DATABASE_URL = os.environ.get("MARKGUARD_TEST_DATABASE_URL")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "catalog_backend" in metafunc.fixturenames:
        backends = list(BACKENDS)
        if metafunc.definition.get_closest_marker("sqlite_only"):
            backends = ["sqlite"]
        elif metafunc.definition.get_closest_marker("postgresql_only"):
            backends = ["postgresql"]
        metafunc.parametrize("catalog_backend", backends, indirect=True)


@pytest.fixture()
def catalog_backend(request: pytest.FixtureRequest) -> str:
    return request.param


def postgres_admin_url() -> str:
    """The test server's URL; skips locally when none is configured, fails in CI (where .ci/run starts one)."""
    reason = ("no PostgreSQL server for the catalog tests: set MARKGUARD_TEST_DATABASE_URL "
              '(`eval "$(.ci/postgres start)"` starts one)')
    if not TEST_DATABASE_URL:
        if IN_CI:
            pytest.fail(reason + "; CI must run them", pytrace=False)
        pytest.skip(reason)
    try:
        import psycopg  # noqa: F401
    except ModuleNotFoundError:
        message = "the PostgreSQL driver is missing: pip install -e '.[postgres]'"
        pytest.fail(message, pytrace=False) if IN_CI else pytest.skip(message)
    return TEST_DATABASE_URL


@pytest.fixture()
def database_url(catalog_backend: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str | None]:
    """MARKGUARD_DATABASE_URL for this test: unset (SQLite in the home), or a fresh PostgreSQL
    database, created for the test and dropped after it."""
    if catalog_backend == "sqlite":
        monkeypatch.delenv("MARKGUARD_DATABASE_URL", raising=False)
        yield None
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = make_url(postgres_admin_url())
    name = f"mg_test_{uuid.uuid4().hex[:16]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = admin.set(database=name).render_as_string(hide_password=False)
        monkeypatch.setenv("MARKGUARD_DATABASE_URL", url)
        yield url
        _drop_database(engine, name)
    finally:
        engine.dispose()


def _drop_database(engine: Any, name: str, *, tries: int = 20) -> None:
    """DROP DATABASE WITH (FORCE): a Home the test left open still holds connections. FORCE also
    terminates an autovacuum worker in the database, which needs pg_signal_backend (.ci/postgres grants
    it); on a server where the role lacks it, the drop is tried again once the worker is done."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    for attempt in range(tries):
        try:
            with engine.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except DBAPIError as exc:
            if "pg_signal_backend" not in str(exc) or attempt == tries - 1:
                raise
            time.sleep(0.25)


@pytest.fixture()
def home_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str | None) -> Path:
    """A fresh, empty state home on each catalog backend; MARKGUARD_HOME points at it so commands need no --home."""
    home = tmp_path / "home"
    monkeypatch.setenv("MARKGUARD_HOME", str(home))
    return home
