"""Configs in layers (DINOv2 style): `configs/default.json`, an experiment file, then `--set key=value`.

Keys starting with `_` are comments (units live there) and are dropped from the merged config, which
is saved in the run folder and in the model card.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from markguard.vision.errors import MarkguardError

__all__ = ["CONFIG_DIR", "ConfigError", "load_config", "merge", "apply_override"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(MarkguardError, ValueError):
    """An experiment file or `--set` override that does not fit the defaults."""


def _strip_comments(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _strip_comments(v) for k, v in node.items() if not k.startswith("_")}
    return node


def merge(base: Mapping[str, Any], layer: Mapping[str, Any], *, where: str = "") -> dict[str, Any]:
    """`layer` over `base`, recursively; a key unknown to `base` is an error (typos fail loudly)."""
    out = copy.deepcopy(dict(base))
    for key, value in layer.items():
        if key.startswith("_"):
            continue
        path = f"{where}{key}"
        if key not in out:
            raise ConfigError(f"unknown config key {path!r}")
        if isinstance(out[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {path!r} is a section, got {value!r}")
            out[key] = merge(out[key], value, where=path + ".")
        else:
            out[key] = value
    return out


def _parse_value(text: str, current: Any) -> Any:
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"expected a boolean, got {text!r}")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, list):  # comma-separated, e.g. calibration.ocr_sets=grocery_cal,synth_val
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def apply_override(config: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one `section.key=value`; the value takes the type of the default."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = config
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"unknown config section in {key!r}")
        node = node[part]
    if parts[-1] not in node or isinstance(node[parts[-1]], dict):
        raise ConfigError(f"unknown config key {key!r}")
    try:
        node[parts[-1]] = _parse_value(text, node[parts[-1]])
    except ValueError as exc:
        raise ConfigError(f"--set {key}: {exc}") from None
    return config


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None


def load_config(experiment: str | Path | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """defaults ← experiment file (a path, or a name in `configs/`) ← overrides."""
    config = _strip_comments(_read(CONFIG_DIR / "default.json"))
    if experiment:
        path = Path(experiment)
        if not path.is_file() and (CONFIG_DIR / f"{experiment}.json").is_file():
            path = CONFIG_DIR / f"{experiment}.json"
        config = merge(config, _read(path))
    for assignment in overrides:
        apply_override(config, assignment)
    if config["loss"].get("counterfeit_classes", "transform") not in ("transform", "brand"):
        raise ConfigError(f"loss.counterfeit_classes must be transform or brand, not {config['loss']['counterfeit_classes']!r}")
    return config
