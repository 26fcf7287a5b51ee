"""Typed errors that the CLI and the API turn into one-line messages.

Every error markguard raises on purpose derives from `MarkguardError`; anything else reaching the
user is a bug.
"""

from __future__ import annotations


class MarkguardError(Exception):
    """Base of every expected error: its message is safe to show a user as one line."""


class ImageError(MarkguardError, ValueError):
    """An image that markguard refuses to decode."""


class InvalidImage(ImageError):
    """Corrupt, truncated, empty or otherwise undecodable image data."""


class ImageTooLarge(ImageError):
    """Too many bytes or pixels (decompression bombs land here, before pixels are allocated)."""


class UnsupportedFormat(ImageError):
    """Bytes that are not one of the allowed formats (JPEG, PNG, WebP), judged by content."""


class IntegrityError(MarkguardError):
    """A model or index file whose checksum does not match its manifest, or an untrusted path."""


class NotFound(MarkguardError, LookupError):
    """An unknown brand, product, reference, model or key."""
