"""The attacks of issue 20 against a real `markguard serve` (BentoML, its workers, uvicorn's multipart
parsing): the hostile corpus, a catastrophic serial pattern, `/metrics` under random paths, and the
scoring worker's peak memory for the largest upload and batch the caps allow."""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from markguard.serving.caps import CAPS

from .hostile import HOSTILE_IMAGES, call, hostile_zips, solid_png
from .real_server import descendants, real_server

FIGURES = Path(os.environ.get("MARKGUARD_ATTACK_FIGURES", "")) if os.environ.get("MARKGUARD_ATTACK_FIGURES") else None


@pytest.fixture(scope="module")
def server(attack_home, tmp_path_factory):
    log = tmp_path_factory.mktemp("served") / "serve.log"
    with real_server(attack_home.root, log, env={"MARKGUARD_OCR": "0"}) as (url, proc):
        with httpx.Client(base_url=url, timeout=300) as client:
            yield client, proc


def _scoring_worker(proc) -> psutil.Process:
    """The process serving the `markguard` entry service (not the embedder, not BentoML's manager)."""
    for p in descendants(proc.pid):
        line = " ".join(p.cmdline())
        if "_bentoml_impl.worker" in line and "markguard-embedder" not in line and "Embedder" not in line:
            return p
    raise AssertionError([" ".join(p.cmdline()) for p in descendants(proc.pid)])


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM, the peak resident set


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def test_hostile_zip_corpus(server, attack_home):
    client, _ = server
    arla = attack_home.keys["arla"]
    for name, (data, allowed, word) in hostile_zips().items():
        r = call(client, "POST", "/v1/brands/Arla/references", arla, files={"files": (f"{name}.zip", data)})
        assert r.status_code in allowed, (name, r.status_code, r.text)
        assert word in r.json()["detail"], (name, r.text)
    assert client.get("/readyz").status_code == 200


def test_hostile_image_corpus(server, attack_home):
    client, _ = server
    for name, (data, allowed) in HOSTILE_IMAGES.items():
        r = call(client, "POST", "/v1/score", attack_home.keys["platform"], files={"image": (f"{name}.png", data)})
        assert r.status_code in allowed | {200}, (name, r.status_code, r.text)
        r = call(client, "POST", "/v1/brands/Arla/references", attack_home.keys["arla"],
                 files={"files": (f"{name}.png", data)})
        assert r.status_code in allowed, (name, r.status_code, r.text)


def test_a_catastrophic_pattern_stalls_no_tenant(server, attack_home):
    client, _ = server
    r = call(client, "PATCH", "/v1/brands/Oatly", attack_home.keys["oatly"], json={"serial_pattern": r"(x+)+y"})
    assert r.status_code == 200, r.text
    lines = "".join("x" * n + "!\n" for n in (30, 31, 32))
    done = {}

    def attack() -> None:
        done["import"] = call(client, "POST", "/v1/brands/Oatly/serials", attack_home.keys["oatly"],
                              files={"file": ("s.txt", lines)})

    started = time.perf_counter()
    thread = threading.Thread(target=attack)
    thread.start()
    time.sleep(0.2)
    r = call(client, "POST", "/v1/score", attack_home.keys["platform"], data={"brand": "Arla"},
             files={"image": ("p.jpg", attack_home.photos[2].read_bytes())})
    other_tenant = time.perf_counter() - started
    thread.join(60)
    assert r.status_code == 200 and done["import"].status_code == 200, done["import"].text
    assert other_tenant < 15 and time.perf_counter() - started < 20


def test_metrics_stay_bounded_under_random_paths(server):
    client, _ = server
    tokens = [secrets.token_hex(8) for _ in range(300)]
    for token in tokens:
        assert client.get(f"/{token}").status_code in (401, 404)
    text = client.get("/metrics").text
    assert not any(token in text for token in tokens)
    assert 'route="unmatched"' in text and "Oatly" not in text and "Arla" not in text
    assert len(text) < 200_000, len(text)
    assert "bentoml_service_adaptive_batch_size" in text  # the embedder's batching metrics are still there


def test_peak_memory_of_the_largest_allowed_batch_and_upload(server, attack_home):
    client, proc = server
    worker = _scoring_worker(proc)
    # the largest batch the pixel budget allows: two RGBA PNGs (alpha on white: the costliest decode)
    batch = [solid_png(7200, 5400, (200, 30, 40, 128)), solid_png(5000, 5000, (20, 30, 40, 128))]
    assert 7200 * 5400 + 5000 * 5000 <= CAPS.score_pixels
    figures = {"baseline_rss_mib": _kib(worker.pid, "VmRSS") // 1024}
    _reset_peak(worker.pid)
    r = call(client, "POST", "/v1/score_batch", attack_home.keys["platform"],
             files=[("images", (f"{i}.png", data)) for i, data in enumerate(batch)])
    assert r.status_code == 200, r.text
    figures["batch_peak_rss_mib"] = _kib(worker.pid, "VmHWM") // 1024
    # the largest reference upload the pixel budget allows: 5 × 38.9 MP, decoded one at a time
    n = CAPS.upload_pixels // (7200 * 5400)
    upload = [solid_png(7200, 5400, (i * 19 % 256, 80, 200, 100)) for i in range(n)]
    figures["upload_body_kib"] = sum(len(x) for x in upload) // 1024
    _reset_peak(worker.pid)
    started = time.perf_counter()
    r = call(client, "POST", "/v1/brands/Arla/references", attack_home.keys["arla"],
             files=[("files", (f"{i}.png", data)) for i, data in enumerate(upload)])
    assert r.status_code == 201, r.text
    figures["upload_seconds"] = round(time.perf_counter() - started, 1)
    figures["upload_peak_rss_mib"] = _kib(worker.pid, "VmHWM") // 1024
    figures["upload_images"] = n
    print(json.dumps(figures))
    if FIGURES is not None:
        FIGURES.write_text(json.dumps(figures, indent=1))
    # the baseline holds the model, the catalog and the index; what one request adds stays under 1 GiB
    assert figures["batch_peak_rss_mib"] - figures["baseline_rss_mib"] < 1024, figures
    assert figures["upload_peak_rss_mib"] - figures["baseline_rss_mib"] < 1024, figures
