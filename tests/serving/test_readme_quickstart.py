"""The README's Quickstart, run as written after the demo (`make run`'s first step), block by block, in order.

The blocks run in bash (`set -euo pipefail`) in a fresh folder laid out like a checkout: `.venv` is this
checkout's, `../shared/data` the shared data, and `.markguard` the home the demo filled. Each must exit 0;
the score it prints must be the model's score JSON, and the sample output the README shows must come from
the model that scored it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def quickstart_blocks(readme: str) -> tuple[list[str], list[str]]:
    """The Quickstart section's bash blocks and its json blocks (the sample output), in order."""
    section = re.search(r"^## Quickstart.*?$(.*?)^## ", readme, re.M | re.S)
    assert section, "README has no Quickstart section"
    blocks = re.findall(r"^```(\w+)\n(.*?)^```", section.group(1), re.M | re.S)
    return [b for lang, b in blocks if lang in ("bash", "sh")], [b for lang, b in blocks if lang == "json"]


@pytest.mark.slow  # the demo, an enrollment and a cold score with OCR: minutes on 2 cores
def test_readme_quickstart_runs_as_written_after_the_demo(grocery, tmp_path):
    bash, samples = quickstart_blocks((REPO / "README.md").read_text())
    assert bash and samples
    work = tmp_path / "checkout"
    work.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(grocery.parent)
    (work / ".venv").symlink_to(Path(sys.prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKGUARD_") and k != "VIRTUAL_ENV"}
    env["MARKGUARD_THREADS"] = "1"
    demo = subprocess.run([str(work / ".venv/bin/python"), "-m", "markguard.serving.cli", "demo", "--home", ".markguard",
                           "--data", "../shared/data", "--no-key"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)
    assert demo.returncode == 0, demo.stderr[-3000:]

    outputs = []
    for i, block in enumerate(bash):
        run = subprocess.run(["bash", "-c", "set -euo pipefail\n" + block], cwd=work, env=env, capture_output=True,
                             text=True, timeout=900)
        assert run.returncode == 0, f"Quickstart block {i + 1} failed:\n{block}\n--- stderr:\n{run.stderr[-3000:]}"
        outputs.append(run.stdout)

    scores = [json.loads(line) for out in outputs for line in out.splitlines() if line.startswith('{"image"')]
    assert scores, outputs
    score = scores[-1]
    assert 0 <= score["risk"] <= 1 and score["decision"] in ("pass", "review", "takedown")
    assert score["claimed"]["brand"] == "Arla" and score["matches"]
    shown = re.search(r'"model": "([^"]+)"', samples[-1])
    assert shown and shown.group(1) == score["model"], "the README's sample output is from another model"
    assert re.search(rf'"decision": "{score["decision"]}"', samples[-1]), "the sample's decision is not today's"
    risk = re.search(r'"risk": ([0-9.]+)', samples[-1])
    assert risk and abs(float(risk.group(1)) - score["risk"]) < 0.02, (risk, score["risk"])

    shown_signals = re.findall(r'"(\w+)": \{"value": [^,]+, "contribution": (-?[0-9.]+)\}', samples[-1])
    assert shown_signals, "the sample shows no signal contributions"
    for name, contribution in shown_signals:  # a sample whose model tag was edited by hand shows old weights
        assert abs(float(contribution) - score["signals"][name]["contribution"]) < 0.02, (name, contribution, score)
