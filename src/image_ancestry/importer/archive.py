"""``docker save`` tarballs: ``docker-archive:FILE[:REF]``.

The archive is read in place, never extracted. ``manifest.json`` names each image's config and
layer files; a path that is absolute or climbs out with ``..`` (in ``manifest.json``, in a
member's name, or in a link's target) is refused, as is a config or manifest whose declared
size is over the limit. Plain and gzip/bzip2/xz-compressed tarballs are accepted.

Layers: the config's diff ids (the default), or with ``--layers manifest`` the SHA-256 of the
layer files as stored, which is what ``skopeo inspect docker-archive:`` reports. An archive has
no registry manifest, so ``spec.digest`` is left out: the digest a registry would give depends
on how the layers are compressed when pushed.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
from pathlib import Path
from typing import IO, Any

from image_ancestry.importer.errors import (
    INVALID,
    NOT_AN_IMAGE,
    NOT_FOUND,
    ImportFailure,
)
from image_ancestry.importer.images import (
    BASE_DIGEST,
    BASE_NAME,
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    ImportedImage,
    diff_ids_of,
    labels_of,
    parse_json,
    platform_matches,
    platform_of,
)
from image_ancestry.importer.sources import ArchiveSource

_MAX_LINK_HOPS = 8
_CHUNK = 1024 * 1024


def _unsafe(name: str) -> bool:
    return name.startswith("/") or "\\" in name or ".." in name.split("/")


def _normal(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


class _Archive:
    def __init__(self, label: str, tar: tarfile.TarFile) -> None:
        self.label = label
        self.tar = tar
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ImportFailure(
                label,
                INVALID,
                f"broken tar archive (truncated, or a member declares more bytes than the file "
                f"holds): {exc}",
            ) from None
        for member in members:
            name = _normal(member.name)
            if _unsafe(name):
                raise ImportFailure(label, INVALID, f"unsafe path {member.name!r} in the archive")
            self.members[name] = member

    def member(self, name: object, what: str) -> tarfile.TarInfo:
        """The regular file ``name`` names, following links inside the archive."""
        if not isinstance(name, str) or _unsafe(name):
            raise ImportFailure(
                self.label, INVALID, f"manifest.json points {what} outside the archive: {name!r}"
            )
        current = _normal(name)
        for _ in range(_MAX_LINK_HOPS):
            member = self.members.get(current)
            if member is None:
                raise ImportFailure(
                    self.label, INVALID, f"{what} {name!r} is missing from the archive"
                )
            if member.isfile():
                return member
            if member.issym():
                target = posixpath.normpath(
                    posixpath.join(posixpath.dirname(current), member.linkname)
                )
            elif member.islnk():
                target = posixpath.normpath(member.linkname)
            else:
                raise ImportFailure(self.label, INVALID, f"{what} {name!r} is not a regular file")
            if _unsafe(target) or target.startswith("../"):
                raise ImportFailure(
                    self.label,
                    INVALID,
                    f"{what} {name!r} links outside the archive: {member.linkname!r}",
                )
            current = _normal(target)
        raise ImportFailure(self.label, INVALID, f"{what} {name!r}: too many links")

    def _open(self, member: tarfile.TarInfo) -> IO[bytes]:
        handle = self.tar.extractfile(member)
        if handle is None:  # pragma: no cover - member() returns regular files only
            raise ImportFailure(self.label, INVALID, f"{member.name!r} cannot be read")
        return handle

    def read(self, member: tarfile.TarInfo, limit: int, what: str) -> bytes:
        if member.size > limit:
            raise ImportFailure(
                self.label,
                INVALID,
                f"{what} {member.name!r} declares {member.size} bytes, over the {limit}-byte limit",
            )
        try:
            data = self._open(member).read(limit + 1)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ImportFailure(self.label, INVALID, f"{what} {member.name!r}: {exc}") from None
        if len(data) != member.size:
            raise ImportFailure(self.label, INVALID, f"{what} {member.name!r} is truncated")
        return data

    def sha256(self, member: tarfile.TarInfo, what: str) -> str:
        digest = hashlib.sha256()
        total = 0
        try:
            handle = self._open(member)
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                total += len(chunk)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ImportFailure(self.label, INVALID, f"{what} {member.name!r}: {exc}") from None
        if total != member.size:
            raise ImportFailure(self.label, INVALID, f"{what} {member.name!r} is truncated")
        return f"sha256:{digest.hexdigest()}"


def split_repo_tag(repo_tag: str) -> tuple[tuple[str, ...], str | None]:
    """``r.example:5000/team/app:1`` -> ((``r.example:5000``, ``team``, ``app``), ``1``)."""
    name, colon, tag = repo_tag.rpartition(":")
    if not colon or "/" in tag:
        name, tag = repo_tag, ""
    return tuple(name.split("/")), tag or None


def _familiar(repo_tag: str) -> str:
    for prefix in ("docker.io/library/", "docker.io/"):
        if repo_tag.startswith(prefix):
            return repo_tag.removeprefix(prefix)
    return repo_tag


def read_archive(
    source: ArchiveSource, *, layers: str, platform: str | None
) -> list[ImportedImage]:
    label = source.text
    path = Path(source.path)
    if not path.is_file():
        raise ImportFailure(label, NOT_FOUND, f"no file {source.path}")
    try:
        tar = tarfile.open(path, mode="r:*")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ImportFailure(label, NOT_AN_IMAGE, f"not a tar archive: {exc}") from None
    with tar:
        archive = _Archive(label, tar)
        stem = path.name.split(".", 1)[0] or "image"
        if "manifest.json" not in archive.members:
            raise ImportFailure(label, NOT_AN_IMAGE, "no manifest.json: not a docker save archive")
        manifest_member = archive.member("manifest.json", "manifest.json")
        data = archive.read(manifest_member, MAX_MANIFEST_BYTES, "manifest.json")
        entries = _parse_manifest(label, data)
        selected = _select(label, source, entries)
        images: list[ImportedImage] = []
        for entry in selected:
            images.extend(_image(archive, entry, stem, layers=layers, platform=platform))
    if platform is not None and not images:
        raise ImportFailure(label, NOT_FOUND, f"no {platform} image in the archive")
    return images


def _parse_manifest(label: str, data: bytes) -> list[dict[str, Any]]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImportFailure(label, NOT_AN_IMAGE, f"manifest.json is not JSON: {exc}") from None
    if not isinstance(obj, list) or not obj or not all(isinstance(e, dict) for e in obj):
        raise ImportFailure(label, NOT_AN_IMAGE, "manifest.json is not a list of images")
    return obj


def _repo_tags(entry: dict[str, Any]) -> list[str]:
    tags = entry.get("RepoTags")
    return [t for t in tags if isinstance(t, str) and t] if isinstance(tags, list) else []


def _select(
    label: str, source: ArchiveSource, entries: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    if source.ref is None:
        return entries
    if source.ref.startswith("@"):
        position = int(source.ref[1:])
        if position >= len(entries):
            raise ImportFailure(
                label, NOT_FOUND, f"no image {source.ref}: the archive has {len(entries)}"
            )
        return [entries[position]]
    wanted = _familiar(source.ref)
    for entry in entries:
        if wanted in (_familiar(t) for t in _repo_tags(entry)):
            return [{**entry, "RepoTags": [t for t in _repo_tags(entry) if _familiar(t) == wanted]}]
    tags = ", ".join(t for e in entries for t in _repo_tags(e)) or "none"
    raise ImportFailure(label, NOT_FOUND, f"no image {source.ref!r} (its tags: {tags})")


def _image(
    archive: _Archive, entry: dict[str, Any], stem: str, *, layers: str, platform: str | None
) -> list[ImportedImage]:
    label = archive.label
    config_member = archive.member(entry.get("Config"), "config")
    config_bytes = archive.read(config_member, MAX_CONFIG_BYTES, "config")
    config = parse_json(label, config_bytes, f"config {config_member.name!r}")
    what = f"config {config_member.name!r}"
    diff_ids = diff_ids_of(label, config, what)
    layer_names = entry.get("Layers")
    if not isinstance(layer_names, list):
        raise ImportFailure(label, NOT_AN_IMAGE, "manifest.json entry has no Layers list")
    layer_members = [archive.member(name, "layer") for name in layer_names]
    if len(layer_members) != len(diff_ids):
        raise ImportFailure(
            label,
            INVALID,
            f"{what} lists {len(diff_ids)} diff ids, manifest.json {len(layer_members)} layers",
        )
    image_platform = platform_of(config)
    if platform is not None and not platform_matches(platform, image_platform):
        return []
    stored = [archive.sha256(m, "layer") for m in layer_members] if layers == "manifest" else []
    labels = labels_of(config)
    repo_tags: list[str | None] = [*_repo_tags(entry)] or [None]
    config_digest = f"sha256:{hashlib.sha256(config_bytes).hexdigest()}"
    images = []
    for repo_tag in repo_tags:
        if repo_tag is None:
            components: tuple[str, ...] = (stem,)
            tag: str | None = config_digest.partition(":")[2][:12]
        else:
            components, tag = split_repo_tag(repo_tag)
        images.append(
            ImportedImage(
                source=label,
                components=components,
                tag=tag,
                image=repo_tag,
                digest=None,
                diff_ids=list(diff_ids),
                manifest_layers=list(stored),
                declared_base_name=labels.get(BASE_NAME),
                declared_base_digest=labels.get(BASE_DIGEST),
            )
        )
    return images
