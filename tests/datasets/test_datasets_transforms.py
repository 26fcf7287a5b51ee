"""Every registered counterfeit transform changes a real mark measurably but keeps it recognisable."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from markguard.datasets.marks import load_icons, mark_spec, render_mark
from markguard.datasets.transforms import TRANSFORMS, create_transform, misspell, register_transform
from markguard.serving.cli import main
from markguard.vision.errors import NotFound

ICONS = {i.slug: i for i in load_icons()}
# (slug, layout): real marks of each layout the synthetic photos use
CASES = [("adidas", "lockup"), ("starbucks", "lockup"), ("nike", "icon"), ("apple", "icon"), ("cocacola", "wordmark"), ("puma", "wordmark")]
OTHERS = ["github", "python", "docker", "mozilla", "intel", "samsung", "netflix", "visa", "mastercard", "ebay", "uber"]
REQUIRED = {
    "misspelled_wordmark", "substituted_font", "colour_shift", "aspect_distortion", "element_shift",
    "element_removal", "mirrored_element", "stroke_weight", "degraded_print", "look_alike",
}  # fmt: skip


def _signature(rgba: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The mark on white, resized to `shape` and softened, so a one-pixel shift is not a big change."""
    a = rgba[..., 3:].astype(np.float32) / 255
    flat = (255 * (1 - a) + rgba[..., :3] * a) / 255
    flat = cv2.resize(flat, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(flat, (0, 0), shape[0] / 24)


def _distance(a: np.ndarray, b: np.ndarray, shape: tuple[int, int]) -> float:
    return float(np.abs(_signature(a, shape) - _signature(b, shape)).mean())


def test_registry_holds_the_required_transforms() -> None:
    assert REQUIRED <= set(TRANSFORMS)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_changes_the_mark_but_keeps_it_recognisable(name: str) -> None:
    transform = create_transform(name)
    checked = 0
    for slug, layout in CASES:
        spec = mark_spec(ICONS[slug], layout=layout)
        if transform.needs_text and not spec.has_text:
            continue
        genuine = render_mark(spec, height=96)
        others = [render_mark(mark_spec(ICONS[o], layout=layout), height=96) for o in OTHERS]
        for strength in (0.3, 0.7):
            fake = transform(spec, genuine, strength=strength, rng=np.random.default_rng(0))
            shape = genuine.shape[:2]
            d = _distance(fake, genuine, shape)
            aspect = abs(np.log((fake.shape[1] / fake.shape[0]) / (genuine.shape[1] / genuine.shape[0])))
            where = f"{name} on {slug} ({layout}) at strength {strength}"
            assert d >= 0.003 or aspect >= 0.05, f"{where}: no measurable change (d={d:.4f})"
            assert d <= 0.4, f"{where}: too far from the genuine (d={d:.3f})"
            to_others = sorted(_distance(fake, o, shape) for o in others)
            assert d < to_others[len(to_others) // 2], f"{where}: no longer closer to its genuine than to other brands"
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_is_seeded(name: str) -> None:
    spec = mark_spec(ICONS["adidas"], layout="lockup")
    genuine = render_mark(spec, height=64)
    a = TRANSFORMS[name](spec, genuine, strength=0.6, rng=np.random.default_rng(7))
    b = TRANSFORMS[name](spec, genuine, strength=0.6, rng=np.random.default_rng(7))
    assert a.tobytes() == b.tobytes() and a.shape == b.shape


def test_transform_checks_its_inputs() -> None:
    spec = mark_spec(ICONS["nike"], layout="icon")
    genuine = render_mark(spec, height=64)
    with pytest.raises(ValueError, match="strength"):
        TRANSFORMS["colour_shift"](spec, genuine, strength=1.5, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="wordmark"):
        TRANSFORMS["misspelled_wordmark"](spec, genuine, strength=0.5, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        TRANSFORMS["colour_shift"](spec, genuine[..., :3], strength=0.5, rng=np.random.default_rng(0))


def test_unknown_and_duplicate_names_are_refused() -> None:
    with pytest.raises(NotFound, match="look_alike"):
        create_transform("no_such_transform")
    with pytest.raises(ValueError, match="already registered"):
        register_transform("colour_shift")(lambda *a, **k: None)


def test_misspell_always_changes_the_text() -> None:
    rng = np.random.default_rng(0)
    for text in ["Adidas", "IKEA", "3M", "X", "Coca-Cola"]:
        for edits in (1, 3):
            assert misspell(text, edits=edits, rng=rng) != text


def test_cli_lists_transforms_one_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "transforms"]) == 0
    assert capsys.readouterr().out.splitlines() == list(TRANSFORMS)
