"""Image references, normalised as the container runtime normalises them.

``nginx``, ``library/nginx:latest``, ``docker.io/library/nginx`` and
``index.docker.io/library/nginx:latest`` all name one image; containerd, CRI-O and Docker
resolve them with distribution's ``reference.ParseNormalizedNamed`` followed by
``TagNameOnly``. This module does the same, so that a Pod's ``image:``, a ContainerImage's
``spec.image`` and a scanner's report compare as equal strings:

- the first path component is a registry host when it contains ``.`` or ``:``, is
  ``localhost``, or has upper-case letters; otherwise the registry is ``docker.io``;
- ``index.docker.io`` (the legacy name) becomes ``docker.io``;
- on ``docker.io`` a one-component repository gets ``library/``;
- a reference with neither tag nor digest gets ``:latest``;
- ``ref@sha256:...`` keeps its digest apart (:attr:`Reference.digest`); a tag given with a
  digest is kept, as the runtime keeps it (it pulls by the digest).

The grammar checked is distribution's: lower-case path components separated by ``/``, a tag
of at most 128 word characters, ``.`` and ``-``, a digest ``algorithm:hex`` (at least 32 hex
characters), a name of at most 255 characters. Anything else raises :class:`ReferenceError`.

Pure and small on purpose: the admission gate and base comparison both import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_REGISTRY = "docker.io"
LEGACY_DEFAULT_REGISTRY = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?"
)
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")


class ReferenceError(ValueError):
    """Text that is no image reference; the message quotes it and says what is wrong."""


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference. ``tag`` is None only when ``digest`` is set."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """``registry/repository``, e.g. ``docker.io/library/nginx``."""
        return f"{self.registry}/{self.repository}"

    @property
    def tagged(self) -> str | None:
        """``name:tag`` without the digest; None for a reference by digest alone."""
        return None if self.tag is None else f"{self.name}:{self.tag}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def split_digest(text: str) -> tuple[str, str | None]:
    """``ref@algorithm:hex`` -> (``ref``, ``algorithm:hex``); (``text``, None) without ``@``.

    Only splits: neither part is checked or normalised (see :func:`parse_reference`).
    """
    name, at, digest = text.partition("@")
    return (name, digest) if at else (text, None)


def parse_reference(text: str) -> Reference:
    """Parse and normalise ``text`` as the container runtime does; raises ReferenceError."""
    rest, digest = split_digest(text)
    if digest is not None and not _DIGEST_RE.fullmatch(digest):
        raise ReferenceError(f"{text!r}: {digest!r} is not a digest (algorithm:hex)")
    if _IDENTIFIER_RE.fullmatch(rest):
        raise ReferenceError(f"{text!r}: a 64-character hex string is an image ID, not a name")
    slash = rest.find("/")
    first = rest[:slash]
    is_host = "." in first or ":" in first or first == "localhost" or first != first.lower()
    if slash == -1 or not is_host:
        registry, remainder = DEFAULT_REGISTRY, rest
    else:
        registry, remainder = first, rest[slash + 1 :]
        if not _HOST_RE.fullmatch(registry):
            raise ReferenceError(f"{text!r}: {registry!r} is not a registry host")
    if registry == LEGACY_DEFAULT_REGISTRY:
        registry = DEFAULT_REGISTRY
    repository, tag = remainder, None
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        repository, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise ReferenceError(f"{text!r}: {tag!r} is not a tag")
    if repository != repository.lower():
        raise ReferenceError(f"{text!r}: a repository name must be lower-case")
    if not _PATH_RE.fullmatch(repository):
        raise ReferenceError(
            f"{text!r}: {repository!r} is not a repository (components of a-z, 0-9, . _ -)"
        )
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = OFFICIAL_PREFIX + repository
    if len(registry) + 1 + len(repository) > NAME_MAX:
        raise ReferenceError(f"{text!r}: a name is at most {NAME_MAX} characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest)


def normalise(text: str) -> str:
    """The normalised form of ``text``: ``nginx`` -> ``docker.io/library/nginx:latest``."""
    return str(parse_reference(text))


def try_normalise(text: str | None) -> str | None:
    """:func:`normalise`, or None for None and for text that is no reference."""
    if text is None:
        return None
    try:
        return normalise(text)
    except ReferenceError:
        return None
