"""Training and evaluation data: manifests from `markguard.datasets`, classes, augmented views, eval sets.

Each (brand, product, genuine-or-transform) is its own class, so counterfeit variants and look-alike
products of a brand are pushed away from its genuine photos. The eval transform is `vision.embed.preprocess`
itself (what serving runs); augmentation only edits the uint8 image before it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from markguard.datasets.manifest import MANIFEST_NAME, Label, ManifestRow, read_manifest
from markguard.vision.decode import read_image
from markguard.vision.embed import EmbedderConfig, preprocess
from markguard.vision.errors import MarkguardError

__all__ = [
    "Item",
    "EvalSet",
    "read_items",
    "manifest_path",
    "manifest_sha256",
    "ensure_grocery",
    "ensure_synth",
    "ensure_grozi",
    "EvaluationOnlyData",
    "refuse_evaluation_only",
    "class_key",
    "make_eval_set",
    "enrolled_crop",
    "load_images",
    "load_image",
    "augment",
    "mark_box",
    "mark_view",
    "eval_transform",
]


@dataclasses.dataclass(frozen=True)
class Item:
    """A manifest row with its image's absolute path; `crop` (x0, y0, x1, y1 in the photo's pixels,
    clipped to it on loading) when only part of the photo is used."""

    path: Path
    row: ManifestRow
    crop: tuple[int, int, int, int] | None = None

    @property
    def brand(self) -> str:
        return self.row.brand

    @property
    def product(self) -> str | None:
        return self.row.product

    @property
    def genuine(self) -> bool:
        return self.row.label is Label.GENUINE


def manifest_path(path: str | Path) -> Path:
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def manifest_sha256(path: str | Path) -> str:
    return hashlib.sha256(manifest_path(path).read_bytes()).hexdigest()


def read_items(path: str | Path) -> list[Item]:
    """Every row of a manifest (read with the datasets reader), image paths made absolute."""
    mpath = manifest_path(path)
    return [Item(path=mpath.parent / row.image, row=row) for row in read_manifest(mpath)]


class EvaluationOnlyData(MarkguardError, ValueError):
    """A manifest that must never train or calibrate a model (the GroZi-120 yardstick)."""


EVALUATION_ONLY_BUILDS = ("grozi",)  # `build.json` commands whose builds are yardsticks only


def refuse_evaluation_only(path: str | Path) -> Path:
    """The manifest path, or `EvaluationOnlyData` when it is an evaluation-only build: its `build.json`
    names such a command, or a row comes from GroZi-120 (no licence to train on, and the real-photo
    yardstick stops measuring unseen brands once a model has seen them)."""
    from markguard.datasets.grozi import is_grozi_row

    mpath = manifest_path(path)
    if not mpath.is_file():  # nothing there yet (a build to make), or nothing to read
        return mpath
    build = mpath.parent / "build.json"
    command = None
    if build.is_file():
        try:
            command = json.loads(build.read_text(encoding="utf-8")).get("command")
        except (OSError, ValueError, AttributeError):
            command = None
    if command in EVALUATION_ONLY_BUILDS or any(is_grozi_row(r) for r in read_manifest(mpath)):
        raise EvaluationOnlyData(f"{mpath} is the GroZi-120 yardstick (evaluation only): it is refused as training "
                                 "or calibration data; pass it to `markguard bench embedder --grozi` instead")
    return mpath


def ensure_grocery(out: Path, *, source: str = "") -> Path:
    """The grocery manifest at `out`, built by `markguard.datasets.grocery` when missing (an
    evaluation-only build there is refused: this is what training reads)."""
    refuse_evaluation_only(out)
    if not manifest_path(out).is_file():
        from markguard.datasets.grocery import GroceryOptions, build_grocery
        from markguard.datasets.sources import default_data_root

        src = Path(source) if source else default_data_root() / "grocery-packages"
        build_grocery(Path(out), source=src, opts=GroceryOptions(), progress=True)
    return manifest_path(out)


def ensure_synth(out: Path, *, brands: int, per_brand: int, size: int, seed: int, paired_scenes: bool = False) -> Path:
    """The synthetic listing-photo manifest at `out`, built by `markguard.datasets.synth` when missing (an
    evaluation-only build there is refused: this is what training reads)."""
    refuse_evaluation_only(out)
    if not manifest_path(out).is_file():
        from markguard.datasets.sources import default_data_root
        from markguard.datasets.synth import SynthOptions, build_synth

        opts = SynthOptions(brands=brands, per_brand=per_brand, size=size, seed=seed, paired_scenes=paired_scenes)
        build_synth(Path(out), data_root=default_data_root(), opts=opts, progress=True)
    return manifest_path(out)


def ensure_grozi(out: Path, *, source: str = "") -> Path:
    """The GroZi-120 yardstick at `out`, built by `markguard.datasets.grozi` (default options) when
    missing; a manifest there that is not a GroZi build is refused. For evaluation only."""
    from markguard.datasets.grozi import is_grozi_row

    if not manifest_path(out).is_file():
        from markguard.datasets.grozi import GroziOptions, build_grozi
        from markguard.datasets.sources import default_data_root

        src = Path(source) if source else default_data_root() / "grozi120-insitu"
        build_grozi(Path(out), source=src, opts=GroziOptions(), progress=True)
    path = manifest_path(out)
    rows = read_manifest(path)
    if not rows:
        raise ValueError(f"{path} holds no frames: was the GroZi-120 source (grozi120-insitu) found?")
    if not any(is_grozi_row(r) for r in rows):
        raise ValueError(f"{path} is not a GroZi-120 build (`markguard datasets grozi --out DIR`)")
    return path


def class_key(row: ManifestRow, *, per_transform: bool = True) -> str:
    """The metric-learning class: brand, product, and `genuine` or the counterfeit transform (or one
    `counterfeit` class per brand and product when not `per_transform`)."""
    kind = "genuine" if row.label is Label.GENUINE else (per_transform and row.transform or "counterfeit")
    return f"{row.brand}\x1f{row.product or ''}\x1f{kind}"


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """References to enroll (genuine and known fakes) and the photos to score against them."""

    name: str
    references: list[Item]
    queries: list[Item]


def make_eval_set(items: Sequence[Item], *, split: str, name: str = "", reference_margin: float = 1.25) -> EvalSet:
    """Queries: the split's photos. References: every catalogue (`source: iconic`) image of the manifest
    when it has them (all products enrolled, as a brand would); otherwise the split's first genuine photo
    per (brand, product) and first counterfeit per brand (a known fake), in manifest path order, which then
    leave the queries. A reference photo with a `mark` box is enrolled as a brand uploads its logo: cropped
    to the box grown by `reference_margin`.
    """
    in_split = sorted((i for i in items if i.row.split == split), key=lambda i: i.row.image)
    iconic = sorted((i for i in items if i.row.source == "iconic"), key=lambda i: i.row.image)
    if iconic:
        refs = iconic
        queries = [i for i in in_split if i.row.source != "iconic"]
    else:
        refs, seen_genuine, seen_fake = [], set(), set()
        for item in in_split:
            key = (item.brand, item.product)
            if item.genuine and key not in seen_genuine:
                seen_genuine.add(key)
                refs.append(item)
            elif not item.genuine and item.brand not in seen_fake:
                seen_fake.add(item.brand)
                refs.append(item)
        chosen = {id(r) for r in refs}
        queries = [i for i in in_split if id(i) not in chosen]
        refs = [enrolled_crop(r, reference_margin) for r in refs]
    return EvalSet(name=name or split, references=refs, queries=queries)


def enrolled_crop(item: Item, margin: float) -> Item:
    """The item cropped to its `mark` box grown by `margin` (unchanged when it has none)."""
    box = mark_box(item)
    if box is None:
        return item
    x0, y0, x1, y1 = box
    gx, gy = (x1 - x0) * (margin - 1) / 2, (y1 - y0) * (margin - 1) / 2
    return dataclasses.replace(item, crop=(max(0, round(x0 - gx)), max(0, round(y0 - gy)), round(x1 + gx), round(y1 + gy)))


def load_images(items: Sequence[Item], *, max_side: int | None = None) -> list[np.ndarray]:
    """Decode with the safe decoder. Evaluation keeps photos as decoded (serving sees the same pixels);
    training views may shrink large photos (area) to `max_side` before augmenting, to bound the work."""
    return [load_image(item, max_side=max_side)[0] for item in items]


def load_image(item: Item, *, max_side: int | None = None) -> tuple[np.ndarray, float]:
    """One photo (see `load_images`), cropped to `item.crop` if set, and the factor it was shrunk by
    (1.0 when kept as decoded)."""
    image = read_image(item.path)
    if item.crop is not None:
        x0, y0, x1, y1 = item.crop
        image = np.ascontiguousarray(image[max(0, y0) : max(y0 + 1, y1), max(0, x0) : max(x0 + 1, x1)])
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image, 1.0
    s = max_side / max(h, w)
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA), s


def mark_box(item: Item, scale: float = 1.0) -> tuple[int, int, int, int] | None:
    """The item's `mark` box (None without one), in the pixels of its photo (after `item.crop`) shrunk by `scale`."""
    box = next((b for b in item.row.boxes if b.kind == "mark"), None)
    if box is None:
        return None
    ox, oy = (max(0, item.crop[0]), max(0, item.crop[1])) if item.crop is not None else (0, 0)
    return (round((box.x0 - ox) * scale), round((box.y0 - oy) * scale), round((box.x1 - ox) * scale),
            round((box.y1 - oy) * scale))


def mark_view(image: np.ndarray, box: tuple[int, int, int, int], *, rng: np.random.Generator,
              params: dict[str, Any]) -> np.ndarray:
    """A random view of the mark: its box grown by `mark_context` (a [low, high] factor per side) and
    shifted by up to a sixth of its size, clipped to the photo, then `augment`ed without the crop.

    This is the crop serving's region proposals hand the embedder when they find the mark, so training
    on it teaches the model the marks, not the backgrounds they were printed on."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    bw, bh = max(1, x1 - x0), max(1, y1 - y0)
    lo, hi = (float(v) for v in params["mark_context"])
    grow = rng.uniform(lo, hi)
    cx = (x0 + x1) / 2 + rng.uniform(-1, 1) * bw / 6
    cy = (y0 + y1) / 2 + rng.uniform(-1, 1) * bh / 6
    half = max(bw, bh) * grow / 2  # square, like the windows serving proposes
    a0, b0 = int(max(0, round(cx - half))), int(max(0, round(cy - half)))
    a1, b1 = int(min(w, round(cx + half))), int(min(h, round(cy + half)))
    if a1 - a0 < 8 or b1 - b0 < 8:
        return augment(image, rng=rng, params=params)
    return augment(image[b0:b1, a0:a1], rng=rng, params={**params, "scale_min": 1.0})


def eval_transform(images: Sequence[np.ndarray], config: EmbedderConfig) -> torch.Tensor:
    """The evaluation transform: serving's `preprocess`, unchanged (a test checks it bit for bit)."""
    return preprocess(images, config)


def augment(image: np.ndarray, *, rng: np.random.Generator, params: dict[str, Any]) -> np.ndarray:
    """A random view of an RGB uint8 photo: crop, small rotation, brightness/contrast, blur.

    No flips and no hue changes: a mirrored or recoloured mark is one of the counterfeit transforms.
    """
    h, w = image.shape[:2]
    area = rng.uniform(float(params["scale_min"]), 1.0) * h * w
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch = int(min(h, max(8, round(np.sqrt(area / ratio)))))
    cw = int(min(w, max(8, round(np.sqrt(area * ratio)))))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = image[y0 : y0 + ch, x0 : x0 + cw]
    angle = rng.uniform(-1, 1) * float(params["rotate"])
    if angle:
        m = cv2.getRotationMatrix2D((cw / 2, ch / 2), angle, 1.0)
        out = cv2.warpAffine(out, m, (cw, ch), borderMode=cv2.BORDER_REFLECT_101)
    b = 1.0 + rng.uniform(-1, 1) * float(params["brightness"])
    c = 1.0 + rng.uniform(-1, 1) * float(params["contrast"])
    f = out.astype(np.float32)
    f = (f - f.mean()) * c + f.mean() * b
    out = np.clip(f, 0, 255).astype(np.uint8)
    if rng.random() < float(params["blur_p"]):
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=rng.uniform(0.5, 1.5))
    return np.ascontiguousarray(out)
