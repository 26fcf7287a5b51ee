"""vision: evidence — what the pipeline found about one photo and one claim, as typed records.

Each stage returns one of these; the signals (`vision.signals`) are numbers read off them, and the
score JSON's `ocr` part is `OcrEvidence.to_dict()`. Nothing here looks anything up: the catalog's
answers (a serial's registry status, its reuse by other sellers) arrive as `SerialRecord`s from the
pipeline's `EvidenceSource`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from markguard.vision.geometry import GeometryMatch
from markguard.vision.ocr import OcrLine
from markguard.vision.text import SerialCandidate, WordmarkHit, WordmarkMatch

__all__ = ["SerialRecord", "SerialEvidence", "OcrEvidence", "EmbeddingEvidence", "KnownFakeEvidence",
           "MarkEvidence", "ClaimEvidence"]


@dataclasses.dataclass(frozen=True)
class SerialRecord:
    """What the catalog knows of one serial: in the brand's genuine registry (None: the brand keeps
    none), and how many other listings and other sellers showed it."""

    registered: bool | None
    seen_in_listings: int = 0
    seen_by_sellers: int = 0


@dataclasses.dataclass(frozen=True)
class SerialEvidence:
    """One serial read on the photo, judged: the score JSON's `ocr.serials[i]`."""

    text: str
    normalized: str
    format_ok: bool | None
    checksum_ok: bool | None
    registered: bool | None
    seen_in_listings: int
    seen_by_sellers: int

    @classmethod
    def of(cls, candidate: SerialCandidate, record: SerialRecord) -> SerialEvidence:
        return cls(text=candidate.text, normalized=candidate.normalized, format_ok=candidate.format_ok,
                   checksum_ok=candidate.checksum_ok, registered=record.registered,
                   seen_in_listings=record.seen_in_listings, seen_by_sellers=record.seen_by_sellers)

    @property
    def invalid(self) -> bool:
        return self.format_ok is False or self.checksum_ok is False


@dataclasses.dataclass(frozen=True)
class OcrEvidence:
    """The photo's text: lines read, wordmarks recognised (or nearly), serials judged."""

    lines: tuple[OcrLine, ...] = ()
    wordmarks: tuple[WordmarkHit, ...] = ()
    serials: tuple[SerialEvidence, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "lines": [line.to_dict() for line in self.lines],
            "wordmarks": [{**dataclasses.asdict(h), "match": h.match.value} for h in self.wordmarks],
            "serials": [dataclasses.asdict(s) for s in self.serials],
        }

    def own_wordmarks(self, brand: str | None) -> list[WordmarkHit]:
        return [h for h in self.wordmarks if brand is not None and h.brand == brand]

    @property
    def exact_brands(self) -> set[str]:
        return {h.brand for h in self.wordmarks if h.match is WordmarkMatch.EXACT}


@dataclasses.dataclass(frozen=True)
class EmbeddingEvidence:
    """The claim as the embedding sees it, on the region most similar to the claim's genuine references.

    `rival_similarity`: best similarity to a genuine reference outside the claim;
    `counterfeit_similarity`: best similarity to the claimed brand's known fakes (that region)."""

    region: int
    genuine_similarity: float | None
    rival_similarity: float | None
    counterfeit_similarity: float | None


@dataclasses.dataclass(frozen=True)
class KnownFakeEvidence:
    """The claimed brand's known fakes (brand-enrolled or moderator-confirmed) against the photo.

    `similarity` / `genuine_similarity`: best over all regions to a known fake / to a genuine reference
    of the claim; `copy_distance`: bits between the photo's perceptual hash and the nearest known
    fake's (None: not measured); `reference_id`: that known fake."""

    similarity: float | None
    genuine_similarity: float | None
    reference_id: int | None = None
    copy_distance: int | None = None


@dataclasses.dataclass(frozen=True)
class MarkEvidence:
    """The photo's mark against the claim's nearest genuine references, as the model's mark verifier
    (`vision.verify`) compares them: the lowest logit that the mark is not the reference's, and that
    reference."""

    logit: float
    reference_id: int


@dataclasses.dataclass
class ClaimEvidence:
    """Everything judged about one (photo, claim): the input of every signal (`vision.signals`)."""

    brand: str | None  # the claimed (or best-matching) brand's name
    embedding: EmbeddingEvidence | None = None
    geometry: GeometryMatch | None = None
    ocr: OcrEvidence | None = None
    known_fake: KnownFakeEvidence | None = None
    mark: MarkEvidence | None = None
