"""MARKGUARD_ADMIN_KEY: the first admin key, created once, stored hashed, usable, never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select


def test_admin_key_bootstrap_is_idempotent_and_hashed(tmp_path: Path) -> None:
    from markguard.serving.bootstrap import bootstrap_admin_key, generate_key
    from markguard.serving.keys import Role, authenticate, revoke_key
    from markguard.serving.state.home import Home
    from markguard.serving.state.schema import ApiKey

    home = Home(tmp_path / "home")
    key = generate_key()
    key_id, secret = key.split("_", 2)[1:]
    assert bootstrap_admin_key(home, key) == "created"
    assert bootstrap_admin_key(home, key) == "present"
    with home.sessions() as session:
        rows = list(session.scalars(select(ApiKey)))
    assert len(rows) == 1 and rows[0].key_id == key_id and secret not in rows[0].secret_hash
    who = authenticate(home, key)
    assert who is not None and who.role is Role.ADMIN
    with pytest.raises(ValueError, match="another secret") as err:  # same id, other secret: refused
        bootstrap_admin_key(home, f"mg_{key_id}_{'x' * 40}")
    assert secret not in str(err.value)
    revoke_key(home, key_id)
    assert bootstrap_admin_key(home, key) == "revoked" and authenticate(home, key) is None  # revocation sticks
    home.close()


def test_bad_admin_key_setting_names_the_variable_not_the_value(monkeypatch) -> None:
    from markguard.serving.settings import get_settings, masked
    from markguard.vision.errors import MarkguardError

    monkeypatch.setenv("MARKGUARD_ADMIN_KEY", "hunter2-not-a-key")
    with pytest.raises(MarkguardError, match="MARKGUARD_ADMIN_KEY") as err:
        get_settings()
    assert "hunter2" not in str(err.value)
    monkeypatch.setenv("MARKGUARD_ADMIN_KEY", "mg_0123456789abcdef_" + "s" * 43)
    settings = get_settings()
    assert settings.admin_key is not None and masked(settings)["admin_key"] == "***"
    assert "sss" not in repr(settings)


def test_key_generate_prints_a_fresh_valid_key(capsys) -> None:
    from markguard.serving.bootstrap import parse_key
    from markguard.serving.cli import main

    keys = []
    for _ in range(2):
        assert main(["key", "generate"]) == 0
        keys.append(capsys.readouterr().out.strip())
    assert keys[0] != keys[1] and all(parse_key(k) for k in keys)
