"""Parsing SOURCE arguments, named the way skopeo names them.

- ``oci:DIR[:TAG]``: an OCI image layout; every tagged image when no TAG is given.
- ``docker-archive:FILE[:REF]``: a ``docker save`` tarball; REF picks one of its RepoTags
  (``name:tag``) or an image by position (``@0``).
- ``docker://[HOST/]REPO[:TAG][@DIGEST]``: a registry over the OCI distribution API.

As in skopeo, the path of a local source ends at its first colon.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from image_ancestry.importer.errors import SourceSyntaxError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

# The distribution spec's grammar for repository path components, tags and digests.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[A-Za-z0-9=_-]+")
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)


@dataclass(frozen=True)
class OciSource:
    text: str
    path: str
    tag: str | None


@dataclass(frozen=True)
class ArchiveSource:
    text: str
    path: str
    ref: str | None  # a RepoTag, or "@N" for the N-th image of manifest.json


@dataclass(frozen=True)
class RegistrySource:
    text: str
    host: str  # as written, with its port; docker.io for Docker Hub
    repository: str  # with library/ for Docker Hub's official images
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """The reference as given, without its transport prefix: ``spec.image``."""
        return self.text.removeprefix("docker://")

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.host == DOCKER_HUB else self.host

    @property
    def manifest_ref(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"


Source = OciSource | ArchiveSource | RegistrySource


def parse_source(text: str) -> Source:
    """Parse one SOURCE argument; raises :class:`SourceSyntaxError` naming it."""
    transport, sep, rest = text.partition(":")
    if not sep:
        raise SourceSyntaxError(
            f"{text!r}: no transport; use oci:DIR[:TAG], docker-archive:FILE or docker://REF"
        )
    if transport == "oci":
        path, _, tag = rest.partition(":")
        if not path:
            raise SourceSyntaxError(f"{text!r}: no directory after oci:")
        if tag and not _TAG.fullmatch(tag):
            raise SourceSyntaxError(f"{text!r}: {tag!r} is not a valid tag")
        return OciSource(text=text, path=path, tag=tag or None)
    if transport == "docker-archive":
        path, _, ref = rest.partition(":")
        if not path:
            raise SourceSyntaxError(f"{text!r}: no file after docker-archive:")
        if ref.startswith("@") and not ref[1:].isdigit():
            raise SourceSyntaxError(f"{text!r}: {ref!r} is not an image index such as @0")
        return ArchiveSource(text=text, path=path, ref=ref or None)
    if transport == "docker":
        if not rest.startswith("//"):
            raise SourceSyntaxError(f"{text!r}: a registry source is docker://HOST/REPO:TAG")
        return parse_registry_reference(text, rest[2:])
    raise SourceSyntaxError(
        f"{text!r}: unknown transport {transport!r}; use oci:, docker-archive: or docker://"
    )


def parse_registry_reference(text: str, ref: str) -> RegistrySource:
    name, at, digest = ref.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise SourceSyntaxError(f"{text!r}: {digest!r} is not a digest")
    first, slash, remainder = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        host, path = first, remainder
        if not _HOST.fullmatch(host):
            raise SourceSyntaxError(f"{text!r}: {host!r} is not a registry host")
    else:
        host, path = DOCKER_HUB, name
    last_slash = path.rfind("/")
    tag: str | None = None
    colon = path.rfind(":")
    if colon > last_slash:
        path, tag = path[:colon], path[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise SourceSyntaxError(f"{text!r}: {tag!r} is not a valid tag")
    if not path or not all(_COMPONENT.fullmatch(c) for c in path.split("/")):
        raise SourceSyntaxError(
            f"{text!r}: {path!r} is not a repository name (lower-case, digits, . _ - /)"
        )
    if host == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return RegistrySource(text=text, host=host, repository=path, tag=tag, digest=digest or None)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``[::1]``, with or without a port."""
    if host.startswith("["):
        bare = host[1 : host.find("]")] if "]" in host else host
    else:
        bare = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if bare.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False
