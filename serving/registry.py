"""The home's model registry: which artifacts exist, which one is promoted, and loading it safely.

Artifacts are only ever loaded from the home's `models/` folder, and only when the weights' SHA-256
matches both `embedder.json` and the catalog row written when the model was registered (the mark
detector's and the mark verifier's, when the model has them, likewise: `detector.json`, `verifier.json` and
the card the row holds), and when its settings files (`vision.artifact.SETTINGS_FILES`: the fusion's
thresholds, the verifier's reference gate, ...) are the bytes the row pinned at registration
(`settings_sha256` in the row's card; a row registered before the pin has none and is not checked until
an operator pins it: `markguard model pin TAG`, `pin_settings`).

The BentoML model store is how a model reaches the service and a Bento: promoting a model saves it into
the store as `markguard:<version>` (`store_model`; the store of `$BENTOML_HOME`, else `HOME/bentoml`,
the one `markguard serve` uses), and the service declares the model it serves (`served_model_tag`) as a
`bentoml.models.BentoModel`, so `bentoml build` pins it in the Bento. At start-up the service installs
the stored model into the home (`install_stored_model`: SHA-256 checked against `embedder.json` and the
store's metadata, settings against the digests the metadata pins, registered, promoted) and loads it from
there as before.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from markguard.serving.state.home import Home
from markguard.serving.state.schema import ModelVersion
from markguard.vision.artifact import (
    ModelArtifact,
    build_imagenet_artifact,
    changed_settings,
    load_artifact,
    settings_digests,
)
from markguard.vision.errors import IntegrityError, NotFound
from markguard.vision.scoring import Fusion
from markguard.vision.signals import expert_priors, signal_names
from markguard.vision.weights import sha256_file

__all__ = ["ensure_default_model", "promoted_artifact", "register_artifact", "promote", "list_models", "pin_settings",
           "PROVISIONAL_FUSION",
           "BENTO_MODEL_NAME", "bento_model_tag", "store_model", "served_model_tag", "pinned_model_tag", "install_stored_model"]

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
                    card={**artifact.card, "settings_sha256": settings_digests(artifact.path)},
                )
            )


def promote(home: Home, tag: str, *, to_store: bool = True) -> None:
    """Make `tag` the model that scores; `to_store`: and save it into the home's BentoML model store."""
    with home.write_lock(), home.sessions.begin() as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.tag == tag))
        if row is None:
            raise NotFound(f"unknown model {tag!r}")
        session.execute(update(ModelVersion).values(promoted=False))
        row.promoted = True
    if to_store:
        store_model(promoted_artifact(home), store=home_model_store(home))


def list_models(home: Home) -> list[ModelVersion]:
    with home.sessions() as session:
        return list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at)))


def promoted_artifact(home: Home) -> ModelArtifact:
    with home.sessions() as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.promoted.is_(True)))
    if row is None:
        raise NotFound("no promoted model in this home (run `markguard model init`)")
    return _checked_artifact(home, row)


def pin_settings(home: Home, tag: str) -> bool:
    """Pin the settings files of a model registered before registration pinned them, as they are now (run
    by an operator who has checked them): True when pinned now, False when the row had the same pin. The
    weights are checked first, and a model whose files changed since its pin is refused, not re-pinned."""
    with home.write_lock(), home.sessions.begin() as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.tag == tag))
        if row is None:
            raise NotFound(f"unknown model {tag!r}")
        artifact = _checked_artifact(home, row)
        if (row.card or {}).get("settings_sha256") is not None:
            return False
        row.card = {**(row.card or {}), "settings_sha256": settings_digests(artifact.path)}  # a new dict: a JSON column
        return True


def _checked_artifact(home: Home, row: ModelVersion) -> ModelArtifact:
    """The registered model `row` loaded from the home's models folder, its weights and pinned settings
    checked against the row."""
    artifact = load_artifact(home.models_dir / row.path)
    if artifact.path.resolve().parent != home.models_dir.resolve():
        raise IntegrityError(f"model {row.tag!r} is outside the home's models folder")
    if artifact.embedder.weights_sha256 != row.weights_sha256:
        raise IntegrityError(f"model {row.tag!r}: embedder.json no longer matches the registered weights")
    if artifact.detector is not None and artifact.detector.weights_sha256 != (row.card or {}).get("detector_sha256"):
        raise IntegrityError(f"model {row.tag!r}: detector.json no longer matches the registered detector weights")
    if artifact.verifier is not None and artifact.verifier.weights_sha256 != (row.card or {}).get("verifier_sha256"):
        raise IntegrityError(f"model {row.tag!r}: verifier.json no longer matches the registered verifier weights")
    if (pinned := (row.card or {}).get("settings_sha256")) is not None and (changed := changed_settings(artifact.path, pinned)):
        raise IntegrityError(f"model {row.tag!r}: {', '.join(changed)} changed since the model was registered")
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


# -- the BentoML model store ------------------------------------------------------------------------------
BENTO_MODEL_NAME = "markguard"
_VERSION_CHARS = re.compile(r"[^a-z0-9._-]+")


def bento_model_tag(artifact_tag: str) -> str:
    """`markguard:<version>`: the artifact tag without its `markguard-` prefix, in BentoML's characters."""
    version = artifact_tag.lower().removeprefix(BENTO_MODEL_NAME + "-")
    return f"{BENTO_MODEL_NAME}:{_VERSION_CHARS.sub('-', version).strip('-._')[:120] or 'model'}"


def home_model_store(home: Home):  # type: ignore[no-untyped-def]
    """The BentoML model store of `$BENTOML_HOME`, else `HOME/bentoml` (what `markguard serve` uses)."""
    from bentoml._internal.models import ModelStore

    base = Path(os.environ["BENTOML_HOME"]) if os.environ.get("BENTOML_HOME") else home.root / "bentoml"
    (base / "models").mkdir(parents=True, exist_ok=True)
    return ModelStore(base / "models")


def _verified(path: Path, expected_sha256: str | None = None, expected_settings: dict[str, str] | None = None) -> ModelArtifact:
    """The artifact at `path` after hashing its weight files: each matches its config (and the store's
    record, when given), and its settings files the store's digests (when given); else IntegrityError."""
    artifact = load_artifact(path)
    checks = [(artifact.embedder.weights_file, artifact.embedder.weights_sha256)]
    for part in (artifact.detector, artifact.verifier):
        if part is not None:
            checks.append((part.weights_file, part.weights_sha256))
    for name, sha in checks:
        if sha256_file(path / name) != sha:
            raise IntegrityError(f"{path / name}: SHA-256 does not match its config")
    if expected_sha256 is not None and expected_sha256 != artifact.embedder.weights_sha256:
        raise IntegrityError(f"{path}: weights differ from the ones the model store recorded")
    if expected_settings is not None and (changed := changed_settings(path, expected_settings)):
        raise IntegrityError(f"{path}: {', '.join(changed)} differ from what the model store recorded")
    return artifact


def store_model(artifact: ModelArtifact, *, store=None, labels: dict[str, str] | None = None,  # type: ignore[no-untyped-def]
                metadata: dict[str, Any] | None = None) -> str:
    """Save `artifact` into a BentoML model store (default: BentoML's current one) unless its tag is there
    already; returns the BentoML tag. The weights are hashed first; a stored model of the same tag with
    other weights is an IntegrityError. `labels` and `metadata` add to the ones written (train: metrics)."""
    import bentoml
    from bentoml.exceptions import BentoMLException
    from bentoml.exceptions import NotFound as BentoNotFound

    tag = bento_model_tag(artifact.tag)
    store_kw = {} if store is None else {"_model_store": store}
    getter = store.get if store is not None else bentoml.models.get
    try:
        found = getter(tag)
    except BentoNotFound:
        found = None
    if found is None:
        _verified(artifact.path)
        all_labels = {"project": "markguard", "architecture": artifact.embedder.architecture, **(labels or {})}
        all_metadata = {**(metadata or {}), "markguard_tag": artifact.tag,
                        "weights_sha256": artifact.embedder.weights_sha256,
                        "settings_sha256": settings_digests(artifact.path)}
        try:
            with bentoml.models.create(tag, labels=all_labels, metadata=all_metadata, **store_kw) as model:
                for f in artifact.path.iterdir():
                    if f.is_file():
                        shutil.copy2(f, Path(model.path) / f.name)
            return tag
        except (BentoMLException, OSError):  # another process stored it first
            found = getter(tag)
    recorded = found.info.metadata.get("weights_sha256") or _verified(Path(found.path)).embedder.weights_sha256
    if recorded != artifact.embedder.weights_sha256:
        raise IntegrityError(f"BentoML model {tag} holds other weights than {artifact.tag}")
    return tag


def pinned_model_tag() -> str | None:
    """Inside a Bento (`bentoml serve BENTO` runs the service in the Bento's `src/`, or with the Bento's
    own model store), the markguard model its `bento.yaml` pins; else None."""
    import yaml
    from bentoml._internal.configuration.containers import BentoMLContainer

    store = Path(BentoMLContainer.model_store.get()._path)
    for meta in (Path.cwd().parent / "bento.yaml", store.parent / "bento.yaml"):
        if meta.is_file():
            info = yaml.safe_load(meta.read_text()) or {}
            declared = [m for m in info.get("models") or [] if isinstance(m, dict)]
            declared += [m for svc in info.get("services") or [] for m in svc.get("models") or []]
            tags = [str(m["tag"]) for m in declared if str(m.get("tag", "")).startswith(BENTO_MODEL_NAME + ":")]
            if not tags:
                raise NotFound(f"{meta}: this Bento pins no markguard model")
            return tags[0]
    return None


def served_model_tag(home_root: str | Path, *, database_url: str | None = None) -> str:
    """The BentoML tag the service declares: inside a Bento, the markguard model it pins; else the home's
    promoted model (the shipped default when the home has none or does not exist yet), saved into
    BentoML's current store if missing, so `bentoml build` finds and pins it."""
    pinned = pinned_model_tag()
    if pinned is not None:
        return pinned
    artifact = None
    if database_url or (Path(home_root) / "catalog.sqlite").is_file():
        home = Home(home_root, database_url=database_url)
        try:
            artifact = promoted_artifact(home)
        except NotFound:
            pass
        finally:
            home.close()
    if artifact is None:
        artifact = load_artifact(SHIPPED_MODEL_DIR) if (SHIPPED_MODEL_DIR / "card.json").is_file() else None
    if artifact is None:  # no shipped model: the home's default (the ImageNet baseline), built once
        home = Home(home_root, database_url=database_url)
        try:
            artifact = ensure_default_model(home)
        finally:
            home.close()
    return store_model(artifact)


def install_stored_model(home: Home, path: str | Path, *, expected_sha256: str | None = None,
                         expected_settings: dict[str, str] | None = None) -> ModelArtifact:
    """The stored model at `path` (a BentoML model's folder) as the home's promoted model: its weights
    hashed against its config and the store's record, its settings against the store's digests, copied
    into the home, registered and promoted."""
    artifact = _verified(Path(path), expected_sha256, expected_settings)
    try:
        current = promoted_artifact(home).tag
    except NotFound:
        current = None
    if current != artifact.tag:
        register_artifact(home, artifact.path)
        promote(home, artifact.tag, to_store=False)
    return promoted_artifact(home)
