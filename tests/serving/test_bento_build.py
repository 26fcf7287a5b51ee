"""`bentoml build` (the build config in pyproject.toml) makes a Bento that pins the model the service
declares (from the BentoML model store) and declares its environment; the Bento, served from its build
folder with only its own model store, bootstraps the first admin key and scores a photo."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from .real_server import free_port, serving_process

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["vision", "training", "serving", "datasets", "pyproject.toml", "README.md"]
SHIPPED = ROOT / "serving" / "default_model"


def _build(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:  # a copy, so the wheel and build folders never land in the checkout
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    # no home yet: the service declares the shipped default, saving it into this (empty) model store
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
           "MARKGUARD_HOME": str(tmp_path / "no-home")}
    env.pop("MARKGUARD_MODEL", None)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", ".", "-w", "dist"], cwd=src,
                   check=True, env=env, timeout=300)
    r = subprocess.run([sys.executable, "-m", "bentoml", "build"], cwd=src, env=env, timeout=300, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert not (tmp_path / "no-home").exists()  # building creates no home
    bentos = [p for p in (tmp_path / "bentoml" / "bentos" / "markguard").iterdir() if p.name != "latest"]
    assert len(bentos) == 1
    return bentos[0]


@contextlib.contextmanager
def _serve_bento(bento: Path, env: dict[str, str], log: Path):
    port = free_port()
    command = [sys.executable, "-m", "bentoml", "serve", str(bento), "--host", "127.0.0.1", "--port", str(port)]
    with serving_process(command, port, log, env=env, cwd=bento) as (url, _):
        yield url


def _score_path(url: str) -> str:
    """`/v1/score` where the API serves it (the versioned API), else `/score`."""
    paths = httpx.get(url + "/docs.json", timeout=30).json()["paths"]
    return "/v1/score" if "/v1/score" in paths else "/score"


@pytest.mark.slow
def test_bento_pins_its_model_and_serves_from_its_build_folder(tmp_path: Path, grocery: Path) -> None:
    from markguard.serving.bootstrap import generate_key
    from markguard.serving.registry import bento_model_tag
    from markguard.vision.artifact import load_artifact

    bento = _build(tmp_path)
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    assert meta["service"] == "markguard.serving.service:Markguard"
    assert meta["labels"]["project"] == "markguard"
    shipped = load_artifact(SHIPPED)
    tag = bento_model_tag(shipped.tag)
    for svc in meta["services"]:  # `bentoml build` lists the declared model under each service's models
        assert [m["tag"] for m in svc["models"]] == [tag], svc
    name, version = tag.split(":")
    stored = tmp_path / "bentoml" / "models" / name / version
    for f in SHIPPED.iterdir():  # the pinned model, byte for byte (`bentoml export`/containerize bundle it)
        assert (stored / f.name).read_bytes() == f.read_bytes(), f.name
    envs = {e["name"]: e.get("value") for e in meta["envs"]}
    assert envs["MARKGUARD_HOME"] == "/home/bentoml/markguard"
    assert {"MARKGUARD_WORKERS", "MARKGUARD_DATABASE_URL", "MARKGUARD_ADMIN_KEY"} <= set(envs)
    (wheel,) = bento.rglob("markguard-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        requires = [line for line in zf.read("markguard-0.1.0.dist-info/METADATA").decode().splitlines()
                    if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert requires and not any(("scikit-learn" in r or "resvg" in r or "ray" in r) for r in requires)

    # A volume whose home promoted another model (the shipped weights under another tag): the Bento must
    # serve the model it pins, not the home's.
    from markguard.serving.registry import promoted_artifact, register_artifact
    from markguard.serving.state.home import Home

    other = tmp_path / "other-model"
    shutil.copytree(SHIPPED, other)
    card = json.loads((other / "card.json").read_text())
    card["tag"] = "markguard-other-1"
    (other / "card.json").write_text(json.dumps(card))
    home = Home(tmp_path / "volume")
    register_artifact(home, other, promote_it=True)
    assert promoted_artifact(home).tag == "markguard-other-1"
    home.close()

    # Served from the build folder (its models from the store it was built with), the first admin key
    # from the environment, no shell.
    admin_key = generate_key()
    env = {**os.environ, **{k: v for k, v in envs.items() if v}, "BENTOML_HOME": str(tmp_path / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "True", "MARKGUARD_HOME": str(tmp_path / "volume"), "MARKGUARD_WORKERS": "2",
           "MARKGUARD_ADMIN_KEY": admin_key, "MARKGUARD_OCR": "0", "MARKGUARD_EMBED_WORKERS": "1",
           "MARKGUARD_THREADS": "1", "MARKGUARD_RATE": "0.0001", "MARKGUARD_BURST": "20"}  # 20 per 200000 s
    env.pop("MARKGUARD_MODEL", None)
    env.pop("MARKGUARD_DATABASE_URL", None)
    log = tmp_path / "bento.log"
    iconic = sorted(p for p in (grocery / "iconic").rglob("*.jpg") if p.name.lower().startswith("oatly"))[:2]
    photo = sorted((grocery / "train").rglob("Oatly-*.jpg"))[0]
    auth = {"Authorization": f"Bearer {admin_key}"}
    with _serve_bento(bento, env, log) as url:
        assert httpx.post(url + "/brands", json={"name": "Oatly"}, timeout=60).status_code == 401
        r = httpx.post(url + "/brands", json={"name": "Oatly"}, headers=auth, timeout=60)
        assert r.status_code == 201, r.text
        r = httpx.post(url + "/brands/Oatly/references", headers=auth, timeout=300,
                       files=[("files", (p.name, p.read_bytes(), "image/jpeg")) for p in iconic])
        assert r.status_code == 201, r.text
        score = _score_path(url)
        r = httpx.post(url + score, headers=auth, timeout=300, data={"brand": "Oatly", "listing_id": "bento-1"},
                       files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        assert 0 <= r.json()["risk"] <= 1
        assert int(r.headers["ratelimit-remaining"]) < int(r.headers["ratelimit-limit"])
        trace_id = r.headers["x-request-id"]
        # BentoML's own HTTP metrics would label `endpoint` with each raw path: none reach /metrics
        tokens = [secrets.token_hex(6) for _ in range(5)]
        for token in tokens:
            assert httpx.get(f"{url}/{token}/x", timeout=30).status_code == 404
        r = httpx.get(url + "/brands/Oatly", headers=auth, timeout=30)
        assert r.status_code == 200 and r.headers["ratelimit-limit"] == "20"
        left = int(r.headers["ratelimit-remaining"])
        assert 0 < left < 20
        metrics = httpx.get(url + "/metrics", timeout=30).text
        assert not any(token in metrics for token in tokens) and "Oatly" not in metrics
        endpoints = set(re.findall(r'endpoint="([^"]*)"', metrics))
        # only the internal embedder's fixed routes (the entry service's BentoML metrics are off)
        assert endpoints <= {"/embed", "/readyz", "/livez", "/healthz", "/metrics"}, endpoints
        assert 'route="unmatched"' in metrics
        # two workers, one budget per key: of 30 concurrent calls exactly the `left` remaining pass
        prefix = score[: -len("/score")]
        with ThreadPoolExecutor(10) as pool:
            burst = list(pool.map(lambda _: httpx.get(url + prefix + "/brands/Oatly", headers=auth, timeout=60),
                                  range(30)))
        codes = [b.status_code for b in burst]
        assert codes.count(200) == left and codes.count(429) == 30 - left, codes
        assert all(1 <= int(b.headers["retry-after"]) for b in burst if b.status_code == 429)
        burst_ids = {b.headers["x-request-id"] for b in burst}
    print(f"scored through {score}")

    # the home installed the Bento's model, hashes checked, as its promoted model
    home = Home(tmp_path / "volume")
    assert promoted_artifact(home).tag == shipped.tag
    home.close()
    text = log.read_text()
    secret = admin_key.split("_", 2)[2]
    assert secret not in text  # never logged
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    boots = [line for line in lines if line.get("msg") == "admin key bootstrap"]
    assert sorted(b["outcome"] for b in boots) == ["created", "present"]  # two workers, one key
    scored = [line for line in lines if line.get("msg") == "request" and line.get("trace_id") == trace_id]
    assert len(scored) == 1  # one access-log line for the request, under its one id
    assert scored[0]["key_id"] == admin_key.split("_")[1] and scored[0]["brand"] == "Oatly"
    assert scored[0]["path"] == score and scored[0]["status"] == 200
    served_by = {line["pid"] for line in lines if line.get("msg") == "request" and line["trace_id"] in burst_ids}
    assert len(served_by) == 2, served_by  # both workers answered the burst (and shared its budget)
    # BentoML's own access log is off: no second line for the request
    assert sum(1 for line in text.splitlines() if score in line and "request" in line) == 1, text[-4000:]
