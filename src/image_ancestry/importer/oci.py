"""OCI image layouts: ``oci:DIR[:TAG]``.

A layout is ``oci-layout``, ``index.json`` and ``blobs/ALG/HEX``. Blob paths are built only from
digests that passed the digest grammar, so no descriptor reaches outside ``blobs/``; every blob
read is bounded by its declared size (itself bounded) and verified against its digest.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from image_ancestry.importer.errors import INVALID, NOT_AN_IMAGE, NOT_FOUND, ImportFailure
from image_ancestry.importer.images import (
    MAX_MANIFEST_BYTES,
    REF_NAME,
    Descriptor,
    ImportedImage,
    Template,
    check_limit,
    parse_descriptor,
    parse_json,
    resolve,
    verify,
)
from image_ancestry.importer.sources import OciSource


class LayoutStore:
    def __init__(self, label: str, root: Path) -> None:
        self.label = label
        self.root = root

    def _path(self, descriptor: Descriptor) -> Path:
        algorithm, _, encoded = descriptor.digest.partition(":")
        return self.root / "blobs" / algorithm / encoded

    def _stat(self, descriptor: Descriptor, what: str) -> os.stat_result:
        path = self._path(descriptor)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ImportFailure(
                self.label, INVALID, f"{what} {descriptor.digest} is missing from the layout"
            ) from None
        except OSError as exc:
            raise ImportFailure(
                self.label, INVALID, f"{what} {descriptor.digest}: {exc.strerror}"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise ImportFailure(
                self.label, INVALID, f"{what} {descriptor.digest} is not a regular file"
            )
        if st.st_size != descriptor.size:
            raise ImportFailure(
                self.label,
                INVALID,
                f"{what} {descriptor.digest} is {st.st_size} bytes, its descriptor says "
                f"{descriptor.size}",
            )
        return st

    def fetch(self, descriptor: Descriptor, *, limit: int, manifest: bool = False) -> bytes:
        what = "manifest" if manifest else "blob"
        check_limit(self.label, descriptor, limit, what)
        self._stat(descriptor, what)
        with self._path(descriptor).open("rb") as handle:
            data = handle.read(descriptor.size + 1)
        verify(self.label, descriptor, data, what)
        return data

    def check(self, descriptor: Descriptor) -> None:
        self._stat(descriptor, "layer")


def read_layout(source: OciSource, *, platform: str | None) -> list[ImportedImage]:
    label = source.text
    root = Path(source.path)
    if not root.is_dir():
        raise ImportFailure(label, NOT_FOUND, f"no directory {source.path}")
    layout_file = root / "oci-layout"
    index_file = root / "index.json"
    if not layout_file.is_file() or not index_file.is_file():
        raise ImportFailure(
            label, NOT_AN_IMAGE, f"{source.path} is not an OCI layout (no oci-layout/index.json)"
        )
    for path in (layout_file, index_file):
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ImportFailure(label, INVALID, f"{path.name} is over {MAX_MANIFEST_BYTES} bytes")
    try:
        version = json.loads(layout_file.read_bytes()).get("imageLayoutVersion")
    except (ValueError, AttributeError):
        version = None
    if not isinstance(version, str):
        raise ImportFailure(label, NOT_AN_IMAGE, "oci-layout has no imageLayoutVersion")
    index = parse_json(label, index_file.read_bytes(), "index.json")
    raw = index.get("manifests")
    if not isinstance(raw, list):
        raise ImportFailure(label, NOT_AN_IMAGE, "index.json has no manifests list")
    entries = [parse_descriptor(label, e, f"index.json entry {i}") for i, e in enumerate(raw)]
    tagged = [e for e in entries if e.annotations.get(REF_NAME)]
    if source.tag is not None:
        selected = [e for e in tagged if e.annotations[REF_NAME] == source.tag]
        if not selected:
            tags = ", ".join(sorted({e.annotations[REF_NAME] for e in tagged})) or "none"
            raise ImportFailure(
                label, NOT_FOUND, f"no tag {source.tag!r} in the layout (its tags: {tags})"
            )
    else:
        selected = tagged or entries
    if not selected:
        raise ImportFailure(label, NOT_AN_IMAGE, "index.json lists no manifests")
    store = LayoutStore(label, root)
    directory = root.resolve().name or "image"
    images: list[ImportedImage] = []
    for entry in selected:
        ref_name = entry.annotations.get(REF_NAME)
        image_ref, components, tag = _reference(ref_name, directory)
        template = Template(components=components, tag=tag, image=image_ref)
        images.extend(resolve(store, entry, template, platform=platform))
    return images


def _reference(
    ref_name: str | None, directory: str
) -> tuple[str | None, tuple[str, ...], str | None]:
    """spec.image, naming components and tag for an index.json entry.

    ``org.opencontainers.image.ref.name`` is usually a bare tag (skopeo, buildah); then the
    image has no registry reference and ``spec.image`` is left out, and its name comes from the
    directory and the tag. A full reference (``r.example/app:1``) is kept as ``spec.image``.
    """
    if ref_name is None:
        return None, (directory,), None
    if "/" in ref_name:
        name = ref_name.partition("@")[0]
        repository, colon, tag = name.rpartition(":")
        if not colon or "/" in tag:
            repository, tag = name, ""
        return ref_name, tuple(repository.split("/")), tag or None
    return None, (directory,), ref_name
