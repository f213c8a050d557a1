"""The one error an import raises: which source failed, and how."""

from __future__ import annotations

# What failed, in words a user acts on. Every failure names its source first.
UNREACHABLE = "unreachable"
UNAUTHORIZED = "unauthorized"
NOT_FOUND = "not found"
NOT_AN_IMAGE = "not an image"
INVALID = "invalid"  # corrupt or hostile: bad digests, unsafe paths, missing blobs, sizes


class ImportFailure(Exception):
    """A source could not be imported; ``str()`` gives ``SOURCE: KIND: DETAIL``."""

    def __init__(self, source: str, kind: str, detail: str) -> None:
        super().__init__(source, kind, detail)
        self.source = source
        self.kind = kind
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.source}: {self.kind}: {self.detail}"


class SourceSyntaxError(ValueError):
    """A SOURCE argument that names no transport we know, or a malformed reference."""
