"""A corpus of hostile zips and images, built by code (no committed binaries), for the attack tests.

Each builder returns bytes; `HOSTILE_ZIPS` and `HOSTILE_IMAGES` name every case with the statuses the
API may answer (never a 5xx, never a 2xx).
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

from PIL import Image

# -- images --------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def solid_png(width: int, height: int, rgba: tuple[int, ...] = (200, 30, 40, 255)) -> bytes:
    """A PNG of one colour at any size, streamed row by row through zlib: megapixels in kilobytes."""
    channels = len(rgba)
    colour = {3: 2, 4: 6}[channels]
    row = b"\0" + bytes(rgba) * width
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def small_jpeg(seed: int = 0, size: int = 64) -> bytes:
    img = Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge size, with almost no data (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def png_text_bomb() -> bytes:
    """A 4x4 PNG carrying a zTXt chunk that inflates to 64 MB."""
    base = solid_png(4, 4, (1, 2, 3))
    ztxt = b"Comment\0\0" + zlib.compress(b"A" * 64_000_000, 9)
    return base[:-12] + _chunk(b"zTXt", ztxt) + base[-12:]


HOSTILE_IMAGES: dict[str, tuple[bytes, set[int]]] = {
    "png-bomb-header": (png_claiming(100_000, 100_000), {413, 422}),
    "png-zero-size": (png_claiming(0, 0), {422}),
    "png-text-bomb": (png_text_bomb(), {200, 201, 422}),  # refused, or decoded without inflating the text
    "png-truncated": (solid_png(64, 64)[:40], {422}),
    "jpeg-garbage": (b"\xff\xd8\xff" + b"\x00garbage" * 100, {422}),
    "jpeg-truncated": (small_jpeg()[:200], {422}),
    "webp-lying-riff": (b"RIFF\xff\xff\xff\x7fWEBPVP8 " + b"\0" * 64, {422}),
    "gif": (b"GIF89a" + b"\0" * 64, {415}),
    "empty": (b"", {413, 415, 422}),
}

# -- zips ----------------------------------------------------------------------------------------------


def plain_zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _split(data: bytes) -> tuple[bytes, list[bytes], bytes]:
    """(local part, central-directory entries, end record) of a zip without a comment or zip64."""
    end_at = data.rindex(b"PK\x05\x06")
    end = data[end_at:]
    count, size, offset = struct.unpack("<HII", end[10:20])
    entries, at = [], offset
    for _ in range(count):
        name_len, extra_len, comment_len = struct.unpack("<HHH", data[at + 28 : at + 34])
        length = 46 + name_len + extra_len + comment_len
        entries.append(data[at : at + length])
        at += length
    return data[:offset], entries, end


def _join(local: bytes, entries: list[bytes], end: bytes) -> bytes:
    directory = b"".join(entries)
    record = end[:8] + struct.pack("<HHII", len(entries), len(entries), len(directory), len(local)) + end[20:]
    return local + directory + record


def repeated_entry_zip(member: bytes, times: int, name: str = "a.png") -> bytes:
    """One compressed member, listed `times` times by the central directory: a small file that inflates
    to `times` × the member (the zip module does not refuse overlapping entries)."""
    local, entries, end = _split(plain_zip({name: member}))
    return _join(local, entries * times, end)


def overlapping_zip(member: bytes) -> bytes:
    """Two entries whose data overlap: the second's local header is inside the first's data range."""
    local, entries, end = _split(plain_zip({"a.png": member, "b.png": member}))
    second = bytearray(entries[1])
    struct.pack_into("<I", second, 42, 10)  # b's local header offset moved into a's header/data
    return _join(local, [entries[0], bytes(second)], end)


def lying_size_zip(member: bytes) -> bytes:
    """A member whose directory entry declares a tenth of its real size (ratio checks fooled)."""
    local, entries, end = _split(plain_zip({"a.png": member}))
    entry = bytearray(entries[0])
    struct.pack_into("<I", entry, 24, len(member) // 10)
    return _join(local, [bytes(entry)], end)


def directory_past_end_zip(member: bytes) -> bytes:
    local, entries, end = _split(plain_zip({"a.png": member}))
    entry = bytearray(entries[0])
    struct.pack_into("<I", entry, 42, len(local) + 10_000)
    return _join(local, [bytes(entry)], end)


def encrypted_flag_zip(member: bytes) -> bytes:
    local, entries, end = _split(plain_zip({"a.png": member}))
    entry = bytearray(entries[0])
    struct.pack_into("<H", entry, 8, struct.unpack("<H", entry[8:10])[0] | 1)
    return _join(local, [bytes(entry)], end)


def symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("a.png")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def hostile_zips() -> dict[str, tuple[bytes, set[int], str]]:
    """name → (zip bytes, allowed statuses, a word the refusal must contain, or '')."""
    image = solid_png(1200, 1000, (10, 20, 30))  # ~6 KB: compresses, but under the ratio cap per member
    noise = bytes(range(256)) * 4096  # 1 MiB, deflates to a few KiB
    return {
        "repeated-entries": (repeated_entry_zip(image, 2_000), {422}, "overlap"),
        "overlapping-entries": (overlapping_zip(image), {422}, ""),
        "lying-size": (lying_size_zip(image), {413, 422}, ""),
        "directory-past-end": (directory_past_end_zip(image), {413, 422}, ""),
        "ratio-bomb": (plain_zip({"a.png": b"\0" * 20_000_000}), {413, 422}, "zip bomb"),
        "traversal": (plain_zip({"../../etc/a.png": image}), {422}, "unsafe"),
        "absolute": (plain_zip({"/tmp/a.png": image}), {422}, "unsafe"),
        "symlink": (symlink_zip(), {422}, "link"),
        "encrypted": (encrypted_flag_zip(image), {422}, "encrypted"),
        "too-many-members": (plain_zip({f"{i}.txt": b"" for i in range(10_001)}, zipfile.ZIP_STORED), {422}, "members"),
        "not-images": (plain_zip({"a.png": noise}), {415, 422}, ""),
        "empty": (plain_zip({}), {415, 422}, ""),
        "truncated": (plain_zip({"a.png": image})[:-30], {415, 422}, ""),
    }


def call(client, method: str, path: str, key: str | None = None, **kwargs):  # noqa: ANN001, ANN201
    """A request with `Authorization: Bearer key` (the in-process client or httpx)."""
    headers = kwargs.pop("headers", {})
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return client.request(method, path, headers=headers, **kwargs)
