"""vision: signals — the numbers the fusion weighs, each read off a claim's typed evidence.

One registry: an entry is a name, the direction it should move the risk (+1: up) and how it is read
from `ClaimEvidence`. Serving (`vision.pipeline.Scorer.judge`) and calibration
(`training.evaluation`) both call `compute_signals`, so a signal exists for both or for neither, and
`Fusion` refuses a `fusion.json` that does not weigh (fit, or give a prior to) every entry. Adding a
signal is one `@register_signal` function here plus a recalibration.

A value is None where the photo showed nothing to judge (no reference of the claim, no text read):
the fusion then adds nothing for it.

Priors (log-odds per unit of value) are for evidence that calibration data cannot show yet; training
writes them into `fusion.json` for every signal it could not fit, and serving applies only what that
file says. OCR: a misspelt own wordmark or an impossible serial alone moves a pass to review; with a
serial that three other sellers also show, to takedown. Known fakes: a photo whose nearest reference
of the brand is a known fake (brand-enrolled, or a listing a moderator confirmed counterfeit) gains
5 log-odds, enough to lift a well-matched genuine-looking photo (about -3.5) past the review threshold
(about +1.4); a copy of a known fake (the same photo re-encoded, resized, cropped by a few percent)
gains 8 more, past takedown whatever the rest says.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

from markguard.vision.evidence import ClaimEvidence
from markguard.vision.text import WordmarkMatch

__all__ = ["SignalSpec", "register_signal", "compute_signals", "SIGNALS", "signal_names", "signal_directions",
           "KNOWN_FAKE_COPY_BITS", "expert_priors"]

# A re-encoded, resized or 2%-cropped copy of a photo measured ≤ 10 bits from it; distinct photos ≥ 10
# (1st percentile 20): the same photo as a known fake.
KNOWN_FAKE_COPY_BITS = 10


@dataclasses.dataclass(frozen=True)
class SignalSpec:
    name: str
    direction: int  # +1: a larger value should raise the risk; -1: lower it
    compute: Callable[[ClaimEvidence], float | None]
    doc: str
    prior: float  # expert log-odds per unit of value, for a fusion whose calibration data cannot fit it (0: none)


SIGNALS: dict[str, SignalSpec] = {}


def register_signal(name: str, *, direction: int, prior: float = 0.0) -> Callable[[Callable[[ClaimEvidence], float | None]],
                                                                Callable[[ClaimEvidence], float | None]]:
    if direction not in (-1, 1):
        raise ValueError("direction must be +1 or -1")

    def wrap(fn: Callable[[ClaimEvidence], float | None]) -> Callable[[ClaimEvidence], float | None]:
        if name in SIGNALS:
            raise ValueError(f"signal {name!r} registered twice")
        if prior * direction < 0:
            raise ValueError(f"signal {name!r}: a prior must move the risk in the signal's direction")
        SIGNALS[name] = SignalSpec(name, direction, fn, (fn.__doc__ or "").strip(), prior)
        return fn

    return wrap


def signal_names() -> tuple[str, ...]:
    return tuple(SIGNALS)


def signal_directions() -> dict[str, int]:
    return {name: spec.direction for name, spec in SIGNALS.items()}


def expert_priors(names: Iterable[str] | None = None) -> dict[str, float]:
    """The registry's expert priors of `names` (all signals by default), as a `fusion.json` `priors` block."""
    return {n: SIGNALS[n].prior for n in (SIGNALS if names is None else names)}


def compute_signals(evidence: ClaimEvidence) -> dict[str, float | None]:
    """Every registered signal's value for one claim (None: no evidence)."""
    return {name: spec.compute(evidence) for name, spec in SIGNALS.items()}


# -- embedding (the region most similar to the claim's genuine references) -------------------------
@register_signal("genuine_similarity", direction=-1)
def _genuine_similarity(e: ClaimEvidence) -> float | None:
    """Best similarity to the claim's genuine references (the product's, if one is claimed)."""
    return e.embedding.genuine_similarity if e.embedding else None


@register_signal("margin", direction=-1)
def _margin(e: ClaimEvidence) -> float | None:
    """That minus the best similarity to any genuine reference outside the claim."""
    if e.embedding is None or e.embedding.genuine_similarity is None or e.embedding.rival_similarity is None:
        return None
    return e.embedding.genuine_similarity - e.embedding.rival_similarity


@register_signal("counterfeit_similarity", direction=+1)
def _counterfeit_similarity(e: ClaimEvidence) -> float | None:
    """Best similarity of the same region to the claimed brand's known fakes."""
    return e.embedding.counterfeit_similarity if e.embedding else None


# -- geometry (the photo against the claim's nearest genuine references) ---------------------------
@register_signal("log_inliers", direction=-1)
def _log_inliers(e: ClaimEvidence) -> float | None:
    """log1p of the homography inliers with the best-agreeing reference."""
    return math.log1p(e.geometry.inliers) if e.geometry is not None else None


@register_signal("inlier_ratio", direction=-1)
def _inlier_ratio(e: ClaimEvidence) -> float | None:
    """Inliers / ratio-test matches with that reference."""
    return e.geometry.inlier_ratio if e.geometry is not None else None


# -- the mark verifier (the photo's mark against the claim's nearest genuine references, cell by cell) ----
@register_signal("mark_mismatch", direction=+1)
def _mark_mismatch(e: ClaimEvidence) -> float | None:
    """The model's mark verifier: the lowest logit that the photo's mark is not one of the claim's
    nearest genuine references (none without a verifier in the model)."""
    return e.mark.logit if e.mark is not None else None


# -- OCR --------------------------------------------------------------------------------------------
def _read_wordmarks(e: ClaimEvidence) -> bool:
    return e.ocr is not None and bool(e.ocr.wordmarks)


@register_signal("wordmark_exact", direction=-1, prior=-0.5)
def _wordmark_exact(e: ClaimEvidence) -> float | None:
    """The claimed brand's wordmark read as spelt."""
    if not _read_wordmarks(e):
        return None
    return float(any(h.match is WordmarkMatch.EXACT for h in e.ocr.own_wordmarks(e.brand)))


@register_signal("wordmark_near_miss", direction=+1, prior=2.5)
def _wordmark_near_miss(e: ClaimEvidence) -> float | None:
    """The claimed brand's wordmark read only misspelt (beside an exact reading it is OCR noise)."""
    if not _read_wordmarks(e):
        return None
    own = e.ocr.own_wordmarks(e.brand)
    exact = any(h.match is WordmarkMatch.EXACT for h in own)
    return float(not exact and any(h.match is WordmarkMatch.NEAR_MISS for h in own))


@register_signal("other_brand_wordmark", direction=+1, prior=1.0)
def _other_brand_wordmark(e: ClaimEvidence) -> float | None:
    """Another brand's wordmark read (a look-alike, or a wrong claim)."""
    if not _read_wordmarks(e):
        return None
    return float(any(h.brand != e.brand for h in e.ocr.wordmarks))


@register_signal("serial_invalid", direction=+1, prior=2.5)
def _serial_invalid(e: ClaimEvidence) -> float | None:
    """A serial that breaks the brand's format or check digit."""
    if e.ocr is None or not e.ocr.serials:
        return None
    return float(any(s.invalid for s in e.ocr.serials))


@register_signal("serial_unregistered", direction=+1, prior=1.5)
def _serial_unregistered(e: ClaimEvidence) -> float | None:
    """Every well-formed serial read is absent from the brand's genuine registry."""
    if e.ocr is None:
        return None
    judged = [s for s in e.ocr.serials if s.registered is not None and s.format_ok is not False]
    return float(not any(s.registered for s in judged)) if judged else None


@register_signal("serial_reuse_sellers", direction=+1, prior=1.0)
def _serial_reuse_sellers(e: ClaimEvidence) -> float | None:
    """log1p of the other sellers that showed the same serial."""
    if e.ocr is None or not e.ocr.serials:
        return None
    return math.log1p(max(s.seen_by_sellers for s in e.ocr.serials))


# -- known fakes (the claimed brand's counterfeit references) ---------------------------------------
@register_signal("known_fake_nearest", direction=+1, prior=5.0)
def _known_fake_nearest(e: ClaimEvidence) -> float | None:
    """1 when a known fake of the brand is nearer to some region than any genuine reference of the claim."""
    k = e.known_fake
    if k is None or k.similarity is None:
        return None
    return float(k.genuine_similarity is None or k.similarity > k.genuine_similarity)


@register_signal("known_fake_copy", direction=+1, prior=8.0)
def _known_fake_copy(e: ClaimEvidence) -> float | None:
    """1 when the photo is a copy of a known fake (re-encoded, resized, cropped by a few percent)."""
    k = e.known_fake
    if k is None or k.copy_distance is None:
        return None
    return float(k.copy_distance <= KNOWN_FAKE_COPY_BITS)
