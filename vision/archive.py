"""Reading images out of zip archives without trusting the archive.

Nothing is extracted to disk and no path from the archive is ever used to write; member names are
only labels. Member count, each member's size, the total uncompressed size and the compression ratio
are capped before any member is inflated (zip bombs), and names with `..` or an absolute path make
the whole archive refused, since such an archive was built to attack an extractor.
"""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from markguard.vision.decode import MAX_BYTES
from markguard.vision.errors import MarkguardError

__all__ = ["ArchiveError", "ArchiveLimits", "ArchiveMember", "iter_zip_images", "is_zip"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class ArchiveError(MarkguardError):
    """An archive refused as a whole (hostile names, a bomb, too many members, not a zip)."""


@dataclasses.dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 10_000
    max_member_bytes: int = MAX_BYTES
    max_total_bytes: int = 2 * 1024**3  # uncompressed
    max_ratio: float = 200.0  # uncompressed / compressed, per member and overall


@dataclasses.dataclass(frozen=True)
class ArchiveMember:
    name: str  # as stored in the archive: a label, never a path to write to
    data: bytes


def is_zip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


def iter_zip_images(path: str | Path, *, limits: ArchiveLimits = ArchiveLimits()) -> Iterator[ArchiveMember]:
    """Yield the image members (by suffix) of a zip, after checking the whole archive first."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{path}: not a readable zip archive ({exc})") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_members:
            raise ArchiveError(f"{path}: {len(infos)} members exceeds the limit of {limits.max_members}")
        total = compressed = 0
        for info in infos:
            name = PurePosixPath(info.filename.replace("\\", "/"))
            if name.is_absolute() or ".." in name.parts or (name.parts and ":" in name.parts[0]):
                raise ArchiveError(f"{path}: refused, member {info.filename!r} has an unsafe path")
            if info.flag_bits & 0x1:
                raise ArchiveError(f"{path}: encrypted members are not supported")
            if info.file_size > limits.max_member_bytes and info.filename.lower().endswith(IMAGE_SUFFIXES):
                raise ArchiveError(f"{path}: member {info.filename!r} is larger than {limits.max_member_bytes} bytes")
            if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
                raise ArchiveError(f"{path}: member {info.filename!r} has a suspicious compression ratio (zip bomb?)")
            total += info.file_size
            compressed += info.compress_size
        if total > limits.max_total_bytes:
            raise ArchiveError(f"{path}: {total} uncompressed bytes exceeds the limit of {limits.max_total_bytes}")
        if compressed and total / compressed > limits.max_ratio:
            raise ArchiveError(f"{path}: suspicious overall compression ratio (zip bomb?)")
        for info in sorted(infos, key=lambda i: i.filename):
            if info.is_dir() or not info.filename.lower().endswith(IMAGE_SUFFIXES):
                continue
            with archive.open(info) as fh:
                data = fh.read(limits.max_member_bytes + 1)  # never trust the header's size alone
            if len(data) > limits.max_member_bytes:
                raise ArchiveError(f"{path}: member {info.filename!r} inflates past its declared size")
            yield ArchiveMember(name=info.filename, data=data)
