"""`/metrics` is public, so it is bounded: requests are labelled by route template (every unknown path
shares one label) and decisions carry no brand name."""

from __future__ import annotations

import secrets

from .hostile import call


def test_random_paths_add_no_series_and_brands_are_not_shown(attack_client, attack_home):
    platform = attack_home.keys["platform"]
    tokens = [secrets.token_hex(6) for _ in range(50)]
    for token in tokens:
        assert call(attack_client, "GET", f"/{token}/x", platform).status_code == 404
    r = call(attack_client, "POST", "/v1/score", platform, data={"brand": "Oatly"},
             files={"image": ("p.jpg", attack_home.photos[0].read_bytes())})
    assert r.status_code == 200, r.text
    call(attack_client, "GET", "/v1/brands/Oatly", attack_home.keys["oatly"])
    r = attack_client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert not any(token in text for token in tokens)
    assert 'route="unmatched"' in text and 'route="/v1/brands/{brand}"' in text and 'route="/v1/score"' in text
    assert "Oatly" not in text and "Arla" not in text and "brand=" not in text
    assert 'markguard_decisions_total{decision="' in text
