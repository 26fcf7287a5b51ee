"""`bentoml build` (the build config in pyproject.toml) makes a Bento that carries the default model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["vision", "training", "serving", "datasets", "pyproject.toml", "README.md"]


@pytest.mark.slow
def test_bentoml_build_includes_the_default_model(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:  # a copy, so the wheel and build folders never land in the checkout
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", ".", "-w", "dist"], cwd=src,
                   check=True, env=env, timeout=300)
    subprocess.run([str(bin_dir / "bentoml"), "build"], cwd=src, check=True, env=env, timeout=300,
                   capture_output=True)

    bentos = [p for p in (tmp_path / "bentoml" / "bentos" / "markguard").iterdir() if p.name != "latest"]
    assert len(bentos) == 1
    bento = bentos[0]
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    assert meta["service"] == "markguard.serving.service:Markguard"
    assert meta["labels"]["project"] == "markguard"
    shipped = {p.name: p.read_bytes() for p in (ROOT / "serving" / "default_model").iterdir()}
    assert {"weights.safetensors", "embedder.json", "fusion.json", "card.json"} <= set(shipped)
    (wheel,) = bento.rglob("markguard-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        for name, data in shipped.items():  # the model the service loads, byte for byte
            assert zf.read(f"markguard/serving/default_model/{name}") == data
