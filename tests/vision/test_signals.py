"""vision.signals: one registry that serving and calibration both compute, and fusions that weigh all of it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from markguard.vision.evidence import ClaimEvidence, EmbeddingEvidence, KnownFakeEvidence
from markguard.vision.scoring import Fusion
from markguard.vision.signals import (
    KNOWN_FAKE_COPY_BITS,
    SIGNALS,
    compute_signals,
    expert_priors,
    register_signal,
)

SHIPPED_FUSION = Path(__file__).resolve().parents[2] / "serving" / "default_model" / "fusion.json"


def _logistic(names) -> dict:
    return {"kind": "logistic", "bias": 0.0, "match_threshold": 0.3, "review_at": 0.5, "takedown_at": 0.9,
            "signals": {n: {"weight": 0.0, "mean": 0.0, "scale": 1.0} for n in names}}


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_a_fusion_that_forgets_a_signal_is_refused(name: str) -> None:
    everything = _logistic(SIGNALS)
    Fusion(everything)
    del everything["signals"][name]
    with pytest.raises(ValueError, match=name):
        Fusion(everything)
    Fusion({**everything, "priors": {name: 0.0}})  # an explicit "no weight" is a weight


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_every_signal_has_a_direction_and_a_prior_that_agrees(name: str) -> None:
    spec = SIGNALS[name]
    assert spec.direction in (-1, 1) and spec.prior * spec.direction >= 0 and spec.doc


def test_the_shipped_fusion_weighs_every_signal() -> None:
    fusion = json.loads(SHIPPED_FUSION.read_text())
    Fusion(fusion)
    assert set(fusion["signals"]) | set(fusion["priors"]) == set(SIGNALS)


def test_a_fusion_weighing_an_unknown_signal_is_refused() -> None:
    with pytest.raises(ValueError, match="nobody computes"):
        Fusion({**_logistic(SIGNALS), "priors": {"made_up": 1.0}})


def test_registering_a_signal_twice_or_against_its_direction_fails() -> None:
    with pytest.raises(ValueError, match="twice"):
        register_signal("margin", direction=-1)(lambda e: None)
    with pytest.raises(ValueError, match="direction"):
        register_signal("new_signal", direction=+1, prior=-1.0)(lambda e: None)
    assert "new_signal" not in SIGNALS


def test_no_evidence_is_no_signal() -> None:
    assert compute_signals(ClaimEvidence(brand="Acme")) == dict.fromkeys(SIGNALS)


def test_known_fake_signals() -> None:
    embedding = EmbeddingEvidence(region=0, genuine_similarity=0.6, rival_similarity=0.5, counterfeit_similarity=0.7)

    def values(**known) -> dict:
        return compute_signals(ClaimEvidence(brand="Acme", embedding=embedding, known_fake=KnownFakeEvidence(**known)))

    nearer = values(similarity=0.7, genuine_similarity=0.6, copy_distance=KNOWN_FAKE_COPY_BITS + 1)
    assert nearer["known_fake_nearest"] == 1.0 and nearer["known_fake_copy"] == 0.0
    farther = values(similarity=0.5, genuine_similarity=0.6, copy_distance=KNOWN_FAKE_COPY_BITS)
    assert farther["known_fake_nearest"] == 0.0 and farther["known_fake_copy"] == 1.0
    assert values(similarity=0.5, genuine_similarity=None)["known_fake_nearest"] == 1.0  # nothing genuine to prefer
    assert values(similarity=None, genuine_similarity=0.6)["known_fake_nearest"] is None


def test_a_copy_of_a_known_fake_moves_a_shipped_decision_to_takedown() -> None:
    """A well-matched, genuine-looking claim (log-odds about -3.5 before any known-fake evidence) reaches the
    shipped takedown threshold once its photo is a copy of a known fake of the brand, whether the shipped
    fusion fitted `known_fake_copy` (on calibration copies of enrolled known fakes) or keeps its prior."""
    spec = json.loads(SHIPPED_FUSION.read_text())
    shipped = Fusion(spec)
    takedown = np.log(shipped.policy.takedown_at / (1 - shipped.policy.takedown_at))
    fitted = spec["signals"].get("known_fake_copy")
    lift = fitted["weight"] * (1 - fitted["mean"]) / fitted["scale"] if fitted else spec["priors"]["known_fake_copy"]
    nearest = spec["priors"].get("known_fake_nearest", 0.0)  # 0 when the calibration data spoke against it
    assert -3.5 + nearest + lift >= takedown
    assert shipped.policy.review_at < shipped.policy.takedown_at
    assert expert_priors()["known_fake_copy"] >= expert_priors()["known_fake_nearest"] > 0  # the documented priors


def test_serving_and_calibration_compute_the_same_signals(grocery: Path, tmp_path: Path) -> None:
    """The signals of a served score and of a calibration claim are the registry's, both ways round."""
    from markguard.serving.brands import add_brand
    from markguard.serving.engine import ScoreRequest, ScoringEngine
    from markguard.serving.enroll import collect_inputs, enroll
    from markguard.serving.registry import ensure_default_model
    from markguard.serving.state.home import Home
    from markguard.training.data import EvalSet, Item
    from markguard.training.evaluation import make_claims

    home = Home(tmp_path / "home")
    artifact = ensure_default_model(home)
    with home.sessions.begin() as session:
        add_brand(session, "Arla")
    iconic = sorted((grocery / "iconic").rglob("Arla-*_Iconic.jpg"))[:2]
    enroll(home, artifact, artifact.load_embedder(), brand="Arla", inputs=collect_inputs(iconic))
    served = ScoringEngine(home, ocr=False).score(ScoreRequest(iconic[0].read_bytes(), brand="Arla"), record=False)
    assert set(served.signals) == set(SIGNALS)

    from markguard.datasets.manifest import Label, ManifestRow

    def item(brand: str, product: str, genuine: bool = True) -> Item:
        row = ManifestRow(image=f"{product}.jpg", brand=brand, product=product, split="val",
                          label=Label.GENUINE if genuine else Label.COUNTERFEIT)  # `Item.genuine` tests identity
        return Item(path=tmp_path / row.image, row=row)

    refs = [item("A", "a1"), item("A", "a2"), item("B", "b1"), item("A", "a1", genuine=False)]
    queries = [item("A", "a1"), item("B", "b1"), item("A", "a1", genuine=False)]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(refs) + len(queries), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    claims = make_claims(EvalSet("tiny", refs, queries), vectors[: len(refs)], vectors[len(refs):])
    assert claims.values and all(set(v) == set(SIGNALS) for v in claims.values)
    assert any(v["known_fake_nearest"] is not None for v in claims.values)  # the known fake of A was seen


# Signals that calibration data cannot show, each with why: they must stay out of what calibration computes
# (else they belong in the fitted set) and keep their expert prior in the shipped fusion.
CALIBRATION_CANNOT_SHOW: dict[str, str] = {}  # known_fake_copy left it once calibration compared photo hashes


@pytest.fixture(scope="module")
def both_sides(grocery: Path, tmp_path_factory: pytest.TempPathFactory, verifier_model: Path) -> tuple[dict, list[dict]]:
    """One labelled photo (the brand's wordmark and a well-formed serial that is not registered, over a
    real Valio photo) judged by serving (`ScoringEngine` on the shipped model with the candidate mark
    verifier, with OCR, a serial registry and the photo as the brand's known fake) and by calibration
    (`make_claims` with the photos' features, hashes and verifier maps + `add_ocr` on an eval set of the
    same photos): each side's signal values (the served ones; every calibration claim's)."""
    from PIL import Image, ImageDraw, ImageFont

    from markguard.datasets.manifest import Label, ManifestRow
    from markguard.datasets.serials import serial_format
    from markguard.serving.brands import add_brand
    from markguard.serving.engine import ScoreRequest, ScoringEngine
    from markguard.serving.enroll import collect_inputs, enroll
    from markguard.serving.registry import ensure_default_model, register_artifact
    from markguard.serving.serials import import_serials
    from markguard.serving.state.home import Home
    from markguard.serving.state.schema import ReferenceKind
    from markguard.training.data import EvalSet, Item, load_images
    from markguard.training.evaluation import PhotoEvidence, make_claims, mark_maps
    from markguard.training.ocr_evidence import SERIAL_CHECKSUM, add_ocr
    from markguard.vision.embed import embed_images
    from markguard.vision.geometry import extract_features
    from markguard.vision.ocr import shared_ocr_engine
    from markguard.vision.phash import phash

    tmp = tmp_path_factory.mktemp("signals")
    fmt = serial_format("Valio")
    rng = np.random.default_rng(7)
    serial, registered = fmt.make(rng), fmt.make(rng)
    iconic = next((grocery / "iconic" / "Packages").glob("*/Valio-*/*_Iconic.jpg"))
    img = Image.open(iconic).convert("RGB").resize((600, 600))
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype("DejaVuSans-Bold.ttf", 48)
    draw.rectangle((40, 420, 560, 580), fill="white")
    draw.text((60, 430), "VALIO", fill="black", font=font)
    draw.text((60, 500), serial, fill="black", font=font)
    labelled = tmp / "labelled.jpg"
    img.save(labelled, "JPEG", quality=92)
    genuine = sorted(p for p in (grocery / "train").rglob("Valio-*.jpg"))[:1] + [iconic]
    rival = next((grocery / "iconic" / "Packages").glob("*/Arla-*/*_Iconic.jpg"))

    home = Home(tmp / "home")
    with home.sessions.begin() as session:
        brand = add_brand(session, "Valio", wordmarks=["VALIO"])
        brand.serial_pattern, brand.serial_checksum = fmt.pattern, SERIAL_CHECKSUM
    register_artifact(home, verifier_model, promote_it=True)
    artifact = ensure_default_model(home)
    model = artifact.load_embedder()
    enroll(home, artifact, model, brand="Valio", inputs=collect_inputs(genuine))
    with home.sessions.begin() as session:
        add_brand(session, "Arla")
    enroll(home, artifact, model, brand="Arla", inputs=collect_inputs([rival]))  # a rival for `margin`
    enroll(home, artifact, model, brand="Valio", inputs=collect_inputs([labelled]), kind=ReferenceKind.COUNTERFEIT)
    (tmp / "serials.txt").write_text(registered + "\n")
    import_serials(home, "Valio", tmp / "serials.txt", progress=False)
    engine = ScoringEngine(home, ocr_budget_ms=60_000)
    served = engine.score(ScoreRequest(labelled.read_bytes(), brand="Valio", seller="s-1"), record=False)
    home.close()

    def item(path: Path, *, brand: str = "Valio", genuine: bool = True, serial: str | None = None) -> Item:
        row = ManifestRow(image=path.name, brand=brand, product=None, split="val", source="synth", serial=serial,
                          label=Label.GENUINE if genuine else Label.COUNTERFEIT)
        return Item(path=path, row=row)

    refs = [*(item(p, serial=registered) for p in genuine), item(labelled, genuine=False), item(rival, brand="Arla")]
    queries = [item(labelled, serial=serial)]
    eval_set = EvalSet("signals", refs, queries)
    ref_images, query_images = load_images(refs), load_images(queries)
    ref_vectors, query_vectors = embed_images(model, ref_images), embed_images(model, query_images)
    photos = PhotoEvidence(query_features=[extract_features(i) for i in query_images],
                           reference_features=[extract_features(i) for i in ref_images],
                           query_hashes=[phash(i).int64 for i in query_images],
                           reference_hashes=[phash(i).int64 for i in ref_images], verifier=artifact.load_verifier())
    references, found = mark_maps(eval_set, photos.verifier, artifact.load_detector())
    photos = dataclasses.replace(photos, reference_marks=references, query_marks=found)
    claims = make_claims(eval_set, ref_vectors, query_vectors, photos=photos)
    add_ocr(claims, eval_set, shared_ocr_engine(), cache=tmp / "ocr.json", progress=False)
    return {n: s.value for n, s in served.signals.items()}, claims.values


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_a_signal_serving_computes_calibration_computes_too(name: str, both_sides: tuple[dict, list[dict]]) -> None:
    """For each registered signal: served with value on a photo that shows its evidence, and valued in some
    calibration claim of the same photos, or (the reverse) neither; a signal that calibration cannot
    show is declared above, left unfitted and given its prior by the shipped fusion."""
    served, calibration = both_sides
    assert served[name] is not None, f"serving does not compute {name} on a photo showing all evidence"
    in_calibration = any(values[name] is not None for values in calibration)
    if name in CALIBRATION_CANNOT_SHOW:
        assert not in_calibration, f"calibration now computes {name}: fit it, and drop it from CALIBRATION_CANNOT_SHOW"
        shipped = json.loads(SHIPPED_FUSION.read_text())
        assert name not in shipped["calibration"]["signals"] and shipped["priors"][name] == SIGNALS[name].prior
    else:
        assert in_calibration, f"serving computes {name} but calibration never does"
