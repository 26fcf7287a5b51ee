"""Reading images out of zip archives without trusting the archive.

Nothing is extracted to disk and no path from the archive is ever used to write; member names are
only labels. Member count, the total uncompressed size and the members' layout are checked before
any member is inflated: each central-directory entry must point at its own local header and data,
none overlapping another's or the directory (a directory listing one compressed member thousands of
times is a small file that inflates to gigabytes). Each member's size and compression ratio are
checked before it is inflated (zip bombs), and a member is read at most one byte past the size its
header declares, so a lying header is caught, never trusted.

Two callers, two policies on the same checks:
- `iter_zip_images` (reference uploads) refuses the whole archive on the first unsafe member, since
  an archive with `..` or absolute names was built to attack an extractor, and on an overall
  compression ratio over the cap;
- `markguard datasets import-folder` skips an unsafe member with its reason (`member_problem`) and
  keeps the rest, as a dataset build reports every skip.
"""

from __future__ import annotations

import dataclasses
import itertools
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from markguard.vision.decode import MAX_BYTES
from markguard.vision.errors import MarkguardError

__all__ = ["ArchiveError", "ArchiveLimits", "ArchiveMember", "is_zip", "iter_zip_images", "member_problem",
           "open_zip", "read_member"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class ArchiveError(MarkguardError):
    """An archive refused as a whole (not a zip, a bomb, too many members, hostile names), or a member
    that inflates past its declared size."""


@dataclasses.dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 10_000
    max_member_bytes: int = MAX_BYTES  # the decoder's own limit
    max_total_bytes: int = 2 * 1024**3  # uncompressed, all members together
    max_ratio: float = 200.0  # uncompressed / compressed, per member (and overall, for `iter_zip_images`)


@dataclasses.dataclass(frozen=True)
class ArchiveMember:
    name: str  # as stored in the archive: a label, never a path to write to
    data: bytes


def is_zip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


def open_zip(path: str | Path, limits: ArchiveLimits) -> zipfile.ZipFile:
    """Open a zip and check its directory (member count, total size) before inflating anything."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArchiveError(f"{path}: not a readable zip archive ({exc})") from None
    infos = archive.infolist()
    total = sum(i.file_size for i in infos)
    why = None
    if len(infos) > limits.max_members:
        why = f"{len(infos)} members, over the cap of {limits.max_members}"
    elif total > limits.max_total_bytes:
        why = f"would unpack to {total} bytes, over the cap of {limits.max_total_bytes} (zip bomb?)"
    else:
        why = _layout_problem(path, infos, archive.start_dir)
    if why is not None:
        archive.close()
        raise ArchiveError(f"{path}: {why}")
    return archive


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (version … sizes), name length, extra length


def _layout_problem(path: str | Path, infos: list[zipfile.ZipInfo], directory_at: int) -> str | None:
    """Why the members' stored bytes cannot be trusted, or None: each entry's local header must be where
    the directory says, and each member's [local header, end of its compressed data) must lie before
    the central directory and overlap no other member's (an overlapping or repeated entry is the
    small-file zip bomb, whatever the member's own ratio)."""
    spans = []
    with open(path, "rb") as fh:
        for info in infos:
            fh.seek(info.header_offset)
            raw = fh.read(_LOCAL_HEADER.size)
            if len(raw) < _LOCAL_HEADER.size or raw[:4] != b"PK\x03\x04":
                return f"member {info.filename[:100]!r}: no local header where the directory points"
            _, name_len, extra_len = _LOCAL_HEADER.unpack(raw)
            end = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + info.compress_size
            if end > directory_at:
                return f"member {info.filename[:100]!r} runs into the central directory"
            spans.append((info.header_offset, end, info.filename))
    spans.sort()
    for (_, end, name), (start, _, other) in itertools.pairwise(spans):
        if start < end:
            return f"members {name[:100]!r} and {other[:100]!r} overlap (zip bomb?)"
    return None


def member_problem(info: zipfile.ZipInfo, limits: ArchiveLimits) -> str | None:
    """Why a member must not be read, or None: an unsafe name, a link, encryption, its size or ratio."""
    name = info.filename
    if not name or "\x00" in name:
        return "unsafe path: empty or NUL in name"
    if "\\" in name:
        return "unsafe path: backslash in path"
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (parts and ":" in parts[0]):
        return "unsafe path: absolute path"
    if ".." in parts:
        return "unsafe path: escapes the archive (..)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link in archive"
    if info.flag_bits & 0x1:
        return "encrypted member"
    if info.file_size > limits.max_member_bytes:
        return f"{info.file_size} bytes exceeds the {limits.max_member_bytes}-byte limit"
    ratio = info.file_size / max(1, info.compress_size)
    if ratio > limits.max_ratio:
        return f"compression ratio {ratio:.0f} exceeds {limits.max_ratio:.0f} (zip bomb?)"
    return None


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes, read at most one byte past its declared size (checked by `member_problem`);
    a corrupt member (bad CRC, broken stream, unknown compression) is an `ArchiveError`."""
    try:
        with archive.open(info) as fh:
            data = fh.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise ArchiveError(f"member {info.filename!r} is corrupt ({exc})") from None
    if len(data) != info.file_size:
        raise ArchiveError(f"member {info.filename!r} differs from the size its header declares")
    return data


def iter_zip_images(path: str | Path, *, limits: ArchiveLimits = ArchiveLimits()) -> Iterator[ArchiveMember]:
    """Yield the image members (by suffix) of a zip in name order, after checking every member: one
    unsafe member refuses the archive."""
    with open_zip(path, limits) as archive:
        infos = sorted((i for i in archive.infolist() if not i.is_dir()), key=lambda i: i.filename)
        for info in infos:
            if (why := member_problem(info, limits)) is not None:
                raise ArchiveError(f"{path}: refused, member {info.filename!r}: {why}")
        total, compressed = sum(i.file_size for i in infos), sum(i.compress_size for i in infos)
        if compressed and total / compressed > limits.max_ratio:
            raise ArchiveError(f"{path}: suspicious overall compression ratio (zip bomb?)")
        for info in infos:
            if info.filename.lower().endswith(IMAGE_SUFFIXES):
                yield ArchiveMember(name=info.filename, data=read_member(archive, info))
