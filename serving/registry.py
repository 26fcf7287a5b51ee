"""The home's model registry: which artifacts exist, which one is promoted, and loading it safely.

Artifacts are only ever loaded from the home's `models/` folder, and only when the weights' SHA-256
matches both `embedder.json` and the catalog row written when the model was registered (the mark
detector's, when the model has one, likewise: `detector.json` and the card the row holds).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from sqlalchemy import select, update

from markguard.serving.state.home import Home
from markguard.serving.state.schema import ModelVersion
from markguard.vision.artifact import ModelArtifact, build_imagenet_artifact, load_artifact
from markguard.vision.errors import IntegrityError, NotFound
from markguard.vision.scoring import Fusion
from markguard.vision.signals import expert_priors, signal_names

__all__ = ["ensure_default_model", "promoted_artifact", "register_artifact", "promote", "list_models", "PROVISIONAL_FUSION"]

# The ImageNet baseline's provisional mapping of best genuine similarity to risk (see vision.scoring).
# From the grocery baseline run (31 iconic references, 100 val photos, README): true-product
# similarities have quartiles 0.40 / 0.44 / 0.50, other-product claims 0.37 / 0.42 / 0.47, so the
# baseline separates them poorly (claim AUC 0.58) and the mapping is deliberately wide. A trained
# artifact replaces it with a calibrated fusion. Every other signal is weighed by its expert prior
# (`vision.signals`), written into the artifact's fusion.json like any weight.
PROVISIONAL_FUSION = {
    "kind": "provisional",
    "similarity_floor": 0.25,
    "similarity_ceiling": 0.60,
    "match_threshold": 0.30,
    "review_at": 0.5,
    "takedown_at": 0.85,
    "priors": expert_priors(n for n in signal_names() if n != "genuine_similarity"),
}

# A trained default model shipped in the repository (training issue); absent, the ImageNet baseline.
SHIPPED_MODEL_DIR = Path(__file__).resolve().parent / "default_model"


def register_artifact(home: Home, source: str | Path, *, promote_it: bool = False) -> ModelArtifact:
    """Copy an artifact folder into the home and record it; the copy is what is ever loaded."""
    artifact = load_artifact(source)
    dest = home.model_dir(artifact.tag)
    with home.write_lock():
        if not dest.exists():
            tmp = dest.with_name(f".{dest.name}.incoming")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(artifact.path, tmp)
            tmp.rename(dest)
        _record(home, load_artifact(dest))
    if promote_it:
        promote(home, artifact.tag)
    return load_artifact(dest)


def _record(home: Home, artifact: ModelArtifact) -> None:
    with home.sessions.begin() as session:
        if session.scalar(select(ModelVersion).where(ModelVersion.tag == artifact.tag)) is None:
            session.add(
                ModelVersion(
                    tag=artifact.tag,
                    path=artifact.path.name,
                    weights_sha256=artifact.embedder.weights_sha256,
                    promoted=False,
                    card=artifact.card,
                )
            )


def promote(home: Home, tag: str) -> None:
    with home.write_lock(), home.sessions.begin() as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.tag == tag))
        if row is None:
            raise NotFound(f"unknown model {tag!r}")
        session.execute(update(ModelVersion).values(promoted=False))
        row.promoted = True


def list_models(home: Home) -> list[ModelVersion]:
    with home.sessions() as session:
        return list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at)))


def promoted_artifact(home: Home) -> ModelArtifact:
    with home.sessions() as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.promoted.is_(True)))
    if row is None:
        raise NotFound("no promoted model in this home (run `markguard model init`)")
    artifact = load_artifact(home.models_dir / row.path)
    if artifact.path.resolve().parent != home.models_dir.resolve():
        raise IntegrityError(f"model {row.tag!r} is outside the home's models folder")
    if artifact.embedder.weights_sha256 != row.weights_sha256:
        raise IntegrityError(f"model {row.tag!r}: embedder.json no longer matches the registered weights")
    if artifact.detector is not None and artifact.detector.weights_sha256 != (row.card or {}).get("detector_sha256"):
        raise IntegrityError(f"model {row.tag!r}: detector.json no longer matches the registered detector weights")
    return artifact


def ensure_default_model(home: Home) -> ModelArtifact:
    """The promoted model, registering and promoting the default one on first use (and in place of a
    promoted model whose fusion.json no longer weighs every signal: one made before a signal existed)."""
    try:
        artifact = promoted_artifact(home)
        Fusion(artifact.fusion)
        return artifact
    except NotFound:
        pass
    except ValueError as exc:
        if not (SHIPPED_MODEL_DIR / "card.json").is_file() or load_artifact(SHIPPED_MODEL_DIR).tag == artifact.tag:
            raise IntegrityError(f"model {artifact.tag!r}: {exc}") from None
        print(f"markguard: model {artifact.tag} cannot score ({exc}); promoting the shipped default",
              file=sys.stderr)
    if (SHIPPED_MODEL_DIR / "card.json").is_file():
        return register_artifact(home, SHIPPED_MODEL_DIR, promote_it=True)
    with home.write_lock():
        tag_dir = home.models_dir / ".imagenet-build"
        shutil.rmtree(tag_dir, ignore_errors=True)
        built = build_imagenet_artifact(tag_dir, fusion=PROVISIONAL_FUSION)
    try:
        return register_artifact(home, built.path, promote_it=True)
    finally:
        shutil.rmtree(tag_dir, ignore_errors=True)
