"""vision.pipeline.Scorer without serving: the shipped model, a reference index in memory and an evidence
source that is a few dicts. The pipeline needs nothing of the catalog but the `EvidenceSource`
look-ups, reads through them only, and judges a known fake and its copy as serving does."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from markguard.vision.artifact import load_artifact
from markguard.vision.decode import read_image
from markguard.vision.embed import embed_images
from markguard.vision.errors import NotFound
from markguard.vision.evidence import SerialRecord
from markguard.vision.geometry import LocalFeatures, extract_features
from markguard.vision.index import KIND_CODES, ReferenceIndex
from markguard.vision.phash import phash
from markguard.vision.pipeline import BrandProfile, Scorer, ScoreRequest
from markguard.vision.scoring import Decision
from markguard.vision.signals import SIGNALS

SHIPPED = Path(__file__).resolve().parents[2] / "serving" / "default_model"


class MemoryEvidence:
    """An `EvidenceSource` over dicts, recording every look-up it answers."""

    def __init__(self, brands: Sequence[str], refs: Mapping[int, tuple[int, np.ndarray]]) -> None:
        self.profiles = [BrandProfile(id=i, name=b) for i, b in enumerate(brands)]
        self.refs = refs  # reference id → (brand id, image)
        self.calls: list[str] = []

    def resolve(self, brand: str | None, product: str | None) -> tuple[BrandProfile | None, int | None]:
        self.calls.append("resolve")
        if brand is None:
            return None, None
        for p in self.profiles:
            if p.name.lower() == brand.lower():
                return p, None
        raise NotFound(f"unknown brand {brand!r}")

    def brand(self, brand_id: int) -> BrandProfile:
        return self.profiles[brand_id]

    def wordmarks(self) -> Mapping[str, Sequence[str]]:
        return {p.name: [p.name] for p in self.profiles}

    def serials(self, brand: BrandProfile | None, normalized: Sequence[str], *, seller: str | None,
                listing: str | None) -> list[SerialRecord]:
        return [SerialRecord(registered=None) for _ in normalized]

    def product_name(self, product_id: int) -> str | None:
        return None

    def reference_features(self, reference_id: int) -> LocalFeatures | None:
        self.calls.append("reference_features")
        return extract_features(self.refs[reference_id][1])

    def reference_hash(self, reference_id: int) -> int | None:
        self.calls.append("reference_hash")
        return phash(self.refs[reference_id][1]).int64

    def reference_names(self, reference_ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
        return {i: (self.profiles[self.refs[i][0]].name, None) for i in reference_ids if i in self.refs}

    def duplicates(self, photo_hash: int, *, listing: str | None) -> tuple[list[dict[str, Any]], int]:
        return [], 0

    def shared_known_fakes(self, brand: BrandProfile) -> Sequence[int]:
        return ()


def _jpeg(image: np.ndarray, *, crop: float = 0.0, quality: int = 90) -> bytes:
    img = Image.fromarray(image)
    w, h = img.size
    dx, dy = int(w * crop), int(h * crop)
    buf = io.BytesIO()
    img.crop((dx, dy, w - dx, h - dy)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(grocery: Path) -> dict[str, Any]:
    artifact = load_artifact(SHIPPED)
    model = artifact.load_embedder(fuse=True)
    iconic = grocery / "iconic" / "Packages"
    oatly = [read_image(p) for p in sorted(iconic.glob("*/Oatly-*/*_Iconic.jpg"))[:2]]
    arla = [read_image(p) for p in sorted(iconic.glob("*/Arla-*/*_Iconic.jpg"))[:2]]
    fake = read_image(sorted((grocery / "train").rglob("Oatly-*.jpg"))[0])
    refs = {1: (0, oatly[0]), 2: (0, oatly[1]), 3: (1, arla[0]), 4: (1, arla[1])}
    return {"artifact": artifact, "model": model, "refs": refs, "fake": fake, "arla": arla}


def _scorer(world: dict[str, Any], refs: Mapping[int, tuple[int, np.ndarray]], kinds: Mapping[int, str]
            ) -> tuple[Scorer, MemoryEvidence]:
    model = world["model"]
    ids = sorted(refs)
    index = ReferenceIndex(model.config.embedding_dim)
    index.add(np.array(ids), embed_images(model, [refs[i][1] for i in ids]),
              brand_ids=np.array([refs[i][0] for i in ids]), product_ids=np.full(len(ids), -1),
              kinds=np.array([KIND_CODES[kinds.get(i, "genuine")] for i in ids]))
    source = MemoryEvidence(["Oatly", "Arla"], refs)
    scorer = Scorer(world["artifact"], index=index, source=source, embed=lambda crops: embed_images(model, crops),
                    detector=world["artifact"].load_detector())
    return scorer, source


def test_the_pipeline_scores_from_an_evidence_source_alone(world: dict[str, Any]) -> None:
    scorer, source = _scorer(world, world["refs"], {})
    photo = _jpeg(world["arla"][0], crop=0.02)
    [claimed, unclaimed] = scorer.score_many([ScoreRequest(photo, brand="arla"), ScoreRequest(photo)])
    assert claimed.brand.name == unclaimed.brand.name == "Arla"
    assert set(claimed.signals) == set(SIGNALS) and 0.0 <= claimed.risk <= 1.0
    assert claimed.matches and claimed.matches[0].reference_id in (3, 4)
    assert claimed.signals["known_fake_copy"].value is None  # no known fake to compare with
    assert "resolve" in source.calls and "reference_features" in source.calls  # gathered through the source
    with pytest.raises(NotFound):
        scorer.plan(ScoreRequest(photo, brand="Valio"))


def test_a_known_fake_and_its_copy_are_taken_down_by_the_pipeline_itself(world: dict[str, Any]) -> None:
    """The feedback loop's judgement, with no catalog: the same photo, and a re-encoded 3%-cropped copy,
    once the brand holds it as a known fake, score takedown; without it, they do not."""
    photo, copy = _jpeg(world["fake"]), _jpeg(world["fake"], crop=0.03, quality=75)
    plain, _ = _scorer(world, world["refs"], {})
    before = plain.score_many([ScoreRequest(photo, brand="Oatly"), ScoreRequest(copy, brand="Oatly")])
    assert all(r.decision is not Decision.TAKEDOWN for r in before)
    with_fake, source = _scorer(world, {**world["refs"], 9: (0, world["fake"])}, {9: "counterfeit"})
    after = with_fake.score_many([ScoreRequest(photo, brand="Oatly"), ScoreRequest(copy, brand="Oatly")])
    for result in after:
        assert result.decision is Decision.TAKEDOWN, result.signals
        assert result.signals["known_fake_copy"].value == 1.0
        assert result.matches[0].reference_id == 9 and result.matches[0].kind == "counterfeit"
    assert "reference_hash" in source.calls
    # another brand's claim is not judged against Oatly's known fake
    [arla] = with_fake.score_many([ScoreRequest(copy, brand="Arla")])
    assert arla.signals["known_fake_copy"].value is None and all(m.reference_id != 9 for m in arla.matches)
