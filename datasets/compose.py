"""One synthetic listing photo: a mark (and maybe a serial label) printed onto a real product surface.

The mark is bent and put in perspective, follows the surface's shading and texture, and the photo then
gets the faults of a phone picture: uneven light, a shadow, a finger or object in the way, blur,
sensor noise and JPEG re-compression. Boxes of the mark and the label come back with the pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw

from markguard.datasets.fonts import load_font
from markguard.datasets.manifest import Box
from markguard.datasets.marks import luminance
from markguard.vision.decode import decode_image

__all__ = ["Scene", "compose_scene", "render_label", "rendered_packaging", "crop_square"]


@dataclass(frozen=True)
class Scene:
    """A composed photo (RGB uint8) and the boxes of what was printed on it."""

    image: np.ndarray
    boxes: tuple[Box, ...]


def crop_square(photo: np.ndarray, *, size: int, rng: np.random.Generator, zoom: tuple[float, float] = (0.65, 1.0)) -> np.ndarray:
    """A random square crop of `photo` (a share `zoom` of its short side) resized to `size`."""
    h, w = photo.shape[:2]
    side = max(8, int(min(h, w) * rng.uniform(*zoom)))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    crop = photo[y0 : y0 + side, x0 : x0 + side]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)


def rendered_packaging(*, size: int, rng: np.random.Generator) -> np.ndarray:
    """A plain printed-card surface (a colour gradient with faint print texture), for variety and as a fallback."""
    c0 = rng.integers(0, 256, 3).astype(np.float32)
    c1 = np.clip(c0 + rng.normal(0, 40, 3), 0, 255)
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    img = c0 * (1 - t) + c1 * t
    img = np.broadcast_to(img, (size, size, 3)).copy()
    img += rng.normal(0, 3, (size, size, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_label(serial: str, *, height: int, rng: np.random.Generator) -> np.ndarray:
    """A printed serial label (white sticker, barcode strip, `SN` and the serial) as RGBA."""
    font = load_font("DejaVuSansMono-Bold", 28)
    text = f"SN {serial}"
    x0, y0, x1, y1 = font.getbbox(text)
    w, h = x1 - x0 + 16, (y1 - y0) + 40
    label = Image.new("RGBA", (w, h), (250, 250, 245, 255))
    draw = ImageDraw.Draw(label)
    x = 8
    while x < w - 8:  # barcode bars from the rng: the same seed draws the same label
        bar = int(rng.integers(1, 4))
        if rng.random() < 0.55:
            draw.rectangle([x, 4, x + bar - 1, 24], fill=(20, 20, 20, 255))
        x += bar
    draw.text((8 - x0, 30 - y0), text, fill=(15, 15, 15, 255), font=font)
    draw.rectangle([0, 0, w - 1, h - 1], outline=(160, 160, 160, 255), width=1)
    rgba = np.asarray(label)
    scale = height / h
    return cv2.resize(rgba, (max(4, round(w * scale)), height), interpolation=cv2.INTER_AREA)


def _bend(rgba: np.ndarray, amount: float) -> np.ndarray:
    """Curve the print as on a bottle or a sleeve: rows move up or down along a half sine."""
    h, w = rgba.shape[:2]
    pad = int(abs(amount) * h) + 1
    big = np.pad(rgba, ((pad, pad), (0, 0), (0, 0)))
    if big.ndim == 3 and big.shape[2] == 1:
        big = big[..., 0]
    ys, xs = np.mgrid[0 : big.shape[0], 0:w].astype(np.float32)
    map_y = ys - amount * h * np.sin(np.pi * xs / max(1, w - 1))
    return cv2.remap(big, xs, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _perspective(shape: tuple[int, ...], *, center: tuple[float, float], width: float, angle: float,
                 persp: float, rng: np.random.Generator) -> np.ndarray:
    """The homography putting an image of `shape` at `center`, `width` wide, turned and in perspective."""
    h, w = shape[:2]
    height = width * h / w
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    half = np.float32([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * np.float32([width / 2, height / 2])
    rot = np.float32([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    jitter = rng.uniform(-persp, persp, (4, 2)).astype(np.float32) * min(width, height)
    dst = half @ rot.T + jitter + np.float32(center)
    return cv2.getPerspectiveTransform(src, dst)


def _warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpPerspective(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _box(alpha: np.ndarray, kind: str) -> Box | None:
    ys, xs = np.nonzero(alpha > 32)
    if len(xs) == 0:
        return None
    return Box(kind, int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def _print_onto(canvas: np.ndarray, layer: np.ndarray, *, texture: float) -> np.ndarray:
    """Lay an RGBA print onto the photo so it takes the surface's shading and fabric texture."""
    gray = cv2.cvtColor(canvas.astype(np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    smooth = cv2.GaussianBlur(gray, (0, 0), canvas.shape[0] / 40)
    a = layer[..., 3:4].astype(np.float32) / 255
    under = float((smooth[..., None] * a).sum() / max(1e-6, a.sum()))
    shade = np.clip(smooth / max(0.05, under), 0.55, 1.3)[..., None]
    detail = (gray - cv2.GaussianBlur(gray, (0, 0), 2.0))[..., None] * 255 * texture
    ink = np.clip(layer[..., :3].astype(np.float32) * shade + detail, 0, 255)
    return canvas * (1 - a) + ink * a


def compose_scene(
    mark: np.ndarray,
    *,
    surface: np.ndarray,
    clutter: np.ndarray,
    size: int,
    rng: np.random.Generator,
    label: np.ndarray | None = None,
) -> Scene:
    """Print `mark` (RGBA) and optionally `label` (RGBA) onto `surface` and photograph it badly."""
    canvas = surface.astype(np.float32)
    region = (0.0, 0.0, float(size), float(size))
    if rng.random() < 0.3:  # busy background: the product sits in a cluttered scene
        inset = rng.uniform(0.55, 0.85)
        side = int(size * inset)
        x0, y0 = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
        canvas = cv2.GaussianBlur(clutter, (0, 0), 1.0).astype(np.float32)
        canvas[y0 : y0 + side, x0 : x0 + side] = cv2.resize(surface, (side, side), interpolation=cv2.INTER_AREA)
        region = (float(x0), float(y0), float(side), float(side))
    rx, ry, rw, rh = region

    # where and how big: from most of the product down to a small detail in the frame
    mh, mw = mark.shape[:2]
    width = rw * rng.uniform(0.18, 0.8)
    width = min(width, 0.7 * rh * mw / mh)
    width = max(width, 14.0 * mw / mh)  # at least 14 px tall, or nothing could read it
    center = (rx + rw * rng.uniform(0.3, 0.7), ry + rh * rng.uniform(0.3, 0.7))
    angle = float(rng.normal(0, 0.15))
    persp = float(rng.uniform(0.0, 0.18))

    # printed on a patch when the colour would not show on this surface (a tag, a badge, a sticker)
    target_h = max(8, int(width * mh / mw * 1.5))
    small = cv2.resize(mark, (max(4, int(target_h * mw / mh)), target_h), interpolation=cv2.INTER_AREA)
    y_lo, y_hi = int(max(0, center[1] - width * mh / mw / 2)), int(min(size, center[1] + width * mh / mw / 2 + 1))
    x_lo, x_hi = int(max(0, center[0] - width / 2)), int(min(size, center[0] + width / 2 + 1))
    under = canvas[y_lo:y_hi, x_lo:x_hi].reshape(-1, 3).mean(axis=0) if y_hi > y_lo and x_hi > x_lo else np.full(3, 128.0)
    ink = small[..., :3][small[..., 3] > 128]
    ink_colour = tuple(int(v) for v in (ink.mean(axis=0) if len(ink) else (0, 0, 0)))
    contrast = abs(luminance(ink_colour) - luminance(tuple(int(v) for v in under)))
    pad = max(2, target_h // 5)
    mark_alpha = np.pad(small[..., 3], pad)
    printed = np.pad(small, ((pad, pad), (pad, pad), (0, 0)))
    if contrast < 0.25 or rng.random() < 0.15:
        ground = (245, 245, 240) if luminance(ink_colour) < 0.5 else (25, 25, 28)
        patch = np.zeros_like(printed)
        patch[..., :3] = ground
        patch[..., 3] = 255
        a = printed[..., 3:4].astype(np.float32) / 255
        patch[..., :3] = (patch[..., :3] * (1 - a) + printed[..., :3] * a).astype(np.uint8)
        printed = patch
    width *= printed.shape[1] / small.shape[1]  # the padding widens the printed piece, not the mark
    bend = float(rng.uniform(-0.12, 0.12)) if rng.random() < 0.5 else 0.0
    if bend:
        printed, mark_alpha = _bend(printed, bend), _bend(mark_alpha[..., None], bend)
    matrix = _perspective(printed.shape, center=center, width=width, angle=angle, persp=persp, rng=rng)
    warped = _warp(printed, matrix, size)
    warped_alpha = _warp(mark_alpha, matrix, size)
    warped[..., 3] = (warped[..., 3] * rng.uniform(0.85, 1.0)).astype(np.uint8)
    canvas = _print_onto(canvas, warped, texture=float(rng.uniform(0.2, 0.8)))
    boxes = [b for b in (_box(warped_alpha, "mark"),) if b]

    if label is not None:
        lh = int(rh * rng.uniform(0.07, 0.12))
        tag = cv2.resize(label, (max(4, int(lh * label.shape[1] / label.shape[0])), lh), interpolation=cv2.INTER_AREA)
        lw = float(tag.shape[1])
        best = None
        for _ in range(12):  # somewhere on the product, away from the mark
            c = (rx + rw * rng.uniform(0.15, 0.85), ry + rh * rng.uniform(0.15, 0.85))
            if boxes and boxes[0].x0 - lw / 2 < c[0] < boxes[0].x1 + lw / 2 and boxes[0].y0 - lh < c[1] < boxes[0].y1 + lh:
                continue
            best = c
            break
        best = best or (rx + rw * 0.5, ry + rh * 0.9)
        matrix = _perspective(tag.shape, center=best, width=lw, angle=float(rng.normal(0, 0.08)), persp=0.05, rng=rng)
        tag_warped = _warp(tag, matrix, size)
        canvas = _print_onto(canvas, tag_warped, texture=0.1)
        if (b := _box(tag_warped[..., 3], "label")) is not None:
            boxes.append(b)

    canvas = _photograph(canvas, boxes=boxes, clutter=clutter, rng=rng)
    return Scene(image=canvas, boxes=tuple(boxes))


def _photograph(canvas: np.ndarray, *, boxes: list[Box], clutter: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uneven light and a shadow, maybe an occluder over the mark, blur, noise and JPEG re-compression."""
    size = canvas.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    phi = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(-0.35, 0.35) * (xx * np.cos(phi) + yy * np.sin(phi)) + rng.uniform(-0.15, 0.1)
    canvas = canvas * light[..., None] * rng.uniform(0.94, 1.06, 3).astype(np.float32)
    if rng.random() < 0.4:  # a soft shadow from something beside the camera
        pts = (rng.uniform(-0.2, 1.2, (4, 2)) * size).astype(np.int32)
        shadow = np.zeros((size, size), np.float32)
        cv2.fillPoly(shadow, [pts], 1.0)
        shadow = cv2.GaussianBlur(shadow, (0, 0), size / 25)
        canvas = canvas * (1 - rng.uniform(0.2, 0.5) * shadow)[..., None]
    if boxes and rng.random() < 0.3:  # partial occlusion of the mark: a finger or another object
        b = boxes[0]
        bw, bh = b.x1 - b.x0, b.y1 - b.y0
        ow, oh = int(bw * rng.uniform(0.25, 0.5)) + 2, int(bh * rng.uniform(0.4, 1.0)) + 2
        ox = b.x0 - ow // 2 if rng.random() < 0.5 else b.x1 - ow // 2
        oy = int(b.y0 + rng.uniform(-0.3, 0.7) * bh)
        mask = np.zeros((size, size), np.float32)
        cv2.ellipse(mask, (ox + ow // 2, oy + oh // 2), (ow // 2, oh), float(rng.uniform(-30, 30)), 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), 1.2)[..., None]
        if rng.random() < 0.5:
            occluder = np.broadcast_to(np.float32([rng.uniform(170, 230), rng.uniform(120, 170), rng.uniform(100, 140)]), canvas.shape)
        else:
            occluder = np.roll(clutter.astype(np.float32), (int(rng.integers(size)), int(rng.integers(size))), axis=(0, 1))
        canvas = canvas * (1 - mask) + occluder * mask
    if rng.random() < 0.35:
        canvas = cv2.GaussianBlur(canvas, (0, 0), float(rng.uniform(0.4, 1.4)))
    elif rng.random() < 0.15:
        length = int(rng.integers(3, 8))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0 / length
        rot = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        canvas = cv2.filter2D(canvas, -1, kernel / max(1e-6, kernel.sum()))
    canvas = canvas + rng.normal(0, rng.uniform(1.0, 6.0), canvas.shape).astype(np.float32)
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(rng.integers(35, 92)))
    return decode_image(buf.getvalue())
