"""Shared fixtures: real data from ../shared/data, a real model artifact, fresh state homes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MARKGUARD_SHARED_DATA", REPO.parent / "shared" / "data"))
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
def imagenet_artifact(tmp_path_factory: pytest.TempPathFactory):
    from markguard.serving.models import PROVISIONAL_FUSION
    from markguard.vision.artifact import build_imagenet_artifact

    return build_imagenet_artifact(tmp_path_factory.mktemp("models") / "imagenet", fusion=PROVISIONAL_FUSION)


@pytest.fixture(scope="session")
def imagenet_embedder(imagenet_artifact):
    return imagenet_artifact.load_embedder()


@pytest.fixture()
def home_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty state home; MARKGUARD_HOME points at it so commands need no --home."""
    home = tmp_path / "home"
    monkeypatch.setenv("MARKGUARD_HOME", str(home))
    monkeypatch.delenv("MARKGUARD_DATABASE_URL", raising=False)
    return home
