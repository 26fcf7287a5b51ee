"""Config layers: defaults ← experiment file ← --set, typos refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from markguard.training.config import ConfigError, load_config


def test_layers_merge_in_order(tmp_path: Path) -> None:
    base = load_config()
    assert "_comment" not in base and "_comment" not in base["optim"]
    exp = tmp_path / "exp.json"
    exp.write_text(json.dumps({"_comment": "x", "optim": {"epochs": 3}, "model": {"embedding_dim": 64}}))
    config = load_config(exp, ["optim.epochs=5", "optim.lr=0.01", "device=cuda"])
    assert config["optim"]["epochs"] == 5 and config["optim"]["lr"] == 0.01 and config["device"] == "cuda"
    assert config["model"]["embedding_dim"] == 64 and config["optim"]["batch_size"] == base["optim"]["batch_size"]
    assert load_config("tiny")["model"]["input_size"] == 64


def test_unknown_keys_and_bad_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(None, ["optim.epoch=3"])
    with pytest.raises(ConfigError):
        load_config(None, ["optim.epochs=three"])
    exp = tmp_path / "exp.json"
    exp.write_text(json.dumps({"optim": {"lrr": 1}}))
    with pytest.raises(ConfigError):
        load_config(exp)
    with pytest.raises(ConfigError, match="counterfeit_classes"):
        load_config(None, ["loss.counterfeit_classes=brnd"])
    assert load_config(None, ["loss.counterfeit_classes=brand"])["loss"]["counterfeit_classes"] == "brand"
