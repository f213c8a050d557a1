"""ContainerImage manifests from imported images, validated before anything is written.

Annotations the importer writes (all under ``imageancestry.io/``):

- ``declared-base-name`` / ``declared-base-digest``: the image's own claim about its base,
  from the OCI annotations ``org.opencontainers.image.base.name`` / ``.base.digest`` (on the
  manifest, else on its index entry, else as labels in the image config). The operator
  compares them with the computed base image.
- ``platform`` and ``index-digest``: for an image picked out of a multi-platform index, its
  ``os/arch[/variant]`` and the digest of the index (``spec.digest`` is the platform
  manifest's own digest).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from image_ancestry import API_VERSION
from image_ancestry.importer.errors import INVALID, NOT_AN_IMAGE, ImportFailure
from image_ancestry.importer.images import ImportedImage
from image_ancestry.model import KIND, LAYER_CAP, ContainerImage, ManifestError

PREFIX = "imageancestry.io/"
DECLARED_BASE_NAME = PREFIX + "declared-base-name"
DECLARED_BASE_DIGEST = PREFIX + "declared-base-digest"
PLATFORM = PREFIX + "platform"
INDEX_DIGEST = PREFIX + "index-digest"

LAYER_MODES = ("diff-ids", "manifest")


def build_manifest(
    image: ImportedImage, *, name: str, namespace: str | None, layers: str
) -> dict[str, Any]:
    """One ContainerImage manifest; raises :class:`ImportFailure` if it would be invalid."""
    digests = image.manifest_layers if layers == "manifest" else image.diff_ids
    if not digests:
        raise ImportFailure(
            image.source, NOT_AN_IMAGE, "the image has no layers; a ContainerImage needs one"
        )
    if len(digests) > LAYER_CAP:
        raise ImportFailure(
            image.source,
            INVALID,
            f"the image has {len(digests)} layers, over the ContainerImage cap of {LAYER_CAP}",
        )
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    annotations: dict[str, str] = {}
    if image.declared_base_name:
        annotations[DECLARED_BASE_NAME] = image.declared_base_name
    if image.declared_base_digest:
        annotations[DECLARED_BASE_DIGEST] = image.declared_base_digest
    if image.platform:
        annotations[PLATFORM] = image.platform
    if image.index_digest:
        annotations[INDEX_DIGEST] = image.index_digest
    if annotations:
        metadata["annotations"] = annotations
    spec: dict[str, Any] = {}
    if image.image:
        spec["image"] = image.image
    if image.digest:
        spec["digest"] = image.digest
    spec["layers"] = list(digests)
    manifest = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}
    try:
        ContainerImage.from_manifest(
            manifest, source=image.source, default_namespace=namespace or "default"
        )
    except ManifestError as exc:
        raise ImportFailure(image.source, INVALID, str(exc)) from None
    return manifest


def to_yaml(manifests: Sequence[dict[str, Any]]) -> str:
    """Multi-document YAML, one ``---`` per manifest, keys in Kubernetes order."""
    if not manifests:
        return ""
    return yaml.safe_dump_all(
        manifests, sort_keys=False, explicit_start=True, default_flow_style=False, width=4096
    )
