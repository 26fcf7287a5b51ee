"""A real home for the API tests: the shipped model, two brands with real references, one key per role."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import pytest


@dataclasses.dataclass
class ApiHome:
    root: Path
    keys: dict[str, str]  # admin, platform, moderator, oatly (brand), arla (brand)
    references: dict[str, list[int]]
    photos: list[Path]  # listing photos (train split) of Oatly and Arla


def _iconic(grocery: Path, brand: str) -> list[Path]:
    return sorted(p for p in (grocery / "iconic").rglob("*.jpg") if p.name.lower().startswith(brand))


@pytest.fixture(scope="session")
def api_home(tmp_path_factory: pytest.TempPathFactory, grocery: Path) -> ApiHome:
    from markguard.serving.brands import add_brand
    from markguard.serving.enroll import collect_inputs, enroll
    from markguard.serving.keys import Role, create_key
    from markguard.serving.registry import ensure_default_model
    from markguard.serving.state.home import Home

    root = tmp_path_factory.mktemp("api") / "home"
    home = Home(root)
    artifact = ensure_default_model(home)
    model = artifact.load_embedder(fuse=True)
    refs = {}
    with home.sessions.begin() as session:
        add_brand(session, "Oatly")
        add_brand(session, "Arla")
    for name in ("Oatly", "Arla"):
        report = enroll(home, artifact, model, brand=name,
                        inputs=collect_inputs(_iconic(grocery, name.lower())[:3]))
        refs[name] = report.added
    keys = {role: create_key(home, role=Role(role))[0] for role in ("admin", "platform", "moderator")}
    keys["oatly"] = create_key(home, role=Role.BRAND, brand="Oatly")[0]
    keys["arla"] = create_key(home, role=Role.BRAND, brand="Arla")[0]
    photos = sorted((grocery / "train").rglob("Oatly-*.jpg"))[:2] + sorted((grocery / "train").rglob("Arla-*.jpg"))[:1]
    home.close()
    return ApiHome(root, keys, refs, photos)


# -- the attack tests: a private copy of the home (attacks change brands and policies) -----------------
@pytest.fixture(scope="module")
def attack_home(api_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("attack") / "home"
    shutil.copytree(api_home.root, root, ignore=shutil.ignore_patterns("bentoml", "*.lock"))
    return dataclasses.replace(api_home, root=root)


@pytest.fixture(scope="module")
def attack_client(attack_home):
    from starlette.testclient import TestClient

    from markguard.serving.api import Backend, build_app, local_embed
    from markguard.serving.engine import ScoringEngine
    from markguard.serving.limits import GuardMiddleware, RateLimiter
    from markguard.serving.state.home import Home

    engine = ScoringEngine(Home(attack_home.root), ocr=False)
    backend = Backend(engine=engine, embed=local_embed(engine), limiter=RateLimiter(rate=1000.0, burst=1000))
    return TestClient(GuardMiddleware(build_app(backend)), raise_server_exceptions=False)


@pytest.fixture
def needs_ray() -> None:
    """Skip without Ray, without importing it: imported before `ray_head` sets the cluster's settings
    (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`), Ray reads them too late and its client looks for the
    cluster at the host's IP instead of 127.0.0.1 (a hang, then "Failed to connect to GCS")."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (the ray extra)")
