"""The listing photo with its evidence drawn (OpenCV): matched regions, OCR text boxes and serial reads,
each labelled. Stands in until the listing API's `evidence.png` (serving.listings) is merged."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from markguard.vision.decode import decode_image

__all__ = ["evidence_png"]

_MATCH, _TEXT, _SERIAL = (40, 160, 40), (30, 110, 230), (220, 40, 40)  # RGB


def evidence_png(photo: bytes, result: dict[str, Any]) -> bytes:
    rgb = np.ascontiguousarray(decode_image(photo))
    scale = max(1.0, max(rgb.shape[:2]) / 800)
    thick, font = max(2, round(2 * scale)), 0.5 * scale
    serial_texts = {s.get("text") for s in (result.get("ocr") or {}).get("serials", [])}
    for m in result.get("matches") or []:
        if m.get("box"):
            _box(rgb, m["box"], _MATCH, f"ref {m.get('reference_id')} {m.get('kind', '')} "
                 f"{float(m.get('similarity') or 0):.2f}", thick, font)
    for line in (result.get("ocr") or {}).get("lines", []):
        colour = _SERIAL if line.get("text") in serial_texts else _TEXT
        _box(rgb, line["box"], colour, str(line.get("text", ""))[:40], thick, font)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return png.tobytes()


def _box(rgb: np.ndarray, box: list[int], colour: tuple[int, int, int], label: str, thick: int, font: float) -> None:
    x0, y0, x1, y1 = (int(v) for v in box[:4])
    cv2.rectangle(rgb, (x0, y0), (x1 - 1, y1 - 1), colour, thick)
    (w, h), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
    top = max(0, y0 - h - base - 2)
    cv2.rectangle(rgb, (x0, top), (x0 + w + 4, top + h + base + 2), colour, -1)
    cv2.putText(rgb, label, (x0 + 2, top + h + 1), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1, cv2.LINE_AA)
