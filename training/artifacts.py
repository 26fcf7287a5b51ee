"""Writing the trained model: the artifact folder (via `vision.artifact.write_artifact`), its card,
and a copy in the BentoML model store with labels and metrics metadata."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from markguard.vision.artifact import ModelArtifact, load_artifact

__all__ = ["git_commit", "register_bentoml", "resolve_model", "json_metrics"]


def git_commit() -> str:
    """The repository's HEAD commit (with `+dirty` when tracked files differ), or `unknown`."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def json_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics without the private `_`-keys (curves kept for plots only)."""
    return {k: json_metrics(v) if isinstance(v, dict) else v for k, v in metrics.items() if not k.startswith("_")}


def _store(bentoml_home: Path):  # type: ignore[no-untyped-def]
    from bentoml._internal.models import ModelStore

    path = Path(bentoml_home) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return ModelStore(path)


def register_bentoml(artifact: ModelArtifact, *, bentoml_home: Path) -> str:
    """Save the artifact into the BentoML model store at `bentoml_home` under the tag the service and a
    Bento declare it by (`markguard:<version>`, `serving.registry.store_model`), with labels and its
    metrics as metadata; returns the BentoML tag."""
    from markguard.serving.registry import store_model

    metrics = artifact.card.get("metrics", {})
    flat = {f"{s}.{k}": v for s, m in metrics.items() for k, v in m.items() if isinstance(v, int | float)}
    labels = {"kind": "embedder", "head": artifact.embedder.head}
    return store_model(artifact, store=_store(bentoml_home), labels=labels, metadata=flat)


def resolve_model(ref: str, *, home: Path | None = None, bentoml_home: Path | None = None) -> ModelArtifact:
    """An artifact from a folder path, a tag registered in a markguard home, or a BentoML model tag."""
    if Path(ref).is_dir():
        return load_artifact(ref)
    if home is None:
        from markguard.serving.settings import get_settings

        home = get_settings().home
    home = Path(home)
    for card in sorted((home / "models").glob("*/card.json")):
        artifact = load_artifact(card.parent)
        if artifact.tag == ref:
            return artifact
    bentoml_home = bentoml_home or (Path(os.environ["BENTOML_HOME"]) if "BENTOML_HOME" in os.environ else None)
    if bentoml_home is not None:
        from markguard.vision.errors import NotFound

        try:
            model = _store(bentoml_home).get(ref)
        except Exception as exc:  # bentoml raises its own NotFound
            raise NotFound(f"no model {ref!r} as a folder, in {home}, or in {bentoml_home}: {exc}") from None
        return load_artifact(model.path)
    from markguard.vision.errors import NotFound

    raise NotFound(f"no model {ref!r} as a folder or in {home / 'models'}")
