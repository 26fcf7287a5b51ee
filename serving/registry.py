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

import dataclasses
import hashlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from markguard.serving.state.home import Home
from markguard.serving.state.schema import ModelVersion
from markguard.vision.artifact import (
    LEGACY_UNPINNED,
    ModelArtifact,
    build_imagenet_artifact,
    changed_settings,
    load_artifact,
    parse_artifact,
    read_settings,
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
    return _register(home, source, promote_it=promote_it)


def _register(home: Home, source: str | Path, *, promote_it: bool = False, expected_sha256: str | None = None,
              expected_settings: dict[str, str] | None = None) -> ModelArtifact:
    """`register_artifact`, the copy checked (its weights hashed against its configs, and against the model
    store's record when given) before it is recorded. A `models/<tag>` folder already there (a restored
    backup, an earlier home) is used only when it holds exactly the copy's files; else IntegrityError."""
    home.models_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with home.write_lock():
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=home.models_dir))
        try:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            artifact, files = _verified(tmp, expected_sha256, expected_settings)
            dest = home.model_dir(artifact.tag)
            with home.sessions() as session:
                row = session.scalar(select(ModelVersion).where(ModelVersion.tag == artifact.tag))
            if row is not None and row.weights_sha256 != artifact.embedder.weights_sha256:
                raise IntegrityError(f"model {artifact.tag!r} is registered already, with other weights")
            if not dest.exists():
                tmp.rename(dest)
            elif _tree_digests(dest) != _tree_digests(tmp):
                raise IntegrityError(f"model {artifact.tag!r}: the home's models/{dest.name} holds other files than "
                                     "the artifact registered; move it away to register this one")
            _record(home, dataclasses.replace(artifact, path=dest), settings_digests(files))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if promote_it:
        promote(home, artifact.tag)
    return dataclasses.replace(artifact, path=dest)


def _tree_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder`, by relative path (links and other odd entries as such)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            found[name] = "not a plain file"
        elif path.is_file():
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _record(home: Home, artifact: ModelArtifact, settings: dict[str, str]) -> None:
    with home.sessions.begin() as session:
        if session.scalar(select(ModelVersion).where(ModelVersion.tag == artifact.tag)) is None:
            session.add(
                ModelVersion(
                    tag=artifact.tag,
                    path=artifact.path.name,
                    weights_sha256=artifact.embedder.weights_sha256,
                    promoted=False,
                    card={**artifact.card, "settings_sha256": settings},
                )
            )


def promote(home: Home, tag: str, *, to_store: bool = True) -> None:
    """Make `tag` the model that scores; `to_store`: and save it into the home's BentoML model store. The
    model is checked in full first (settings against their pins, weights hashed, its fusion able to
    score), so a model that cannot score is never marked promoted."""
    with home.write_lock():
        with home.sessions() as session:
            row = session.scalar(select(ModelVersion).where(ModelVersion.tag == tag))
        if row is None:
            raise NotFound(f"unknown model {tag!r}")
        artifact, _ = _checked(home, row, hash_weights=True)
        try:
            Fusion(artifact.fusion)
        except (ValueError, TypeError, KeyError) as exc:
            raise IntegrityError(f"model {tag!r}: fusion.json cannot score ({exc})") from None
        if to_store:
            store_model(artifact, store=home_model_store(home))
        with home.sessions.begin() as session:
            session.execute(update(ModelVersion).values(promoted=False))
            session.execute(update(ModelVersion).where(ModelVersion.tag == tag).values(promoted=True))


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
    weights are checked first, and a model whose files changed since its pin is refused, not re-pinned.
    A pin taken before `card.json` was pinned gains the card's digest (its tag checked against the row's)."""
    with home.write_lock(), home.sessions.begin() as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.tag == tag))
        if row is None:
            raise NotFound(f"unknown model {tag!r}")
        _, files = _checked(home, row, hash_weights=True)
        pinned = (row.card or {}).get("settings_sha256")
        if pinned is not None and LEGACY_UNPINNED in pinned:
            return False
        digests = settings_digests(files)
        new = digests if pinned is None else {**pinned, LEGACY_UNPINNED: digests[LEGACY_UNPINNED]}
        row.card = {**(row.card or {}), "settings_sha256": new}  # a new dict: a JSON column
        return True


def _checked_artifact(home: Home, row: ModelVersion) -> ModelArtifact:
    """The registered model `row` loaded from the home's models folder, its weights and pinned settings
    checked against the row."""
    return _checked(home, row)[0]


def _checked(home: Home, row: ModelVersion, *, hash_weights: bool = False) -> tuple[ModelArtifact, dict[str, bytes]]:
    """`_checked_artifact` and the settings files' bytes it parsed: each file is read once, compared with
    its pin as raw bytes, and only then parsed (a parse error is an IntegrityError naming the file). The
    card's tag must be the row's: it names the model's index folder. `hash_weights`: the weight files
    are hashed now too (else `load_weights` does it when they load)."""
    folder = home.models_dir / row.path
    if folder.resolve().parent != home.models_dir.resolve():
        raise IntegrityError(f"model {row.tag!r} is outside the home's models folder")
    files = read_settings(folder)
    pinned = (row.card or {}).get("settings_sha256")
    if pinned is not None:
        if not isinstance(pinned, dict):
            raise IntegrityError(f"model {row.tag!r}: the catalog's settings pin is unreadable")
        if changed := changed_settings(files, pinned):
            raise IntegrityError(f"model {row.tag!r}: {', '.join(changed)} changed since the model was registered")
    artifact = parse_artifact(folder, files)
    if artifact.tag != row.tag:
        raise IntegrityError(f"model {row.tag!r}: card.json names another model ({artifact.tag!r})")
    if artifact.embedder.weights_sha256 != row.weights_sha256:
        raise IntegrityError(f"model {row.tag!r}: embedder.json no longer matches the registered weights")
    if artifact.detector is not None and artifact.detector.weights_sha256 != (row.card or {}).get("detector_sha256"):
        raise IntegrityError(f"model {row.tag!r}: detector.json no longer matches the registered detector weights")
    if artifact.verifier is not None and artifact.verifier.weights_sha256 != (row.card or {}).get("verifier_sha256"):
        raise IntegrityError(f"model {row.tag!r}: verifier.json no longer matches the registered verifier weights")
    if hash_weights:
        _hash_weights(artifact)
    return artifact, files


def ensure_default_model(home: Home) -> ModelArtifact:
    """The promoted model, registering and promoting the default one on first use (and in place of a
    promoted model whose fusion.json no longer weighs every signal: one made before a signal existed)."""
    try:
        artifact: ModelArtifact | None = promoted_artifact(home)
    except NotFound:
        artifact = None
    if artifact is not None:
        try:
            Fusion(artifact.fusion)
            return artifact
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


def _verified(path: Path, expected_sha256: str | None = None,
              expected_settings: dict[str, str] | None = None) -> tuple[ModelArtifact, dict[str, bytes]]:
    """The artifact at `path` and its settings files' bytes, after checking them: the settings the store's
    digests (when given) as raw bytes before they are parsed, each weight file hashed against its config,
    the embedder's against the store's record (when given); else IntegrityError."""
    files = read_settings(path)
    if expected_settings is not None and (changed := changed_settings(files, expected_settings)):
        raise IntegrityError(f"{path}: {', '.join(changed)} differ from what the model store recorded")
    artifact = parse_artifact(path, files)
    _hash_weights(artifact)
    if expected_sha256 is not None and expected_sha256 != artifact.embedder.weights_sha256:
        raise IntegrityError(f"{path}: weights differ from the ones the model store recorded")
    return artifact, files


def _hash_weights(artifact: ModelArtifact) -> None:
    """Each weight file of `artifact` hashed against the SHA-256 its config pins; else IntegrityError."""
    checks = [(artifact.embedder.weights_file, artifact.embedder.weights_sha256)]
    checks += [(part.weights_file, part.weights_sha256) for part in (artifact.detector, artifact.verifier)
               if part is not None]
    for name, sha in checks:
        path = artifact.path / name
        if not path.is_file() or sha256_file(path) != sha:
            raise IntegrityError(f"{path}: SHA-256 does not match its config")


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
        _, files = _verified(artifact.path)
        all_labels = {"project": "markguard", "architecture": artifact.embedder.architecture, **(labels or {})}
        all_metadata = {**(metadata or {}), "markguard_tag": artifact.tag,
                        "weights_sha256": artifact.embedder.weights_sha256,
                        "settings_sha256": settings_digests(files)}
        try:
            with bentoml.models.create(tag, labels=all_labels, metadata=all_metadata, **store_kw) as model:
                for f in artifact.path.iterdir():
                    if f.is_file():
                        shutil.copy2(f, Path(model.path) / f.name)
            return tag
        except (BentoMLException, OSError):  # another process stored it first
            found = getter(tag)
    recorded = found.info.metadata.get("weights_sha256") or _verified(Path(found.path))[0].embedder.weights_sha256
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
    artifact, _ = _verified(Path(path), expected_sha256, expected_settings)
    try:
        current = promoted_artifact(home).tag
    except NotFound:
        current = None
    if current != artifact.tag:  # the home's copy checked against the store's record again
        _register(home, artifact.path, expected_sha256=expected_sha256, expected_settings=expected_settings)
        promote(home, artifact.tag, to_store=False)
    return promoted_artifact(home)
