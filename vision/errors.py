"""Typed errors that the CLI and the API turn into one-line messages.

Every error markguard raises on purpose derives from `MarkguardError`; anything else reaching the
user is a bug. Each class carries its meaning for the HTTP API: a `status` and a stable `code`, so the
API maps an error to its answer by class, never by matching message text.
"""

from __future__ import annotations


class MarkguardError(Exception):
    """Base of every expected error: its message is safe to show a user as one line."""

    status = 422  # the HTTP status the API answers with
    code = "invalid"  # stable, machine-readable


class ImageError(MarkguardError, ValueError):
    """An image that markguard refuses to decode."""

    code = "invalid_image"


class InvalidImage(ImageError):
    """Corrupt, truncated, empty or otherwise undecodable image data."""

    code = "corrupt_image"


class ImageTooLarge(ImageError):
    """Too many bytes or pixels (decompression bombs land here, before pixels are allocated)."""

    code = "image_too_large"


class UnsupportedFormat(ImageError):
    """Bytes that are not one of the allowed formats (JPEG, PNG, WebP), judged by content."""

    status = 415
    code = "unsupported_format"


class IntegrityError(MarkguardError):
    """A model or index file whose checksum does not match its manifest, or an untrusted path."""

    status = 500  # the operator's to fix, not the caller's
    code = "integrity"


class NotFound(MarkguardError, LookupError):
    """An unknown brand, product, reference, model or key."""

    status = 404
    code = "not_found"


class Conflict(MarkguardError):
    """A request at odds with what exists: a brand that already exists, a review that cannot apply."""

    status = 409
    code = "conflict"
