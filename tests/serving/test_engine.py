"""serving.engine: regions, geometry, photo reuse and claims, through the real model and index."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import select

from markguard.serving.brands import add_brand
from markguard.serving.engine import ScoreRequest, ScoringEngine
from markguard.serving.enroll import collect_inputs, enroll
from markguard.serving.registry import ensure_default_model, register_artifact
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Brand, Listing, Product, Reference
from markguard.vision.artifact import load_artifact
from markguard.vision.errors import NotFound

MILK, OTHER = "Milk/Arla-Standard-Milk", "Milk/Arla-Ecological-Medium-Fat-Milk"


def arla_home(path: Path, grocery: Path, *, train_photos: int, model_dir: Path | None = None) -> Home:
    """A home with brand Arla and its two milks, each enrolled from its iconic photo and its first
    `train_photos` train photos; its model is the default, or the artifact folder `model_dir`."""
    home = Home(path)
    if model_dir is not None:
        register_artifact(home, model_dir, promote_it=True)
    artifact = ensure_default_model(home)
    model = artifact.load_embedder()
    with home.sessions.begin() as session:
        add_brand(session, "Arla")
    for product in (MILK, OTHER):
        iconic = next((grocery / "iconic" / "Packages" / product).glob("*_Iconic.jpg"))
        train = sorted((grocery / "train" / "Packages" / product).glob("*.jpg"))[:train_photos]
        enroll(home, artifact, model, brand="Arla", product=product.split("/")[1], inputs=collect_inputs([iconic, *train]))
    return home


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, grocery: Path) -> ScoringEngine:
    home = arla_home(tmp_path_factory.mktemp("engine-home"), grocery, train_photos=2)
    return ScoringEngine(home, ocr=False)  # OCR has its own engine test below


def _val(grocery: Path, product: str, i: int = 0) -> bytes:
    return sorted((grocery / "val" / "Packages" / product).glob("*.jpg"))[i].read_bytes()


def _jpeg(image: np.ndarray, quality: int = 80) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_match_boxes_lie_inside_the_photo(engine: ScoringEngine, grocery: Path) -> None:
    data = _val(grocery, MILK)
    width, height = Image.open(io.BytesIO(data)).size
    result = engine.score(ScoreRequest(data), record=False)
    assert result.matches
    for match in result.matches:
        x0, y0, x1, y1 = match.box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


def test_a_small_mark_is_found_by_a_region(engine: ScoringEngine, grocery: Path) -> None:
    """The package pasted small into a large busy frame still matches its product through a crop."""
    package = np.asarray(Image.open(io.BytesIO(_val(grocery, MILK, 1))).convert("RGB"))
    rng = np.random.default_rng(0)
    canvas = rng.integers(0, 255, (900, 1200, 3), dtype=np.uint8)
    small = np.asarray(Image.fromarray(package).resize((300, 300)))
    canvas[500:800, 750:1050] = small
    result = engine.score(ScoreRequest(_jpeg(canvas)), record=False)
    best = result.matches[0]
    assert best.box != (0, 0, 1200, 900)  # a crop, not the whole frame, matched best


def test_geometry_counts_inliers_for_the_claim(engine: ScoringEngine, grocery: Path) -> None:
    iconic = next((grocery / "iconic" / "Packages" / MILK).glob("*_Iconic.jpg")).read_bytes()
    result = engine.score(ScoreRequest(iconic, brand="Arla", product="Arla-Standard-Milk"), record=False)
    assert result.signals["log_inliers"].value is not None and result.signals["log_inliers"].value > np.log1p(20)
    assert any(m.inliers and m.inliers > 20 for m in result.matches)


def test_the_mark_verifier_judges_the_photo_against_the_claims_references(tmp_path: Path, grocery: Path,
                                                                          verifier_model: Path, imagenet_artifact) -> None:
    """A model with a mark verifier reads the claimed product's references from the catalog (their maps
    cached): the product's own iconic photo agrees with them better than the other milk's package. The
    shipped model's verifier compares only references that are crops of a mark: none of a catalogue of
    package shots. A model without one leaves the signal out."""
    engine = ScoringEngine(arla_home(tmp_path / "home", grocery, train_photos=1, model_dir=verifier_model), ocr=False)
    assert engine.model_tag == load_artifact(verifier_model).tag and engine.scorer.verifier is not None
    iconic = next((grocery / "iconic" / "Packages" / MILK).glob("*_Iconic.jpg")).read_bytes()
    other = next((grocery / "iconic" / "Packages" / OTHER).glob("*_Iconic.jpg")).read_bytes()
    claim = {"brand": "Arla", "product": "Arla-Standard-Milk"}
    own = engine.score(ScoreRequest(iconic, **claim), record=False).signals["mark_mismatch"]
    wrong = engine.score(ScoreRequest(other, **claim), record=False).signals["mark_mismatch"]
    assert own.value is not None and wrong.value is not None and own.value < wrong.value
    assert own.contribution < wrong.contribution  # the fusion weighs it
    assert engine.scorer.stage_cpu["verify"] > 0
    shipped = ScoringEngine(arla_home(tmp_path / "shipped", grocery, train_photos=0), ocr=False)
    assert shipped.scorer.verifier is not None and shipped.scorer.verifier.config.min_reference_iou > 0
    assert shipped.score(ScoreRequest(iconic, **claim), record=False).signals["mark_mismatch"].value is None
    plain = ScoringEngine(arla_home(tmp_path / "plain", grocery, train_photos=1, model_dir=imagenet_artifact.path),
                          ocr=False)
    assert plain.scorer.verifier is None
    assert plain.score(ScoreRequest(iconic, **claim), record=False).signals["mark_mismatch"].value is None


class _CountedDetector:
    """The real detector, its passes counted."""

    def __init__(self, detector) -> None:  # noqa: ANN001
        self.detector, self.passes = detector, 0

    def detect(self, images, **kw):  # noqa: ANN001, ANN003, ANN201
        self.passes += 1
        return self.detector.detect(images, **kw)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.detector, name)


def test_the_verifiers_verdict_on_a_reference_outlives_its_map(tmp_path: Path, grocery: Path, fresh_synth: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether the shipped verifier compares a reference costs a detector pass (about 63 ms), its map a
    tenth of that. The maps are kept for 4,096 references, the verdicts for 65,536. With room for one
    map here: a logo crop read again after another is mapped again (the same map) without the detector,
    and a package shot that failed the gate is not decoded again."""
    from markguard.serving import engine as engine_module
    from markguard.serving.engine import CatalogEvidence
    from markguard.serving.enroll import InputImage
    from markguard.training.data import enrolled_crop, load_image, read_items
    from markguard.vision.verify import reference_is_mark

    monkeypatch.setattr(engine_module, "_MARK_CACHE", 1)
    home = Home(tmp_path / "home")
    artifact = ensure_default_model(home)
    verifier, detector = artifact.load_verifier(), artifact.load_detector()
    assert verifier is not None and detector is not None
    gate = verifier.config.min_reference_iou
    crops = (load_image(enrolled_crop(i, 1.25))[0] for i in read_items(fresh_synth) if i.genuine)
    logos = [c for c in crops if reference_is_mark(c, detector, min_iou=gate)][:2]
    package = next((grocery / "iconic" / "Packages" / MILK).glob("*_Iconic.jpg")).read_bytes()
    with home.sessions.begin() as session:
        add_brand(session, "Marks")
    inputs = [InputImage(f"logo{i}.jpg", _jpeg(c, 95)) for i, c in enumerate(logos)] + [InputImage("pack.jpg", package)]
    a, b, pack = enroll(home, artifact, artifact.load_embedder(), brand="Marks", inputs=inputs).added

    evidence = CatalogEvidence(home, verifier=verifier, detector=_CountedDetector(detector))
    first = evidence.reference_mark(a)
    assert first is not None and evidence.reference_mark(b) is not None
    assert evidence.detector.passes == 2
    again = evidence.reference_mark(a)  # its map was dropped for b's
    assert again is not None and again is not first and torch.equal(again, first)
    assert evidence.detector.passes == 2
    assert evidence.reference_mark(pack) is None and evidence.detector.passes == 3
    monkeypatch.setattr(home, "get_blob", lambda sha: pytest.fail("a package shot decoded again"))
    assert evidence.reference_mark(pack) is None and evidence.detector.passes == 3
    home.close()


def test_photo_reuse_across_listings(engine: ScoringEngine, grocery: Path) -> None:
    data = _val(grocery, MILK, 2)
    first = engine.score(ScoreRequest(data, listing="L-1", seller="S-1"))
    assert first.duplicates == [] or all(d["listing_id"] != "L-1" for d in first.duplicates)
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    reencoded = _jpeg(np.asarray(Image.fromarray(image).resize((image.shape[1] // 2, image.shape[0] // 2))), 60)
    again = engine.score(ScoreRequest(reencoded, listing="L-2", seller="S-2"))
    assert [(d["listing_id"], d["seller_id"]) for d in again.duplicates] == [("L-1", "S-1")]
    same_listing = engine.score(ScoreRequest(data, listing="L-1", seller="S-1"), record=False)
    assert [d["listing_id"] for d in same_listing.duplicates] == ["L-2"]  # itself is not reuse
    other = engine.score(ScoreRequest(_val(grocery, OTHER, 0), listing="L-3"), record=False)
    assert other.duplicates == []


def test_duplicates_are_capped_but_counted_in_full(engine: ScoringEngine, grocery: Path) -> None:
    from markguard.serving.engine import MAX_DUPLICATES
    from markguard.vision.decode import decode_image
    from markguard.vision.phash import phash

    data = _val(grocery, MILK, 3)
    value = phash(decode_image(data)).int64
    with engine.home.sessions.begin() as session:
        for i in range(MAX_DUPLICATES + 15):
            session.add(Listing(listing_id=f"DUP-{i}", seller_id="s", image_sha256="0" * 64, phash=value ^ (1 << i % 8),
                                risk=0.5, decision="review", model_tag="m"))
        for _ in range(2):  # the listing being scored, seen before: not reuse, not counted
            session.add(Listing(listing_id="DUP-self", seller_id="s", image_sha256="0" * 64, phash=value, risk=0.5,
                                decision="review", model_tag="m"))
    result = engine.score(ScoreRequest(data, listing="DUP-self", seller="s"), record=False)
    assert result.duplicates_total == MAX_DUPLICATES + 15
    assert [d["listing_id"] for d in result.duplicates] == [f"DUP-{i}" for i in range(15, MAX_DUPLICATES + 15)]
    out = result.to_dict()
    assert out["duplicates_total"] == MAX_DUPLICATES + 15 and len(out["duplicates"]) == MAX_DUPLICATES


def test_brand_only_claim_names_the_best_product(engine: ScoringEngine, grocery: Path) -> None:
    result = engine.score(ScoreRequest(_val(grocery, MILK), brand="arla"), record=False)
    assert result.brand.name == "Arla" and result.product.name in ("Arla-Standard-Milk", "Arla-Ecological-Medium-Fat-Milk")
    assert result.claimed.brand == "arla" and result.claimed.product is None


def test_unknown_claims_fail_before_any_work(engine: ScoringEngine, grocery: Path) -> None:
    with pytest.raises(NotFound):
        engine.score(ScoreRequest(b"not even an image", brand="Nope"))
    with pytest.raises(ValueError, match="needs a brand"):
        ScoreRequest(b"", product="x")


def test_ocr_evidence_reaches_the_score(grocery: Path, tmp_path: Path) -> None:
    """A misspelt wordmark and a serial with a wrong check digit, rendered on a real photo, raise the risk."""
    from PIL import ImageDraw, ImageFont

    home = Home(tmp_path / "home")
    with home.sessions.begin() as session:
        brand = add_brand(session, "Valio", wordmarks=["VALIO"])
        brand.serial_pattern, brand.serial_checksum = r"VL\d{8}", "luhn"
    artifact = ensure_default_model(home)
    iconic = next((grocery / "iconic" / "Packages").glob("*/Valio-*/*_Iconic.jpg"))
    enroll(home, artifact, artifact.load_embedder(), brand="Valio", inputs=collect_inputs([iconic]))
    read_seconds: list[float] = []
    engine = ScoringEngine(home, ocr_budget_ms=60_000,  # no time pressure: the read must not depend on load
                           on_ocr_seconds=read_seconds.append)
    photo = Image.open(iconic).convert("RGB").resize((600, 600))
    font = ImageFont.truetype("DejaVuSans-Bold.ttf", 48)

    def label(text: str, serial: str) -> bytes:
        img = photo.copy()
        draw = ImageDraw.Draw(img)
        draw.rectangle((40, 420, 560, 580), fill="white")
        draw.text((60, 430), text, fill="black", font=font)
        draw.text((60, 500), serial, fill="black", font=font)
        return _jpeg(np.asarray(img), 92)

    genuine = engine.score(ScoreRequest(label("VALIO", "VL12345674"), brand="Valio"), record=False)
    fake = engine.score(ScoreRequest(label("VALJO", "VL12345675"), brand="Valio"), record=False)
    assert any(w.match == "exact" for w in genuine.ocr.wordmarks), genuine.ocr
    assert any(w.match == "near_miss" for w in fake.ocr.wordmarks), fake.ocr
    assert fake.signals["wordmark_near_miss"].value == 1.0
    assert fake.signals["serial_invalid"].value == 1.0 and genuine.signals["serial_invalid"].value == 0.0
    assert len(read_seconds) == 2 and all(s > 0 for s in read_seconds)  # the OCR hook saw each read
    engine.score(ScoreRequest(label("VALIO", "VL12345674"), brand="Valio"), record=False)
    assert len(read_seconds) == 2  # the same photo again: its lines are cached, nothing read
    ocr_part = {n: (genuine.signals[n].contribution, fake.signals[n].contribution) for n in genuine.signals if n.startswith(("wordmark", "serial"))}
    logit = lambda r: np.log(r / (1 - r))  # noqa: E731
    assert logit(fake.risk) - logit(genuine.risk) > 3.0, ocr_part


def test_batched_scores_equal_single_scores(engine: ScoringEngine, grocery: Path) -> None:
    requests = [ScoreRequest(_val(grocery, MILK, i), brand="Arla") for i in range(3)]
    together = engine.score_many(requests, record=False)
    alone = [engine.score(r, record=False) for r in requests]
    for a, b in zip(together, alone, strict=True):
        assert a.risk == pytest.approx(b.risk, abs=1e-3) and a.decision == b.decision


def test_title_is_echoed_and_stored_and_the_listing_keeps_the_judged_brand(engine: ScoringEngine, grocery: Path) -> None:
    data, title = _val(grocery, MILK, 3), "Arla standard milk 1 l — genuine, sealed"
    result = engine.score(ScoreRequest(data, listing="T-1", seller="S-9", title=title))
    assert result.to_dict()["claimed"] == {"brand": None, "product": None, "title": title}
    assert result.brand.name == "Arla"  # nothing claimed: judged against the best-matching brand
    with engine.home.sessions() as session:
        row = session.scalars(select(Listing).where(Listing.listing_id == "T-1")).one()
        arla = session.scalar(select(Brand.id).where(Brand.name == "Arla"))
    assert row.result["title"] == title and row.brand_id == arla
    untitled = engine.score(ScoreRequest(data, brand="arla"), record=False)
    assert untitled.to_dict()["claimed"] == {"brand": "arla", "product": None}


def test_index_size_counts_the_loaded_references(engine: ScoringEngine) -> None:
    with engine.home.sessions() as session:
        references = len(session.scalars(select(Reference.id)).all())
    assert engine.index_size == len(engine.index.ids) == references == 6


@pytest.mark.parametrize("part", ["detector", "verifier"])
def test_a_swapped_mark_detector_or_verifier_is_refused(tmp_path: Path, part: str, verifier_model: Path) -> None:
    """The registry pins the detector's and the mark verifier's weights as it pins the embedder's:
    replacing both the weights and the checksum in `detector.json` (`verifier.json`) of the home's copy
    is caught before either is loaded."""
    import json

    from markguard.serving.registry import promoted_artifact
    from markguard.vision.artifact import sha256_file
    from markguard.vision.errors import IntegrityError

    home = Home(tmp_path / "home")
    register_artifact(home, verifier_model, promote_it=True)
    artifact = ensure_default_model(home)
    engine = ScoringEngine(home, ocr=False)
    assert engine.detector is not None and engine.scorer.verifier is not None
    weights = artifact.path / getattr(artifact, part).weights_file
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    config = json.loads((artifact.path / f"{part}.json").read_text())
    config["weights_sha256"] = sha256_file(weights)
    (artifact.path / f"{part}.json").write_text(json.dumps(config))
    with pytest.raises(IntegrityError, match=part):
        promoted_artifact(home)


def test_a_reference_deleted_between_refresh_and_judge_is_left_out(tmp_path: Path, grocery: Path) -> None:
    """The race of one process: a delete commits after the engine's refresh and before its judge, so the
    index it judges with still holds vectors whose catalog rows (and blobs) are gone. Forced in order,
    no threads: such hits are left out of the answer, never a 500."""
    from markguard.serving.references import delete_references

    home = arla_home(tmp_path / "home", grocery, train_photos=1)
    engine = ScoringEngine(home, ocr=False)
    with home.sessions() as session:
        doomed = sorted(session.scalars(select(Reference.id).join(Product, Product.id == Reference.product_id)
                                        .where(Product.name == MILK.split("/")[1])))
    assert len(doomed) == 2
    requests = [ScoreRequest(_val(grocery, MILK), brand="Arla", product=MILK.split("/")[1], listing="R-1"),
                ScoreRequest(_val(grocery, MILK), brand="Arla", listing="R-2"),
                ScoreRequest(_val(grocery, MILK), listing="R-3")]
    before = [engine.score(r, record=False) for r in requests]
    assert all({m.reference_id for m in b.matches} & set(doomed) for b in before)  # the doomed ones are evidence

    fresh = ScoringEngine(home, ocr=False)  # no reference features cached: it reads them after the delete
    engine.refresh()
    plans = [(e, e.plan(r)) for e in (engine, fresh) for r in requests]
    assert delete_references(home, brand="Arla", ids=doomed) == doomed  # commits between refresh and judge
    assert set(doomed) <= {int(i) for i in engine.index.ids}  # the engine still holds their vectors
    for e, plan in plans:
        result = e.finish(plan, e.embed(plan.crops), record=False)
        assert not {m.reference_id for m in result.matches} & set(doomed)
        assert result.matches and all(m.product == OTHER.split("/")[1] for m in result.matches)
    engine.refresh()  # and the next refresh drops them
    assert not set(doomed) & {int(i) for i in engine.index.ids}
