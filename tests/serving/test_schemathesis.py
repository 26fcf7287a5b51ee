"""Schemathesis against a real `markguard serve`, from the schema it serves at `/docs.json`: a fixed seed,
bounded examples, every phase (examples, coverage, fuzzing, stateful), and zero failures of the checks below.

The key is an admin's, so every route is reachable (`ignored_auth` checks that dropping it is refused).
`positive_data_acceptance` is left out on purpose: it expects every schema-valid request to succeed, and
validity the schema cannot express (the bytes of an image, a look-alike brand name, a policy whose
thresholds cross) is refused with a documented 4xx. Everything else is on, unweakened.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from .real_server import real_server

SEED = 20261203
MAX_EXAMPLES = 12  # per operation and phase
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
          "missing_required_header", "unsupported_method", "allow_header_conformance", "ignored_auth",
          "use_after_free", "ensure_resource_availability")
SCHEMA = "/docs.json"
# the home's brands, mixed into half of the generated brand names, so the brand routes are reached past 404
CONFIG = """
[dictionaries.brands]
values = ["Oatly", "Arla"]

[parameters]
"path.brand" = { dictionary = "brands", probability = 0.5 }
"query.brand" = { dictionary = "brands", probability = 0.5 }
"""


@pytest.fixture(scope="module")
def server(api_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("schemathesis") / "home"  # a private copy: the run creates and deletes
    shutil.copytree(api_home.root, root, ignore=shutil.ignore_patterns("bentoml", "*.lock"))
    env = {"MARKGUARD_OCR": "0", "MARKGUARD_RATE": "10000", "MARKGUARD_BURST": "10000"}
    with real_server(root, root.parent / "serve.log", env=env) as (url, _):
        yield url, api_home.keys["admin"], root.parent / "serve.log"


def test_schemathesis_finds_no_failure(server, tmp_path):
    url, admin, log = server
    report, config = tmp_path / "schemathesis.json", tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", url + SCHEMA,
               "-H", f"Authorization: Bearer {admin}", "--checks", ",".join(CHECKS), "--seed", str(SEED),
               "--max-examples", str(MAX_EXAMPLES), "--workers", "1", "--request-timeout", "120",
               "--no-color", "--report", "json", "--report-json-path", str(report)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**os.environ, "NO_COLOR": "1"})
    out = run.stdout + run.stderr
    assert report.exists(), out[-6000:]
    result = json.loads(report.read_text())
    summary = out[out.find("SUMMARY") - 40:] if "SUMMARY" in out else out[-3000:]
    failing = {f["title"]: f["operations"] for f in result["failures"]}
    print(out)  # each failing case, its response and a curl line to reproduce it (shown when the test fails)
    assert not result["failures"] and not result["errors"], failing
    assert run.returncode == 0 and result["exit_code"] == 0, summary
    operations, cases = result["operations"], result["test_cases"]
    assert operations["tested"] == operations["selected"] >= 20, operations
    assert cases["generated"] >= 20 * MAX_EXAMPLES, cases  # not vacuous: hundreds of real requests
    assert all(p["status"] in ("success", "skip") for p in result["phases"].values()), result["phases"]
    assert "Traceback" not in log.read_text(errors="replace")  # no 5xx hidden behind a documented status
