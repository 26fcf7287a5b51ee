"""`synth`: synthetic listing photos of N real brands, each genuine photo beside its counterfeits.

Every sample draws from its own generator seeded by (seed, brand, index, variant), so a build is
byte-reproducible for a seed whatever the number of worker processes. Splits are brand-disjoint.
"""

from __future__ import annotations

import hashlib
import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from markguard.datasets.build import (
    BuildRefused,
    BuildReport,
    Skipped,
    Tile,
    finish_build,
    prepare_output,
    save_jpeg,
)
from markguard.datasets.compose import compose_scene, crop_square, render_label, rendered_packaging
from markguard.datasets.manifest import Label, ManifestRow
from markguard.datasets.marks import BrandIcon, MarkSpec, RenderError, load_icons, mark_spec, render_mark
from markguard.datasets.serials import serial_format
from markguard.datasets.sources import product_surfaces
from markguard.datasets.splits import split_for, unit_hash
from markguard.datasets.transforms import TRANSFORMS, transform_names
from markguard.vision.decode import read_image
from markguard.vision.errors import ImageError

__all__ = ["SynthOptions", "build_synth", "pick_brands"]

_LATER_OPTIONS = ("splits", "paired_scenes")  # SynthOptions fields left out of a build's fingerprint at their defaults
MARK_HEIGHT = 128  # px: marks are rendered and transformed at this height, then scaled into the photo


@dataclass(frozen=True)
class SynthOptions:
    """What `markguard datasets synth` builds; its fields go into `build.json` (`_LATER_OPTIONS` only when set)."""

    brands: int = 200
    per_brand: int = 8
    counterfeits_per_genuine: int = 1
    size: int = 256  # px, square photos
    serial_rate: float = 0.4  # share of photos with a printed serial label
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    # Only the brands of these splits are built (None: all). A brand's split and photos do not depend on
    # it, so a test-only build of more brands is a larger held-out set, byte-identical to a full build's.
    splits: tuple[str, ...] | None = None
    # Each `train` counterfeit photographed in its genuine photo's scene (surface, placement, light,
    # label), so the pair differs by the counterfeit edit alone: training's hardest negatives. Val and
    # test photos always draw their own scenes, as listings are photographed, and are byte-identical to
    # a build without it.
    paired_scenes: bool = False


@dataclass(frozen=True)
class _Job:
    index: int
    slug: str
    spec: MarkSpec
    k: int
    split: str
    keep_tiles: bool


@dataclass
class _Result:
    rows: list[ManifestRow] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    tiles: list[Tile] = field(default_factory=list)


def pick_brands(count: int, *, seed: int, skipped: list[Skipped] | None = None) -> list[tuple[BrandIcon, MarkSpec]]:
    """`count` brands whose marks render, in an order shuffled by the seed; those that fail go to `skipped`."""
    icons = sorted(load_icons(), key=lambda i: unit_hash("brand", seed, i.slug))
    picked: list[tuple[BrandIcon, MarkSpec]] = []
    titles: set[str] = set()
    for icon in icons:
        if len(picked) >= count:
            break
        if icon.title.lower() in titles:
            continue
        spec = mark_spec(icon, seed=seed)
        try:
            render_mark(spec, height=MARK_HEIGHT)
        except RenderError as exc:
            if skipped is not None:
                skipped.append(Skipped(f"simple-icons:{icon.slug}", str(exc)))
            continue
        titles.add(icon.title.lower())
        picked.append((icon, spec))
    return picked


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


_SURFACES: list[Path] = []
_OPTS = SynthOptions()
_OUT = Path()


def _init_worker(surfaces: list[Path], opts: SynthOptions, out: Path) -> None:
    global _SURFACES, _OPTS, _OUT
    _SURFACES, _OPTS, _OUT = surfaces, opts, out


@cache
def _genuine_mark(spec: MarkSpec) -> np.ndarray:
    return render_mark(spec, height=MARK_HEIGHT)


def _surface(rng: np.random.Generator, skipped: list[Skipped]) -> np.ndarray:
    """A crop of a real product photo; a corrupt one is reported and a rendered card used instead."""
    size = _OPTS.size
    if _SURFACES and rng.random() > 0.1:
        path = _SURFACES[int(rng.integers(len(_SURFACES)))]
        try:
            return crop_square(read_image(path), size=size, rng=rng)
        except ImageError as exc:
            skipped.append(Skipped(str(path), f"surface photo: {exc}"))
    return rendered_packaging(size=size, rng=rng)


def _run_job(job: _Job) -> _Result:
    result = _Result()
    opts = _OPTS
    genuine = _genuine_mark(job.spec)
    fmt = serial_format(job.spec.brand)
    names = transform_names(text=job.spec.has_text)
    variants: list[tuple[str, str | None]] = [("genuine", None)]
    for c in range(opts.counterfeits_per_genuine):
        offset = int(unit_hash("transforms", opts.seed, job.slug) * len(names))
        variants.append((f"cf{c}", names[(offset + job.k * opts.counterfeits_per_genuine + c) % len(names)]))
    if job.keep_tiles and job.k == 0:
        result.tiles.append(Tile(_flat(genuine), f"{job.spec.brand}: genuine mark"))
    for variant, name in variants:
        rng = _rng("synth", opts.seed, job.slug, job.k, variant)
        # the scene's draws: its own generator per photo, or the genuine photo's scene again when paired
        # (it repeats exactly unless the edit changes a draw's condition, e.g. the mark's contrast)
        paired = opts.paired_scenes and job.split == "train"
        scene_rng = _rng("synth", opts.seed, job.slug, job.k, "scene") if paired else rng
        label, strength, mark = Label.GENUINE, None, genuine
        if name is not None:
            label, strength = Label.COUNTERFEIT, round(float(rng.uniform(0.3, 1.0)), 3)
            try:
                mark = TRANSFORMS[name](job.spec, genuine, strength=strength, rng=rng)
            except RenderError as exc:
                result.skipped.append(Skipped(f"{job.slug}/{job.k}/{name}", str(exc)))
                continue
        serial = None
        tag = None
        if scene_rng.random() < opts.serial_rate:
            serial = fmt.make(rng, valid=label is Label.GENUINE or rng.random() < 0.5)
            tag = render_label(serial, height=48, rng=rng)
        surface = _surface(scene_rng, result.skipped)
        clutter = _surface(scene_rng, result.skipped)
        scene = compose_scene(mark, surface=surface, clutter=clutter, size=opts.size, rng=scene_rng, label=tag)
        rel = f"images/{job.split}/{job.slug}/{job.k:03d}_{variant}.jpg"
        save_jpeg(_OUT / rel, scene.image, quality=90)
        result.rows.append(
            ManifestRow(
                image=rel, brand=job.spec.brand, label=label, split=job.split, serial=serial, boxes=scene.boxes,
                source="synth", transform=name, strength=strength,
            )
        )
        if job.keep_tiles and job.k < 2:
            caption = "genuine photo" if name is None else f"{name} s={strength:.2f}"
            result.tiles.append(Tile(scene.image, caption, label))
    return result


def _flat(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:4].astype(np.float32) / 255
    return (255 * (1 - a) + rgba[..., :3] * a).astype(np.uint8)


def build_synth(out: Path, *, data_root: Path, opts: SynthOptions, force: bool = False, workers: int = 1,
                progress: bool = True) -> tuple[BuildReport, dict]:
    """Build the synthetic set into `out`; returns the report and the stats written beside it."""
    # options added after the first builds are written only when set, so older builds keep their fingerprint
    options = {k: v for k, v in opts.__dict__.items() if k not in _LATER_OPTIONS or v != getattr(SynthOptions(), k)}
    fingerprint = {"command": "synth", "options": options, "transforms": sorted(TRANSFORMS)}
    skipped: list[Skipped] = []
    brands = [(icon, spec, split_for(spec.brand, seed=opts.seed, val_fraction=opts.val_fraction,
                                     test_fraction=opts.test_fraction))
              for icon, spec in pick_brands(opts.brands, seed=opts.seed, skipped=skipped)]
    brands = [b for b in brands if opts.splits is None or b[2] in opts.splits]
    if not brands:  # refused before anything is written: an empty manifest would pass for a held-out set
        raise BuildRefused(f"none of the {opts.brands} brands falls in splits {list(opts.splits or ())}; "
                           "build more brands (--brands)")
    prepare_output(out, fingerprint=fingerprint, force=force)
    report = BuildReport(out=out, command="synth", rows=[], skipped=skipped)
    surfaces = product_surfaces(data_root)
    if not surfaces:
        report.skipped.append(Skipped(str(data_root), "no product photos found (clothing/, grocery-packages/); using rendered cards"))
    jobs = [
        _Job(index=i, slug=icon.slug, spec=spec, k=k, split=split, keep_tiles=i < 8)
        for i, (icon, spec, split) in enumerate(brands)
        for k in range(opts.per_brand)
    ]
    sheet: dict[int, list[Tile]] = {}
    for job, result in zip(jobs, _run_all(jobs, surfaces, opts, out, workers=workers, progress=progress), strict=True):
        report.rows.extend(result.rows)
        report.skipped.extend(result.skipped)
        if result.tiles:
            sheet.setdefault(job.index, []).extend(result.tiles)
    title = f"synth: {len(brands)} brands x {opts.per_brand} (seed {opts.seed}); green genuine, red counterfeit"
    stats = finish_build(report, sheet=[sheet[i] for i in sorted(sheet)], title=title)
    return report, stats


def _run_all(jobs: list[_Job], surfaces: list[Path], opts: SynthOptions, out: Path, *, workers: int,
             progress: bool) -> Iterator[_Result]:
    bar = tqdm(total=len(jobs), desc="synth", unit="sample", disable=None if progress else True)
    try:
        if workers <= 1:
            _init_worker(surfaces, opts, out)
            for job in jobs:
                yield _run_job(job)
                bar.update()
            return
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(surfaces, opts, out)) as pool:
            for result in pool.imap(_run_job, jobs, chunksize=4):
                yield result
                bar.update()
    finally:
        bar.close()
