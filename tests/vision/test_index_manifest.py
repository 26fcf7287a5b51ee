"""A saved index's manifest is read as untrusted bytes: any other shape than `save` writes is an
IntegrityError naming it, and a home's reader rebuilds the index from the catalog instead of crashing.
An index saved for another model is not loaded as this model's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from markguard.vision.errors import IntegrityError
from markguard.vision.index import ReferenceIndex, read_manifest


def _saved(directory: Path, n: int = 3, dim: int = 8) -> ReferenceIndex:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = ReferenceIndex(dim)
    index.add(np.arange(1, n + 1, dtype=np.int64), vectors, brand_ids=np.ones(n, np.int64),
              product_ids=np.full(n, -1, np.int64), kinds=np.zeros(n, np.int8))
    index.save(directory, extra={"model_tag": "m"})
    return index


def _edit(edit):  # type: ignore[no-untyped-def]
    def apply(path: Path) -> None:
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return apply


TAMPERED = {
    "no_files": _edit(lambda m: {k: v for k, v in m.items() if k != "files"}),
    "no_meta": _edit(lambda m: {**m, "files": {k: v for k, v in m["files"].items() if k.startswith("index")}}),
    "files_list": _edit(lambda m: {**m, "files": list(m["files"])}),
    "file_outside": _edit(lambda m: {**m, "files": {"../x": "0" * 64, **m["files"]}}),
    "version_str": _edit(lambda m: {**m, "version": "x"}),
    "dim_str": _edit(lambda m: {**m, "dim": "abc"}),
    "manifest_list": lambda path: path.write_text("[1]"),
    "not_json": lambda path: path.write_text("{"),
    "not_utf8": lambda path: path.write_bytes(b"\xff"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_manifest_is_an_integrity_error_and_a_save_replaces_it(tmp_path: Path, case: str) -> None:
    index = _saved(tmp_path)
    TAMPERED[case](tmp_path / "manifest.json")
    with pytest.raises(IntegrityError, match="manifest"):
        read_manifest(tmp_path)
    with pytest.raises(IntegrityError, match="manifest"):
        ReferenceIndex.load(tmp_path)
    version = index.save(tmp_path, extra={"model_tag": "m"})  # the rebuilt index saved over it
    assert version == 2  # past the version whose files are still there
    assert len(ReferenceIndex.load(tmp_path)) == 3


def _home_with_references(tmp_path: Path, grocery: Path, count: int):  # noqa: ANN202
    """A fresh home on the shipped model with `count` of Arla's catalogue photos enrolled (its index saved)."""
    from markguard.serving.brands import add_brand
    from markguard.serving.enroll import collect_inputs, enroll
    from markguard.serving.registry import ensure_default_model
    from markguard.serving.state.home import Home

    home = Home(tmp_path / "home")
    artifact = ensure_default_model(home)
    model = artifact.load_embedder()
    with home.sessions.begin() as session:
        add_brand(session, "Arla")
    iconic = sorted((grocery / "iconic" / "Packages").rglob("*_Iconic.jpg"))[:count]
    enroll(home, artifact, model, brand="Arla", inputs=collect_inputs(iconic))
    return home, artifact, model


@pytest.mark.parametrize("case", ["manifest_list", "no_files", "not_utf8", "dim_str"])
def test_a_home_rebuilds_an_index_whose_manifest_is_tampered(tmp_path: Path, grocery: Path, case: str) -> None:
    from markguard.serving.indexing import reconcile

    home, artifact, model = _home_with_references(tmp_path, grocery, 2)
    directory = home.index_dir(artifact.tag)
    assert len(ReferenceIndex.load(directory)) == 2
    TAMPERED[case](directory / "manifest.json")
    index = reconcile(home, artifact, model)
    assert len(index) == 2
    assert read_manifest(directory)["model_tag"] == artifact.tag  # saved again, readable
    home.close()


def test_an_index_saved_for_another_model_is_rebuilt(tmp_path: Path, grocery: Path) -> None:
    """The index folder follows the model's tag; an index whose manifest names another model (a copied
    folder, a card edited before the tag was pinned) is never searched with this model's embeddings."""
    from markguard.serving.indexing import load_or_new, reconcile

    home, artifact, model = _home_with_references(tmp_path, grocery, 1)
    directory = home.index_dir(artifact.tag)
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(json.dumps({**manifest, "model_tag": "markguard-other-7"}))
    with pytest.raises(IntegrityError, match="saved for model 'markguard-other-7'"):
        load_or_new(home, artifact)
    assert len(reconcile(home, artifact, model)) == 1
    assert read_manifest(directory)["model_tag"] == artifact.tag
    home.close()
