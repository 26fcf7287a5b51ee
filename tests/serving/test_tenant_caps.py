"""A brand key cannot stall or bloat every tenant: serial patterns run on RE2 (linear time), every list
and string a tenant stores is capped, and look-alike brand names are duplicates."""

from __future__ import annotations

import time

import pytest

from markguard.serving.caps import CAPS, Caps

from .hostile import call

CATASTROPHIC = r"(x+)+y"  # exponential on Python's backtracking `re` for "xxxx…!"


# -- serial patterns ------------------------------------------------------------------------------------
def test_a_catastrophic_pattern_matches_in_linear_time():
    from markguard.vision.text import extract_serials, normalize_serial

    text = "x" * 24 + "!"  # Python's `re` takes seconds here, doubling with each x
    started = time.perf_counter()
    assert normalize_serial(text, pattern=CATASTROPHIC) is None
    extract_serials([text * 3, "SN " + text], pattern=CATASTROPHIC)
    assert time.perf_counter() - started < 0.5


def test_patterns_re2_cannot_run_in_linear_time_are_refused():
    from markguard.serving.brands import check_serial_pattern
    from markguard.vision.errors import MarkguardError

    assert check_serial_pattern(r"[A-Z]{2}\d{6}") == r"[A-Z]{2}\d{6}"
    assert check_serial_pattern("") is None
    for bad in (r"(a)\1", r"(?=AB)\w+", r"(?<!X)\d+", "[unclosed", "a" * (CAPS.serial_pattern_chars + 1)):
        with pytest.raises(MarkguardError):
            check_serial_pattern(bad)


def test_patch_refuses_backreferences_and_long_patterns(attack_client, attack_home):
    oatly = attack_home.keys["oatly"]
    for bad in (r"(a)\1", r"(?=AB)\w+", "a" * (CAPS.serial_pattern_chars + 1)):
        r = call(attack_client, "PATCH", "/v1/brands/Oatly", oatly, json={"serial_pattern": bad})
        assert r.status_code == 422, (bad, r.text)
    r = call(attack_client, "PATCH", "/v1/brands/Oatly", oatly, json={"serial_pattern": CATASTROPHIC})
    assert r.status_code == 200, r.text  # RE2 runs it in linear time: harmless
    started = time.perf_counter()
    r = call(attack_client, "POST", "/v1/brands/Oatly/serials", oatly,
             files={"file": ("s.txt", "".join("x" * n + "!\n" for n in (28, 29, 30)))})
    assert r.status_code == 200, r.text
    assert r.json()["format_mismatch"] == r.json()["read"] >= 2 and time.perf_counter() - started < 5
    assert call(attack_client, "PATCH", "/v1/brands/Oatly", oatly, json={"serial_pattern": None}).status_code == 200


def test_cli_refuses_a_pattern_re2_cannot_compile(home_dir, capsys):
    from markguard.serving.cli import main

    assert main(["brand", "add", "Acme", "--home", str(home_dir)]) == 0
    assert main(["brand", "update", "Acme", "--serial-pattern", r"(a)\1", "--home", str(home_dir)]) == 2
    assert "RE2" in capsys.readouterr().err
    assert main(["brand", "update", "Acme", "--wordmark", "x" * (CAPS.wordmark_chars + 1),
                 "--home", str(home_dir)]) == 2


# -- caps -----------------------------------------------------------------------------------------------
def test_wordmarks_and_names_are_capped_by_the_schema(attack_client, attack_home):
    admin, oatly = attack_home.keys["admin"], attack_home.keys["oatly"]
    too_many = [f"Mark{i}" for i in range(CAPS.wordmarks + 1)]
    for body in ({"wordmarks": too_many}, {"wordmarks": ["x" * (CAPS.wordmark_chars + 1)]}, {"wordmarks": [""]},
                 {"wordmarks": []}, {"wordmarks": [f"W{i}" for i in range(200_000)]}):
        assert call(attack_client, "PATCH", "/v1/brands/Oatly", oatly, json=body).status_code == 422
    for body in ({"name": ""}, {"name": "   "}, {"name": "n" * (CAPS.brand_name_chars + 1)},
                 {"name": "Acme", "wordmarks": too_many}):
        r = call(attack_client, "POST", "/v1/brands", admin, json=body)
        assert r.status_code == 422, (body, r.text)
    schema = attack_client.get("/docs.json").json()["components"]["schemas"]
    assert schema["PolicyIn"]["properties"]["wordmarks"]["anyOf"][0]["maxItems"] == CAPS.wordmarks


def test_catalog_caps_hold_for_the_cli_too(home_dir, monkeypatch):
    from markguard.serving import brands
    from markguard.serving.state.home import Home
    from markguard.vision.errors import MarkguardError

    monkeypatch.setattr(brands, "CAPS", Caps(brands=2, products=1))
    home = Home(home_dir)
    with home.sessions.begin() as session:
        brands.add_brand(session, "One")
        brand = brands.add_brand(session, "Two")
        with pytest.raises(MarkguardError, match="cap"):
            brands.add_brand(session, "Three")
        brands.get_or_create_product(session, brand, "Cup")
        brands.get_or_create_product(session, brand, "cup")  # the same product
        with pytest.raises(MarkguardError, match="cap"):
            brands.get_or_create_product(session, brand, "Mug")
    home.close()


def test_references_and_serials_per_brand_are_capped(attack_home, monkeypatch, tmp_path):
    from markguard.serving import enroll as enroll_module
    from markguard.serving import serials
    from markguard.serving.enroll import InputImage, enroll
    from markguard.serving.registry import ensure_default_model
    from markguard.serving.state.home import Home
    from markguard.vision.errors import MarkguardError

    from .hostile import small_jpeg

    home = Home(attack_home.root)
    artifact = ensure_default_model(home)
    monkeypatch.setattr(enroll_module, "CAPS", Caps(references=3))  # Arla holds 3 already
    with pytest.raises(MarkguardError, match="cap"):
        enroll(home, artifact, artifact.load_embedder(), brand="Arla", inputs=[InputImage("new.jpg", small_jpeg(7))])
    monkeypatch.setattr(serials, "CAPS", Caps(serials=5))
    path = tmp_path / "s.txt"
    path.write_text("".join(f"AB{i:06d}\n" for i in range(6)))
    with pytest.raises(MarkguardError, match="cap"):
        serials.import_serials(home, "Arla", path, progress=False)
    home.close()


# -- look-alike names -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ＯＡＴＬＹ", "Οatly", "Оatly", "OatIy ", "oatly"])  # fullwidth, Greek O, Cyrillic O
def test_look_alike_brand_names_are_duplicates(attack_client, attack_home, name):
    r = call(attack_client, "POST", "/v1/brands", attack_home.keys["admin"], json={"name": name})
    expected = 201 if name == "OatIy " else 409  # capital I for l is ASCII: a different name (kept distinct)
    assert r.status_code == expected, (name, r.text)


def test_skeleton_maps_mixed_scripts_to_latin():
    from markguard.serving.brands import brand_key, name_skeleton

    assert brand_key("Ｎｉｋｅ") == "nike"
    assert name_skeleton("Νіке") == name_skeleton("NIKE") == "nike"  # Greek Nu, Cyrillic i, k, e
    assert name_skeleton("Café") != name_skeleton("Cafe")  # accents are letters of their own
