"""A client generated from the real server's `/docs.json` by a standard generator (openapi-python-client),
offline, in the test: it scores a photo and uploads, lists and deletes a reference against a real
`markguard serve`. The generator must raise no warning, so every route (file uploads included) is typed."""

from __future__ import annotations

import importlib
import io
import shutil
import subprocess
import sys

import httpx
import pytest

from .real_server import real_server

GENERATOR_CONFIG = """\
project_name_override: mgclient
package_name_override: mgclient
post_hooks: []
content_type_overrides:
  application/zip: application/octet-stream
  image/jpeg: application/octet-stream
  image/png: application/octet-stream
  image/webp: application/octet-stream
"""


@pytest.fixture(scope="module")
def server(api_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("generated") / "home"
    shutil.copytree(api_home.root, root, ignore=shutil.ignore_patterns("bentoml", "*.lock"))
    with real_server(root, root.parent / "serve.log", env={"MARKGUARD_OCR": "0"}) as (url, _):
        yield url


@pytest.fixture(scope="module")
def mgclient(server, tmp_path_factory):
    """The generated package, imported from a temporary folder (and forgotten afterwards)."""
    work = tmp_path_factory.mktemp("mgclient")
    (work / "docs.json").write_bytes(httpx.get(server + "/docs.json", timeout=30).content)
    (work / "config.yaml").write_text(GENERATOR_CONFIG)
    run = subprocess.run([sys.executable, "-m", "openapi_python_client", "generate", "--path", "docs.json",
                          "--meta", "none", "--output-path", "mgclient", "--config", "config.yaml",
                          "--fail-on-warning"], cwd=work, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and (work / "mgclient" / "client.py").exists(), run.stdout + run.stderr
    sys.path.insert(0, str(work))
    try:
        yield importlib.import_module("mgclient")
    finally:
        sys.path.remove(str(work))
        for name in [n for n in sys.modules if n == "mgclient" or n.startswith("mgclient.")]:
            del sys.modules[name]


def test_generated_client_scores_and_manages_references(server, mgclient, api_home, grocery):
    from mgclient import AuthenticatedClient
    from mgclient.api.references import delete_reference, list_references, upload_references
    from mgclient.api.scoring import score
    from mgclient.models import BodyScore, BodyUploadReferences, Problem, ReferencesOut, ScoreOut, UploadOut
    from mgclient.types import File

    photo = api_home.photos[0]
    platform = AuthenticatedClient(base_url=server, token=api_home.keys["platform"], timeout=httpx.Timeout(120))
    body = BodyScore(image=File(payload=io.BytesIO(photo.read_bytes()), file_name=photo.name, mime_type="image/jpeg"),
                     brand="Oatly", listing_id="gen-1", title="Oatly oat drink")
    scored = score.sync_detailed(client=platform, body=body)
    assert scored.status_code == 200, scored.content
    assert isinstance(scored.parsed, ScoreOut)
    assert 0 <= scored.parsed.risk <= 1 and scored.parsed.claimed.brand == "Oatly"
    assert scored.parsed.matches and scored.parsed.matches[0].reference_id >= 1

    arla = AuthenticatedClient(base_url=server, token=api_home.keys["arla"], timeout=httpx.Timeout(120))
    image = sorted((grocery / "iconic").rglob("Arla-*.jpg"))[6]
    upload = upload_references.sync_detailed(
        "Arla", client=arla, body=BodyUploadReferences(
            files=[File(payload=io.BytesIO(image.read_bytes()), file_name=image.name, mime_type="image/jpeg")],
            product="Arla-Generated"))
    assert upload.status_code == 201, upload.content
    assert isinstance(upload.parsed, UploadOut) and len(upload.parsed.added) == 1
    new_id = upload.parsed.added[0]

    listed = list_references.sync("Arla", client=arla)
    assert isinstance(listed, ReferencesOut)
    assert {r.id: r.product for r in listed.references}[new_id] == "Arla-Generated"
    assert delete_reference.sync_detailed("Arla", new_id, client=arla).status_code == 200
    assert new_id not in {r.id for r in list_references.sync("Arla", client=arla).references}

    # errors come back typed too: another brand's references do not exist for this key
    other = list_references.sync_detailed("Oatly", client=arla)
    assert other.status_code == 404 and isinstance(other.parsed, Problem) and other.parsed.code
