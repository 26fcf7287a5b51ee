"""Calibration judges claims with the pipeline's own code: a claim judged by calibration and the same photo
and claim scored by `vision.pipeline.Scorer` give the same signals, known fakes, copies of them and the
mark verifier's evidence included."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from markguard.datasets.manifest import Label, ManifestRow
from markguard.training.calibration import COPY_VIEWS, _photo_evidence, add_known_fake_copies
from markguard.training.data import EvalSet, Item, load_images
from markguard.training.evaluation import make_claims, mark_maps
from markguard.training.recalibrate import pipeline_vectors
from markguard.vision.artifact import load_artifact
from markguard.vision.embed.run import embed_images
from markguard.vision.geometry import extract_features
from markguard.vision.phash import phash
from markguard.vision.pipeline import BrandProfile, Scorer, ScoreRequest
from markguard.vision.signals import SIGNALS


class _EvalSetSource:
    """The catalog of an eval set's in-memory index, as the pipeline's `EvidenceSource` sees it."""

    def __init__(self, es: EvalSet, claims, verifier, detector) -> None:  # noqa: ANN001
        images = load_images(es.references)
        self.features = [extract_features(i) for i in images]
        self.hashes = [phash(i).int64 for i in images]
        self.marks = [verifier.reference_map(i, detector) for i in images]
        self.brand_ids = dict(zip(claims.brand, claims.brand_id.tolist(), strict=True))

    def resolve(self, brand: str | None, product: str | None) -> tuple[BrandProfile | None, int | None]:
        """The claim's brand; its product is claimed by its id in the index (calibration's product ids)."""
        return BrandProfile(id=self.brand_ids[brand], name=brand), None if product is None else int(product)

    def reference_features(self, i: int):  # noqa: ANN201
        return self.features[i]

    def reference_hash(self, i: int) -> int:
        return self.hashes[i]

    def reference_mark(self, i: int):  # noqa: ANN201
        return self.marks[i]

    def shared_known_fakes(self, brand: BrandProfile) -> tuple[int, ...]:
        return ()

    def reference_names(self, ids) -> dict:  # noqa: ANN001
        return {}

    def product_name(self, product_id: int) -> None:
        return None

    def duplicates(self, photo_hash: int, *, listing: str | None) -> tuple[list, int]:
        return [], 0


def _item(path: Path, brand: str, product: str | None, *, genuine: bool = True) -> Item:
    return Item(path=path, row=ManifestRow(image=path.name, brand=brand, product=product, split="val",
                                           label=Label.GENUINE if genuine else Label.COUNTERFEIT))


def test_a_claim_judged_by_calibration_is_scored_alike_by_the_scorer(grocery: Path, tmp_path: Path,
                                                                     verifier_model: Path) -> None:
    artifact = load_artifact(verifier_model)  # the shipped model with the candidate mark verifier
    verifier = artifact.load_verifier()
    iconic = {p.parent.name: p for p in (grocery / "iconic").rglob("*_Iconic.jpg")}
    arla = sorted(n for n in iconic if n.startswith("Arla-"))[:2]
    alpro = sorted(n for n in iconic if n.startswith("Alpro-"))[:1]
    train = grocery / "train" / "Packages"
    photo = sorted(train.rglob(f"{arla[0]}/*.jpg"))[0]
    fake = sorted(train.rglob(f"{alpro[0]}/*.jpg"))[0]  # another brand's package, sold as Arla's
    es = EvalSet("tiny", references=[_item(iconic[n], n.split("-")[0], n) for n in [*arla, *alpro]],
                 queries=[_item(photo, "Arla", arla[0]), _item(fake, "Arla", None, genuine=False)])
    es = add_known_fake_copies(es, tmp_path / "copies", per_brand=1)
    assert len(es.references) == 4 and len(es.queries) == 1 + len(COPY_VIEWS)

    refs, blocks = pipeline_vectors(artifact, es, cache=tmp_path / "vectors.npz", progress=False)
    references, queries = mark_maps(es, verifier, artifact.load_detector())
    photos = dataclasses.replace(_photo_evidence(es, geometry=True, desc="tiny"), verifier=verifier,
                                 query_marks=queries, reference_marks=references)
    claims = make_claims(es, refs, blocks, photos=photos)
    copies = [c for c, q in enumerate(claims.query) if es.queries[q].row.transform == "known_fake_copy"]
    assert len(copies) == len(COPY_VIEWS)
    assert all(claims.values[c]["known_fake_copy"] == 1.0 for c in copies)
    assert all(v["mark_mismatch"] is not None for v in claims.values)

    source = _EvalSetSource(es, claims, verifier, artifact.load_detector())
    model = artifact.load_embedder()
    scorer = Scorer(artifact, index=claims.index, source=source, embed=lambda crops: embed_images(model, crops),  # type: ignore[arg-type]
                    detector=artifact.load_detector(), verifier=verifier)
    requests = [ScoreRequest(es.queries[q].path.read_bytes(), brand=claims.brand[c],
                             product=None if claims.product_id[c] is None else str(claims.product_id[c]))
                for c, q in enumerate(claims.query)]
    for c, served in enumerate(scorer.score_many(requests)):
        expected = claims.values[c]
        assert set(served.signals) == set(SIGNALS) == set(expected)
        for name in SIGNALS:
            got = served.signals[name].value
            assert (got is None) == (expected[name] is None), (claims.kind[c], name, got, expected[name])
            if got is not None:
                assert got == pytest.approx(expected[name], abs=1e-5), (claims.kind[c], name)
