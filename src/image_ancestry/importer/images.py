"""What every source resolves to, and the OCI/Docker manifest logic the sources share.

An OCI layout and a registry both hand out content-addressed blobs by descriptor; a
:class:`BlobStore` is that, with every read bounded by a size limit and verified against its
digest. :func:`resolve` walks from a top-level manifest or index to the images it holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from image_ancestry.importer.errors import INVALID, NOT_AN_IMAGE, NOT_FOUND, ImportFailure
from image_ancestry.model import validate_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)

# Upper bounds on what is read into memory. containerd refuses manifests over 4 MiB too; an
# image config carries the history and environment, and stays far under 8 MiB in practice.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 8 * 1024 * 1024

REF_NAME = "org.opencontainers.image.ref.name"
BASE_NAME = "org.opencontainers.image.base.name"
BASE_DIGEST = "org.opencontainers.image.base.digest"
SUPPORTED_ALGORITHMS = ("sha256", "sha512")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: str | None = None  # "os/arch[/variant]"


@dataclass
class ImportedImage:
    """One image, as a ContainerImage needs it."""

    source: str  # the SOURCE argument, for messages
    components: tuple[str, ...]  # host and repository path components, for naming
    tag: str | None
    image: str | None  # spec.image
    digest: str | None  # spec.digest: the image manifest's digest
    diff_ids: list[str]
    manifest_layers: list[str]
    platform: str | None = None  # set when picked out of an index
    index_digest: str | None = None
    declared_base_name: str | None = None
    declared_base_digest: str | None = None


class BlobStore(Protocol):
    label: str

    def fetch(self, descriptor: Descriptor, *, limit: int, manifest: bool = False) -> bytes:
        """The blob's bytes, at most ``limit`` of them, verified against the descriptor."""

    def check(self, descriptor: Descriptor) -> None:
        """Raise :class:`ImportFailure` when the blob is not there (a no-op where that is
        guaranteed, as in a registry that accepted the manifest)."""


def checked_digest(source: str, value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ImportFailure(source, INVALID, f"{what}: digest is not a string")
    try:
        digest = validate_digest(value)
    except ValueError as exc:
        raise ImportFailure(source, INVALID, f"{what}: {exc}") from None
    if digest.partition(":")[0] not in SUPPORTED_ALGORITHMS:
        raise ImportFailure(source, INVALID, f"{what}: unsupported digest algorithm {digest!r}")
    return digest


def verify(source: str, descriptor: Descriptor, data: bytes, what: str) -> None:
    """Check length and digest of bytes read for ``descriptor``."""
    if len(data) != descriptor.size:
        raise ImportFailure(
            source,
            INVALID,
            f"{what} {descriptor.digest} is {len(data)} bytes, its descriptor says "
            f"{descriptor.size}",
        )
    algorithm, _, expected = descriptor.digest.partition(":")
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != expected:
        raise ImportFailure(
            source, INVALID, f"{what} {descriptor.digest} has digest {algorithm}:{actual}"
        )


def check_limit(source: str, descriptor: Descriptor, limit: int, what: str) -> None:
    if descriptor.size > limit:
        raise ImportFailure(
            source,
            INVALID,
            f"{what} {descriptor.digest} declares {descriptor.size} bytes, over the "
            f"{limit}-byte limit",
        )


def parse_json(source: str, data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImportFailure(source, NOT_AN_IMAGE, f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ImportFailure(source, NOT_AN_IMAGE, f"{what} is not a JSON object")
    return obj


def _string_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


def platform_of(obj: object) -> str | None:
    """``os/arch[/variant]`` from an index entry's platform or an image config."""
    if not isinstance(obj, dict):
        return None
    os_name, arch = obj.get("os"), obj.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
        return None
    variant = obj.get("variant")
    return (
        f"{os_name}/{arch}/{variant}"
        if isinstance(variant, str) and variant
        else (f"{os_name}/{arch}")
    )


def parse_descriptor(source: str, obj: object, what: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise ImportFailure(source, INVALID, f"{what} is not a descriptor object")
    media_type = obj.get("mediaType")
    size = obj.get("size")
    if not isinstance(media_type, str):
        raise ImportFailure(source, INVALID, f"{what} has no mediaType")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImportFailure(source, INVALID, f"{what} has no valid size")
    return Descriptor(
        media_type=media_type,
        digest=checked_digest(source, obj.get("digest"), what),
        size=size,
        annotations=_string_map(obj.get("annotations")),
        platform=platform_of(obj.get("platform")),
    )


def platform_matches(wanted: str, actual: str | None) -> bool:
    """``linux/arm64`` matches ``linux/arm64/v8``; a wanted variant must be equal."""
    if actual is None:
        return False
    want = wanted.split("/")
    have = actual.split("/")
    return want[:2] == have[:2] and (len(want) < 3 or want[2:] == have[2:3])


def _is_attestation(entry: Descriptor) -> bool:
    # buildx stores provenance and SBOMs as manifests for platform unknown/unknown.
    return "vnd.docker.reference.type" in entry.annotations or (
        entry.platform is not None and entry.platform.startswith("unknown/")
    )


@dataclass
class Template:
    """Per-source facts every resolved image carries."""

    components: tuple[str, ...]
    tag: str | None
    image: str | None


def resolve(
    store: BlobStore,
    top: Descriptor,
    template: Template,
    *,
    platform: str | None,
) -> list[ImportedImage]:
    """The images under ``top``: one for a manifest, one per platform for an index."""
    source = store.label
    if top.media_type in DOCKER_SCHEMA1:
        raise ImportFailure(source, NOT_AN_IMAGE, "Docker schema 1 manifests are not supported")
    check_limit(source, top, MAX_MANIFEST_BYTES, "manifest")
    body = store.fetch(top, limit=MAX_MANIFEST_BYTES, manifest=True)
    obj = parse_json(source, body, f"manifest {top.digest}")
    if obj.get("schemaVersion") == 1:
        raise ImportFailure(source, NOT_AN_IMAGE, "Docker schema 1 manifests are not supported")
    media_type = obj.get("mediaType") or top.media_type
    if media_type in INDEX_TYPES or (media_type not in MANIFEST_TYPES and "manifests" in obj):
        return _resolve_index(store, top, obj, template, platform=platform)
    config = obj.get("config")
    looks_like_one = isinstance(config, dict) and isinstance(obj.get("layers"), list)
    if media_type not in MANIFEST_TYPES and not looks_like_one:
        raise ImportFailure(
            source,
            NOT_AN_IMAGE,
            f"{top.digest} is {media_type or 'untyped'}, not an image manifest or index",
        )
    image = _resolve_manifest(store, top, obj, template)
    if platform is not None and not platform_matches(platform, image.platform):
        raise ImportFailure(
            source, NOT_FOUND, f"image is {image.platform or 'of no platform'}, not {platform}"
        )
    image.platform = None  # recorded only for images picked out of an index
    return [image]


def _resolve_index(
    store: BlobStore,
    top: Descriptor,
    obj: dict[str, Any],
    template: Template,
    *,
    platform: str | None,
) -> list[ImportedImage]:
    source = store.label
    raw = obj.get("manifests")
    if not isinstance(raw, list):
        raise ImportFailure(source, NOT_AN_IMAGE, f"index {top.digest} has no manifests list")
    entries = [
        parse_descriptor(source, e, f"index {top.digest} entry {i}") for i, e in enumerate(raw)
    ]
    candidates = [e for e in entries if e.media_type in MANIFEST_TYPES and not _is_attestation(e)]
    if not candidates:
        raise ImportFailure(source, NOT_AN_IMAGE, f"index {top.digest} lists no image manifests")
    if platform is not None:
        picked = [e for e in candidates if platform_matches(platform, e.platform)]
        available = ", ".join(sorted(e.platform or "?" for e in candidates))
        if not picked:
            raise ImportFailure(
                source, NOT_FOUND, f"no {platform} image in index; it has {available}"
            )
        if len(picked) > 1:
            raise ImportFailure(
                source,
                NOT_FOUND,
                f"--platform {platform} matches {len(picked)} images ({available}); "
                "give the variant too",
            )
        candidates = picked
    images = []
    for entry in candidates:
        image = _resolve_manifest(store, entry, None, template)
        image.platform = entry.platform or image.platform
        image.index_digest = top.digest
        if image.declared_base_name is None:
            image.declared_base_name = entry.annotations.get(BASE_NAME)
        if image.declared_base_digest is None:
            image.declared_base_digest = entry.annotations.get(BASE_DIGEST)
        images.append(image)
    return images


def _resolve_manifest(
    store: BlobStore,
    descriptor: Descriptor,
    obj: dict[str, Any] | None,
    template: Template,
) -> ImportedImage:
    source = store.label
    if obj is None:
        check_limit(source, descriptor, MAX_MANIFEST_BYTES, "manifest")
        body = store.fetch(descriptor, limit=MAX_MANIFEST_BYTES, manifest=True)
        obj = parse_json(source, body, f"manifest {descriptor.digest}")
    what = f"manifest {descriptor.digest}"
    config = parse_descriptor(source, obj.get("config"), f"{what} config")
    if config.media_type not in CONFIG_TYPES:
        raise ImportFailure(
            source, NOT_AN_IMAGE, f"{what} is an artifact with config type {config.media_type}"
        )
    raw_layers = obj.get("layers")
    if not isinstance(raw_layers, list):
        raise ImportFailure(source, NOT_AN_IMAGE, f"{what} has no layers list")
    layer_descriptors = [
        parse_descriptor(source, layer, f"{what} layer {i}") for i, layer in enumerate(raw_layers)
    ]
    check_limit(source, config, MAX_CONFIG_BYTES, "config")
    config_obj = parse_json(
        source, store.fetch(config, limit=MAX_CONFIG_BYTES), f"config {config.digest}"
    )
    diff_ids = diff_ids_of(source, config_obj, f"config {config.digest}")
    if len(diff_ids) != len(layer_descriptors):
        raise ImportFailure(
            source,
            INVALID,
            f"config {config.digest} lists {len(diff_ids)} diff ids, {what} has "
            f"{len(layer_descriptors)} layers",
        )
    for layer in layer_descriptors:
        store.check(layer)
    annotations = _string_map(obj.get("annotations"))
    labels = labels_of(config_obj)
    return ImportedImage(
        source=source,
        components=template.components,
        tag=template.tag,
        image=template.image,
        digest=descriptor.digest,
        diff_ids=diff_ids,
        manifest_layers=[layer.digest for layer in layer_descriptors],
        platform=platform_of(config_obj),
        declared_base_name=annotations.get(BASE_NAME) or labels.get(BASE_NAME),
        declared_base_digest=annotations.get(BASE_DIGEST) or labels.get(BASE_DIGEST),
    )


def diff_ids_of(source: str, config: dict[str, Any], what: str) -> list[str]:
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ImportFailure(source, NOT_AN_IMAGE, f"{what} has no rootfs of type layers")
    raw = rootfs.get("diff_ids")
    if not isinstance(raw, list):
        raise ImportFailure(source, NOT_AN_IMAGE, f"{what} has no rootfs.diff_ids list")
    return [checked_digest(source, d, f"{what} diff id {i}") for i, d in enumerate(raw)]


def labels_of(config: dict[str, Any]) -> dict[str, str]:
    inner = config.get("config")
    return _string_map(inner.get("Labels")) if isinstance(inner, dict) else {}
