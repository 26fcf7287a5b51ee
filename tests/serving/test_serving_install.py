"""A serving install (`pip install markguard`, no extras) imports and runs the service and the CLI: the
training-only and optional packages are blocked in a fresh interpreter, and every serving module loads."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# the import names of what [train], [ray], [postgres] and [dev] add
BLOCKED = ["sklearn", "simple_icons_pack", "resvg_py", "ray", "psycopg", "skimage", "hypothesis", "pytest"]

_SCRIPT = r"""
import importlib.abc, json, sys
blocked = set(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"blocked: {name}", name=name)
        return None

sys.meta_path.insert(0, Block())
import markguard.serving.service  # the BentoML service (declares and stores its model)
import markguard.serving.api, markguard.serving.bootstrap, markguard.serving.ratelimit
from markguard.serving.cli import main
try:
    main(["--help"])  # builds every command's parser
except SystemExit as exc:
    assert exc.code == 0, exc.code
print(json.dumps(sorted(n for n in sys.modules if n.split(".")[0] in blocked)))
"""


def test_pyproject_keeps_training_deps_out_of_the_serving_install() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    for name in ("scikit-learn", "simple-icons-pack", "resvg-py", "ray", "psycopg", "pytest"):
        assert name not in base, name
    extras = project["optional-dependencies"]
    assert {"train", "ray", "postgres", "dev"} <= set(extras)
    assert any(d.startswith("limits") for d in project["dependencies"])  # the shared rate limit


def test_serving_modules_import_without_training_packages(tmp_path: Path) -> None:
    env = {**os.environ, "MARKGUARD_HOME": str(tmp_path / "home"), "BENTOML_HOME": str(tmp_path / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "True"}
    r = subprocess.run([sys.executable, "-c", _SCRIPT, ",".join(BLOCKED)], capture_output=True, text=True,
                       env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"
