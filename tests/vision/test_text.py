"""vision.text: check digits against published vectors and naive versions, serial normalisation, wordmarks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from markguard.vision.text import (
    CHECKSUMS,
    WordmarkHit,
    WordmarkMatch,
    check_digit,
    checksum_ok,
    extract_serials,
    match_wordmarks,
    normalize_serial,
    pattern_alphabet,
    serial_key,
)

# Published vectors: Luhn (ISO/IEC 7812 worked example, a Visa test number); GS1 (EAN-13, UPC-A,
# EAN-8, SSCC examples from GS1 / Wikipedia); ISO 7064 MOD 11-2 (the standard's "079X", ORCID's
# documented iDs 0000-0002-1825-0097 and 0000-0002-1694-233X, ISNI 0000 0001 2103 2683).
VALID = {
    "luhn": ["79927398713", "4539578763621486", "4111111111111111"],
    "gs1": ["4006381333931", "036000291452", "96385074", "106141411234567897"],
    "iso7064-mod11-2": ["079X", "0000000218250097", "000000021694233X", "0000000121032683"],
}
INVALID = {
    "luhn": ["79927398710", "4539578763621487"],
    "gs1": ["4006381333932", "036000291453"],
    "iso7064-mod11-2": ["0790", "0000000218250096", "0000000216942330"],
}


def test_registry_covers_the_cli_choices() -> None:
    from markguard.serving.catalog import serial_checksums

    assert set(CHECKSUMS) == set(serial_checksums()) - {"none"}


@pytest.mark.parametrize("scheme", sorted(CHECKSUMS))
def test_published_vectors(scheme: str) -> None:
    for serial in VALID[scheme]:
        assert checksum_ok(scheme, serial) is True, serial
        assert check_digit(scheme, serial[:-1]) == serial[-1]
    for serial in INVALID[scheme]:
        assert checksum_ok(scheme, serial) is False, serial


def test_checksum_skips_letters_and_separators() -> None:
    assert checksum_ok("gs1", "GTIN 4006-3813-3393-1") is True
    assert checksum_ok("iso7064-mod11-2", "0000-0002-1694-233x") is True
    assert checksum_ok("none", "anything") is None
    with pytest.raises(ValueError):
        checksum_ok("crc32", "123")


# Naive truths, written from the textbook definitions (whole-string validity, not check-digit compute).
def naive_luhn(full: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(full)):
        d = int(c)
        if i % 2 == 1:
            d = sum(int(x) for x in str(2 * d))
        total += d
    return total % 10 == 0


def naive_gs1(full: str) -> bool:
    return sum(int(c) * (1 if i % 2 == 0 else 3) for i, c in enumerate(reversed(full))) % 10 == 0


def naive_mod11_2(full: str) -> bool:
    values = [10 if c == "X" else int(c) for c in full]
    return sum(v * 2**i for i, v in enumerate(reversed(values))) % 11 == 1


NAIVE = {"luhn": naive_luhn, "gs1": naive_gs1, "iso7064-mod11-2": naive_mod11_2}


@pytest.mark.parametrize("scheme", sorted(CHECKSUMS))
@settings(max_examples=300, deadline=None)
@given(payload=st.text(alphabet="0123456789", min_size=1, max_size=20), last=st.sampled_from("0123456789X"))
def test_against_naive(scheme: str, payload: str, last: str) -> None:
    assert NAIVE[scheme](payload + check_digit(scheme, payload))
    if last == "X" and scheme != "iso7064-mod11-2":
        return
    assert checksum_ok(scheme, payload + last) == NAIVE[scheme](payload + last)


@pytest.mark.parametrize("scheme", sorted(CHECKSUMS))
@settings(max_examples=100, deadline=None)
@given(payload=st.text(alphabet="0123456789", min_size=2, max_size=16), pos=st.integers(0, 15), delta=st.integers(1, 9))
def test_single_digit_errors_are_caught(scheme: str, payload: str, pos: int, delta: int) -> None:
    full = payload + check_digit(scheme, payload)
    pos %= len(payload)
    corrupted = full[:pos] + str((int(full[pos]) + delta) % 10) + full[pos + 1 :]
    assert checksum_ok(scheme, corrupted) is False


# -- serial normalisation ------------------------------------------------------------------------

PATTERN = r"[A-Z]{2}\d{8}"


@pytest.mark.parametrize(
    ("read", "expected", "fixes"),
    [
        ("AB12345678", "AB12345678", 0),
        ("ab12345678", "AB12345678", 0),  # case is free
        ("A812345678", "AB12345678", 1),  # 8 where a letter is wanted → B
        ("AB1234567O", "AB12345670", 1),  # O where a digit is wanted → 0
        ("AB12S4S678", "AB12545678", 2),
        ("0B1234567I", "OB12345671", 2),  # both directions in one serial
        ("ABl2345678", "AB12345678", 1),  # lower-case l → L → 1
        ("AB1234Z6B8", "AB12342688", 2),
    ],
)
def test_normalize_confusions(read: str, expected: str, fixes: int) -> None:
    assert normalize_serial(read, pattern=PATTERN) == (expected, fixes)


def test_normalize_refuses_what_confusion_cannot_explain() -> None:
    assert normalize_serial("AB1234567", pattern=PATTERN) is None  # too short
    assert normalize_serial("ABX2345678", pattern=PATTERN) is None  # X is no digit look-alike
    assert normalize_serial("OOOOOOOOOO", pattern=PATTERN) is None  # needs more fixes than allowed


def test_extract_joins_words_and_skips_labels() -> None:
    found = extract_serials(["S/N: AB 1234 5678", "MADE IN CHINA"], pattern=PATTERN)
    assert [(c.normalized, c.format_ok, c.line) for c in found] == [("AB12345678", True, 0)]


def test_extract_serial_run_into_its_label() -> None:
    found = extract_serials(["SNAB12345678"], pattern=PATTERN)
    assert [(c.normalized, c.format_ok) for c in found] == [("AB12345678", True)]
    found = extract_serials(["LOT4006381333931X"], pattern=PATTERN)  # only the line's end is tried
    assert [c.format_ok for c in found] == [False]


def test_extract_with_checksum_and_hyphen_pattern() -> None:
    found = extract_serials(["GTIN 40O638I333931"], pattern=r"\d{13}", checksum="gs1")
    assert found[0].normalized == "4006381333931" and found[0].checksum_ok is True and found[0].substitutions == 2
    found = extract_serials(["REF AB 123456"], pattern=r"[A-Z]{2}-\d{6}")
    assert found[0].normalized == "AB-123456" and found[0].format_ok is True


def test_extract_reports_impossible_formats_and_bad_check_digits() -> None:
    found = extract_serials(["SN 12345678901"], pattern=PATTERN, checksum="luhn")
    assert [(c.normalized, c.format_ok) for c in found] == [("12345678901", False)]
    found = extract_serials(["4006381333932"], pattern=r"\d{13}", checksum="gs1")
    assert found[0].format_ok is True and found[0].checksum_ok is False


def test_extract_without_pattern_keeps_serial_like_words_only() -> None:
    found = extract_serials(["100% COTTON", "LOT X7734-2291", "SIZE M"], pattern=None)
    assert [(c.text, c.normalized, c.format_ok) for c in found] == [("X7734-2291", "X77342291", None)]


def test_serial_key_and_alphabet() -> None:
    assert serial_key(" ab-1234 5678 ") == "AB12345678"
    assert pattern_alphabet(r"[A-Z]{2}-?\d{6}") == "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    assert pattern_alphabet(r"(?:SN|LOT)\d{4}") == "0123456789LNOST"


# -- wordmarks ------------------------------------------------------------------------------------

MARKS = {"Patagonia": ["Patagonia"], "Adidas": ["adidas"], "God Morgon": ["God Morgon"], "Nike": ["Nike"]}


@pytest.mark.parametrize(
    ("line", "brand", "match", "distance"),
    [
        ("PATAGONIA", "Patagonia", WordmarkMatch.EXACT, 0),
        ("PATAG0NIA", "Patagonia", WordmarkMatch.EXACT, 0),  # O/0 is OCR, not the label
        ("Patagonla", "Patagonia", WordmarkMatch.EXACT, 0),  # i/l
        ("PATAGOMIA", "Patagonia", WordmarkMatch.NEAR_MISS, 1),  # m/n is not an OCR confusion
        ("Patagoina", "Patagonia", WordmarkMatch.NEAR_MISS, 1),  # transposition
        ("Patagonnia", "Patagonia", WordmarkMatch.NEAR_MISS, 1),
        ("adidas originals", "Adidas", WordmarkMatch.EXACT, 0),
        ("ADlDAS", "Adidas", WordmarkMatch.EXACT, 0),
        ("abidas", "Adidas", WordmarkMatch.NEAR_MISS, 1),
        ("GOD MORGON", "God Morgon", WordmarkMatch.EXACT, 0),
        ("G0D M0RG0N", "God Morgon", WordmarkMatch.EXACT, 0),
        ("Nlke", "Nike", WordmarkMatch.EXACT, 0),
        ("vv", None, None, None),
    ],
)
def test_wordmark_cases(line: str, brand: str | None, match: WordmarkMatch | None, distance: int | None) -> None:
    claimed = brand or "Nike"
    hits = match_wordmarks([line], brand=claimed, wordmarks=MARKS)
    if match is None:
        assert hits == []
        return
    assert [(h.brand, h.match, h.distance) for h in hits] == [(brand, match, distance)]


def test_rn_m_and_vv_w_are_confusions() -> None:
    marks = {"Puma": ["Puma"], "Wolverine": ["Wolverine"]}
    assert match_wordmarks(["PURNA"], brand="Puma", wordmarks=marks)[0].match is WordmarkMatch.EXACT
    assert match_wordmarks(["VVOLVERINE"], brand="Wolverine", wordmarks=marks)[0].match is WordmarkMatch.EXACT


def test_other_brand_and_short_marks() -> None:
    hits = match_wordmarks(["NIKE AIR", "Abidas"], brand="Patagonia", wordmarks=MARKS)
    # another brand's mark read exactly is reported; near misses count only for the claimed brand
    assert [(h.text, h.brand, h.match) for h in hits] == [("NIKE", "Nike", WordmarkMatch.OTHER_BRAND)]
    # a 4-letter mark has no near misses: too many ordinary words are one edit away
    assert match_wordmarks(["LIKE", "BIKE"], brand="Nike", wordmarks=MARKS) == []


def test_no_claim_judges_every_brand() -> None:
    hits = match_wordmarks(["Patagomia"], brand=None, wordmarks=MARKS)
    assert [(h.brand, h.match) for h in hits] == [("Patagonia", WordmarkMatch.NEAR_MISS)]


def test_ocr_signals() -> None:
    from markguard.vision.evidence import ClaimEvidence, OcrEvidence, SerialEvidence
    from markguard.vision.signals import compute_signals

    ocr_names = ("wordmark_exact", "wordmark_near_miss", "other_brand_wordmark", "serial_invalid",
                 "serial_unregistered", "serial_reuse_sellers")

    def ocr_signals(ocr: OcrEvidence, brand: str) -> dict[str, float | None]:
        values = compute_signals(ClaimEvidence(brand=brand, ocr=ocr))
        return {n: values[n] for n in ocr_names}

    assert ocr_signals(OcrEvidence(), brand="Adidas") == dict.fromkeys(ocr_names)
    near = WordmarkHit(text="Abidas", brand="Adidas", match=WordmarkMatch.NEAR_MISS, distance=1)
    serial = SerialEvidence(text="X", normalized="X", format_ok=True, checksum_ok=True, registered=False,
                            seen_in_listings=3, seen_by_sellers=2)
    ocr = OcrEvidence(wordmarks=(near,), serials=(serial,))
    assert ocr_signals(ocr, brand="Adidas") == {
        "wordmark_exact": 0.0,
        "wordmark_near_miss": 1.0,
        "other_brand_wordmark": 0.0,
        "serial_invalid": 0.0,
        "serial_unregistered": 1.0,
        "serial_reuse_sellers": pytest.approx(math.log1p(2)),
    }
    exact = WordmarkHit(text="Adidas", brand="Adidas", match=WordmarkMatch.EXACT, distance=0)
    exact_too = OcrEvidence(wordmarks=(near, exact), serials=(serial,))
    assert ocr_signals(exact_too, brand="Adidas")["wordmark_near_miss"] == 0.0  # OCR noise beside the real mark
    assert ocr_signals(ocr, brand="Nike")["other_brand_wordmark"] == 1.0
