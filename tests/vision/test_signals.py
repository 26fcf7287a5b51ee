"""vision.signals: one registry that serving and calibration both compute, and fusions that weigh all of it."""

from __future__ import annotations

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

    from markguard.datasets.manifest import ManifestRow

    def item(brand: str, product: str, genuine: bool = True) -> Item:
        row = ManifestRow(image=f"{product}.jpg", brand=brand, product=product, split="val",
                          label="genuine" if genuine else "counterfeit")
        return Item(path=tmp_path / row.image, row=row)

    refs = [item("A", "a1"), item("A", "a2"), item("B", "b1"), item("A", "a1", genuine=False)]
    queries = [item("A", "a1"), item("B", "b1"), item("A", "a1", genuine=False)]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(refs) + len(queries), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    claims = make_claims(EvalSet("tiny", refs, queries), vectors[: len(refs)], vectors[len(refs):])
    assert claims.values and all(set(v) == set(SIGNALS) for v in claims.values)
    assert any(v["known_fake_nearest"] is not None for v in claims.values)  # the known fake of A was seen
