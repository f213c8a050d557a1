"""DNS-1123-safe ContainerImage names from repository and tag.

A name is the repository's last path component and the tag (or the first 12 hex characters of
the digest when there is no tag), plus the platform for an image picked out of an index:
``registry.example/team/app:1.2`` gives ``app-1-2``. Names are DNS-1123 labels: at most 63
lower-case letters, digits and ``-``, starting and ending alphanumeric.

Collisions are resolved from the whole set of images being named, never from their order:

1. images whose names collide take one more repository component, from the right
   (``team-a-app-1`` and ``team-b-app-1``), repeated while that separates them, up to the
   registry host;
2. images that still collide get ``-`` and 8 hex characters of the SHA-256 of their identity
   (reference, digest and platform).

A name longer than 63 characters is cut to 54 and given the same 8-character hash of its whole
text, so two long names that share a prefix stay distinct.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

MAX_NAME = 63
_UNSAFE = re.compile(r"[^a-z0-9]+")
DNS1123_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(
    r"(?=.{1,253}$)[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
)


@dataclass(frozen=True)
class NameRequest:
    """What a name is made from. ``identity`` tells two images apart when all else is equal."""

    identity: str
    components: tuple[str, ...]  # registry host (if any) and repository path components
    tag: str | None = None
    digest: str | None = None
    platform: str | None = None  # "linux/arm64/v8", when picked out of an index
    override: str | None = None  # --name: replaces components, tag and digest


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def sanitize(text: str) -> str:
    """Lower-case, every run of other characters one ``-``, at most 63 characters."""
    name = _UNSAFE.sub("-", text.lower()).strip("-") or "image"
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 9].rstrip('-')}-{_short_hash(text)}"
    return name


def _candidate(request: NameRequest, depth: int) -> str:
    if request.override is not None:
        parts = [request.override]
    else:
        parts = list(request.components[-depth:]) if request.components else ["image"]
        if request.tag:
            parts.append(request.tag)
        elif request.digest:
            parts.append(request.digest.partition(":")[2][:12])
    if request.platform:
        parts.append(request.platform)
    return sanitize("-".join(parts))


def assign_names(requests: Sequence[NameRequest]) -> list[str]:
    """One name per request, in the same order; equal requests get equal names."""
    unique = sorted(set(requests), key=lambda r: (r.identity, r.components, r.platform or ""))
    depth = dict.fromkeys(unique, 1)
    while True:
        groups: dict[str, list[NameRequest]] = defaultdict(list)
        for request in unique:
            groups[_candidate(request, depth[request])].append(request)
        progressed = False
        for members in groups.values():
            if len(members) < 2:
                continue
            for member in members:
                if member.override is None and depth[member] < len(member.components):
                    depth[member] += 1
                    progressed = True
        if not progressed:
            break
    names: dict[NameRequest, str] = {}
    for candidate, members in groups.items():
        if len(members) == 1:
            names[members[0]] = candidate
            continue
        for member in members:
            key = f"{member.identity}|{member.platform or ''}|{'/'.join(member.components)}"
            suffix = _short_hash(key)
            names[member] = f"{candidate[: MAX_NAME - 9].rstrip('-')}-{suffix}"
    return [names[r] for r in requests]
