"""`markguard bench ocr`: serial labels and wordmarks rendered onto real clothing photos, read by the OCR stage.

Each photo gets one label card (a wordmark, correct or misspelt, and a serial of a registered format,
valid or with a corrupted check digit) in one of several fonts (DejaVu, STIX, Computer Modern, and
OCR-A / OCR-B when Debian's fonts-ocr-a / fonts-ocr-b are installed), warped in perspective and
composited on a real photo, then blurred, noised and JPEG-compressed. Prints serial read rates raw
and after normalisation, checksum-valid rate, false "valid" rate, misspelling precision and recall,
and OCR milliseconds per photo; `--out` writes the same as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from markguard.serving.settings import get_settings
from markguard.vision.text import check_digit, match_wordmarks, serial_key

__all__ = ["get_args_parser", "main", "FORMATS"]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = get_settings().data / "clothing"

# Registered formats: name → (pattern, checksum, how many payload digits, letter prefix length).
FORMATS: dict[str, tuple[str, str, int, int]] = {
    "luhn-2L10D": (r"[A-Z]{2}\d{10}", "luhn", 9, 2),
    "gtin13": (r"\d{13}", "gs1", 12, 0),
    "iso7064-16": (r"\d{15}[\dX]", "iso7064-mod11-2", 15, 0),
    "plain-3L6D": (r"[A-Z]{3}-\d{6}", "none", 6, 3),
}
BRANDS = ("Patagonia", "Columbia", "Timberland", "Carhartt", "Wrangler", "Champion", "Lacoste", "Barbour")
SERIAL_FONTS = (
    "/usr/share/fonts/truetype/ocr-a/OCRA.ttf",  # Debian fonts-ocr-a
    "/usr/share/fonts/opentype/ocr-b/OCRB.otf",  # Debian fonts-ocr-b
    "DejaVuSansMono",
    "DejaVuSansMono-Bold",
    "DejaVuSans",
    "STIXGeneral",
)
WORDMARK_FONTS = ("DejaVuSans-Bold", "DejaVuSerif-Bold", "DejaVuSans", "STIXGeneralBol", "cmb10", "DejaVuSansMono-Bold")
_PLAIN_LETTERS = "ACEFHKMNPRUVWXY"  # letters no confusion maps to a digit: misspellings use these


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="markguard bench ocr", description=__doc__.splitlines()[0], add_help=add_help)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"real photos to composite on (default {DEFAULT_DATA})")
    p.add_argument("--n", type=int, default=40, help="photos (default 40: a few minutes on 2 cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=1000, help="long side of the listing photo, px (default 1000)")
    p.add_argument("--budget-ms", type=float, default=None, help="OCR budget per photo (default: the engine's policy)")
    p.add_argument("--regions", action="store_true", help="give OCR the label's box, as a region stage would")
    p.add_argument("--misspelt", type=float, default=0.3, help="share of labels with a misspelt wordmark")
    p.add_argument("--corrupt", type=float, default=0.25, help="share of check-digit labels with a wrong check digit")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on shared cores more threads stall the recogniser)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--quiet", action="store_true")
    return p


def _font(name: str, size: int) -> ImageFont.FreeTypeFont | None:
    if name.startswith("/"):
        return ImageFont.truetype(name, size) if Path(name).is_file() else None
    from markguard.datasets.fonts import font_file

    try:
        return ImageFont.truetype(str(font_file(name)), size)
    except FileNotFoundError:
        return None


def available_fonts(names: Sequence[str]) -> list[str]:
    return [n for n in names if _font(n, 12) is not None]


def make_serial(fmt: str, rng: np.random.Generator, *, corrupt: bool) -> str:
    """A serial of the format; with `corrupt`, its check digit is replaced by a wrong one."""
    pattern, scheme, digits, letters = FORMATS[fmt]
    prefix = "".join(rng.choice(list("ABCDEFGHJKLMNPRSTUVWXYZ"), size=letters))
    payload = "".join(str(d) for d in rng.integers(0, 10, size=digits))
    if scheme == "none":
        return f"{prefix}-{payload}" if letters == 3 else prefix + payload
    check = check_digit(scheme, payload)
    if corrupt:
        wrong = [c for c in "0123456789" if c != check]
        check = str(rng.choice(wrong))
    return prefix + payload + check


def misspell(word: str, rng: np.random.Generator) -> str:
    """An edit OCR confusion does not explain: a plain-letter swap, a transposition, a drop or a doubling."""
    for _ in range(50):
        i = int(rng.integers(1, len(word) - 1))
        kind = rng.integers(0, 4)
        if kind == 0:
            out = word[:i] + str(rng.choice(list(_PLAIN_LETTERS))) + word[i + 1 :]
            out = out[:i] + (out[i].lower() if word[i].islower() else out[i]) + out[i + 1 :]
        elif kind == 1:
            out = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        elif kind == 2:
            out = word[:i] + word[i + 1 :]
        else:
            out = word[:i] + word[i] + word[i:]
        [hit] = match_wordmarks([out], brand=word, wordmarks={word: [word]}) or [None]
        if hit is not None and hit.match == "near_miss":
            return out
    raise RuntimeError(f"cannot misspell {word!r}")


def render_label(wordmark: str, serial: str, *, rng: np.random.Generator, mark_font: str, serial_font: str) -> np.ndarray:
    """A label card (RGB): the wordmark over "SN <serial>", dark ink on a light ground."""
    mark_px, serial_px = int(rng.integers(44, 64)), int(rng.integers(28, 38))
    fm, fs = _font(mark_font, mark_px), _font(serial_font, serial_px)
    assert fm is not None and fs is not None  # only available fonts are chosen
    serial_text = f"SN {serial}" if rng.random() < 0.5 else serial
    wm = fm.getbbox(wordmark)
    ws = fs.getbbox(serial_text)
    pad = 18
    width = max(wm[2], ws[2]) + 2 * pad
    height = wm[3] + ws[3] + 3 * pad
    ground = tuple(int(v) for v in rng.integers(215, 256, size=3))
    ink = tuple(int(v) for v in rng.integers(0, 60, size=3))
    card = Image.new("RGB", (width, height), ground)
    draw = ImageDraw.Draw(card)
    draw.text((pad, pad), wordmark, fill=ink, font=fm)
    draw.text((pad, 2 * pad + wm[3]), serial_text, fill=ink, font=fs)
    return np.asarray(card)


def compose(photo: np.ndarray, label: np.ndarray, *, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Warp the label in perspective onto the photo; blur, noise and JPEG the result. Returns the label's box."""
    h, w = photo.shape[:2]
    lh, lw = label.shape[:2]
    scale = float(rng.uniform(0.25, 0.6)) * w / lw  # the label spans a quarter to 60 % of the photo
    tw, th = lw * scale, lh * scale
    x0 = float(rng.uniform(0.02 * w, w - tw - 0.02 * w))
    y0 = float(rng.uniform(0.05 * h, h - th - 0.05 * h))
    jitter = 0.08 * min(tw, th)
    dst = np.array([[x0, y0], [x0 + tw, y0], [x0 + tw, y0 + th], [x0, y0 + th]], dtype=np.float32)
    dst += rng.uniform(-jitter, jitter, size=dst.shape).astype(np.float32)
    src = np.array([[0, 0], [lw, 0], [lw, lh], [0, lh]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(label, m, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(np.full((lh, lw), 255, np.uint8), m, (w, h))[..., None] / 255.0
    out = (photo * (1 - mask) + warped * mask).astype(np.float32)
    sigma = float(rng.uniform(0.0, 1.6))
    if sigma > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    out += rng.normal(0, float(rng.uniform(0, 8)), size=out.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=int(rng.integers(55, 92)))
    jpeg = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    xs, ys = dst[:, 0], dst[:, 1]
    box = (max(0, int(xs.min())), max(0, int(ys.min())), min(w, int(xs.max()) + 1), min(h, int(ys.max()) + 1))
    return jpeg, box


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    import torch

    from markguard.vision.decode import read_image
    from markguard.vision.ocr import shared_ocr_engine

    torch.set_num_threads(args.threads)
    photos = sorted(Path(args.data).rglob("*.jpg"))
    if not photos:
        print(f"markguard: no photos under {args.data}", file=sys.stderr)
        return 2
    serial_fonts = available_fonts(SERIAL_FONTS)
    mark_fonts = available_fonts(WORDMARK_FONTS)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    engine = shared_ocr_engine()  # takes the torch threads just set
    build_s = time.perf_counter() - t0
    marks = {b: [b] for b in BRANDS}
    rows: list[dict[str, Any]] = []
    for k in range(args.n):
        fmt = list(FORMATS)[k % len(FORMATS)]
        pattern, scheme, _, _ = FORMATS[fmt]
        brand = BRANDS[int(rng.integers(len(BRANDS)))]
        misspelt = bool(rng.random() < args.misspelt)
        corrupt = scheme != "none" and bool(rng.random() < args.corrupt)
        serial = make_serial(fmt, rng, corrupt=corrupt)
        wordmark = misspell(brand.upper() if rng.random() < 0.5 else brand, rng) if misspelt else brand
        wordmark = wordmark.upper() if wordmark.isupper() or rng.random() < 0.5 else wordmark
        mark_font = mark_fonts[int(rng.integers(len(mark_fonts)))]
        serial_font = serial_fonts[int(rng.integers(len(serial_fonts)))]
        photo = read_image(photos[int(rng.integers(len(photos)))])
        ph, pw = photo.shape[:2]
        s = args.size / max(ph, pw)
        photo = cv2.resize(photo, (round(pw * s), round(ph * s)), interpolation=cv2.INTER_CUBIC)
        label = render_label(wordmark, serial, rng=rng, mark_font=mark_font, serial_font=serial_font)
        image, box = compose(photo, label, rng=rng)

        started = time.perf_counter()
        lines = engine.read(image, regions=[box] if args.regions else None, budget_ms=args.budget_ms)
        read_ms = (time.perf_counter() - started) * 1000
        candidates = engine.read_serials(image, lines, pattern=pattern, checksum=scheme)
        total_ms = (time.perf_counter() - started) * 1000
        texts = [ln.text for ln in lines]
        hits = match_wordmarks(texts, brand=brand, wordmarks=marks)
        truth = serial_key(serial)
        best = candidates[0] if candidates else None
        rows.append(
            {
                "format": fmt,
                "font": Path(serial_font).stem,
                "serial": serial,
                "corrupt": corrupt,
                "wordmark": wordmark,
                "misspelt": misspelt,
                "lines": texts,
                "raw_exact": any(serial_key(t) in (truth, "SN" + truth) for t in texts),  # as read, no fixes
                "normalized_exact": any(serial_key(c.normalized) == truth for c in candidates),
                "valid_reported": any(c.format_ok and c.checksum_ok for c in candidates),
                "best": None if best is None else {"normalized": best.normalized, "format_ok": best.format_ok,
                                                    "checksum_ok": best.checksum_ok, "substitutions": best.substitutions},
                "near_miss": any(h.match == "near_miss" for h in hits),
                "exact_mark": any(h.match == "exact" for h in hits),
                "read_ms": round(read_ms, 1),
                "total_ms": round(total_ms, 1),
            }
        )
        if not args.quiet:
            r = rows[-1]
            print(f"[{k + 1}/{args.n}] {fmt:<11} {r['font']:<20} serial {'ok ' if r['normalized_exact'] else 'MISS'} "
                  f"mark {'near' if r['near_miss'] else 'exact' if r['exact_mark'] else '-':<5} "
                  f"{r['read_ms']:>7.0f} ms  {texts}", file=sys.stderr, flush=True)

    results = summarize(rows)
    results["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results["config"].update(serial_fonts=[Path(f).stem for f in serial_fonts], wordmark_fonts=mark_fonts,
                             reader_build_s=round(build_s, 2))
    results["photos"] = rows
    print_table(results)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def block(rs: list[dict[str, Any]]) -> dict[str, Any]:
        checked = [r for r in rs if FORMATS[r["format"]][1] != "none"]
        valid = [r for r in checked if not r["corrupt"]]
        corrupt = [r for r in checked if r["corrupt"]]
        tp = sum(r["near_miss"] and r["misspelt"] for r in rs)
        fp = sum(r["near_miss"] and not r["misspelt"] for r in rs)
        fn = sum(r["misspelt"] and not r["near_miss"] for r in rs)
        ms = [r["read_ms"] for r in rs]
        return {
            "photos": len(rs),
            "serial_exact_raw": _rate(sum(r["raw_exact"] for r in rs), len(rs)),
            "serial_exact_normalized": _rate(sum(r["normalized_exact"] for r in rs), len(rs)),
            "checksum_valid_rate": _rate(sum(r["valid_reported"] for r in valid), len(valid)),
            "false_valid_rate": _rate(sum(r["valid_reported"] for r in corrupt), len(corrupt)),
            "corrupted_labels": len(corrupt),
            "misspelling_precision": _rate(tp, tp + fp),
            "misspelling_recall": _rate(tp, tp + fn),
            "misspelt_labels": sum(r["misspelt"] for r in rs),
            "correct_wordmark_read_exact": _rate(sum(r["exact_mark"] for r in rs if not r["misspelt"]),
                                                 sum(not r["misspelt"] for r in rs)),
            "ocr_ms_mean": round(statistics.fmean(ms), 1) if ms else None,
            "ocr_ms_median": round(statistics.median(ms), 1) if ms else None,
            "ocr_ms_p90": round(float(np.percentile(ms, 90)), 1) if ms else None,
            "ocr_plus_serials_ms_mean": round(statistics.fmean(r["total_ms"] for r in rs), 1) if rs else None,
        }

    return {
        "overall": block(rows),
        "by_format": {f: block([r for r in rows if r["format"] == f]) for f in FORMATS},
        "by_font": {f: block([r for r in rows if r["font"] == f]) for f in sorted({r["font"] for r in rows})},
    }


def print_table(results: dict[str, Any]) -> None:
    cols = ("photos", "serial_exact_raw", "serial_exact_normalized", "checksum_valid_rate", "false_valid_rate",
            "misspelling_precision", "misspelling_recall", "ocr_ms_mean")
    short = ("n", "raw", "normalized", "cksum-valid", "false-valid", "missp-P", "missp-R", "ms/photo")
    print(f"{'':<22}" + "".join(f"{s:>12}" for s in short))
    groups = [("overall", results["overall"])] + list(results["by_format"].items()) + list(results["by_font"].items())
    for name, block in groups:
        cells = ["-" if block[c] is None else (f"{block[c]:.3f}" if isinstance(block[c], float) and c != "ocr_ms_mean"
                                                else str(block[c])) for c in cols]
        print(f"{name:<22}" + "".join(f"{c:>12}" for c in cells))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
