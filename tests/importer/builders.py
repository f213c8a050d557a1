"""Real images for the importer's tests: tar layers, configs, manifests, layouts, archives.

Everything is built here, byte for byte, with real SHA-256 digests, so a test knows exactly
which diff ids, layer digests and manifest digest an import must report.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    """A deterministic tar of ``files`` (path -> content): the same files, the same bytes."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


@dataclass
class Built:
    """A manifest (image or index) with every blob it needs."""

    media_type: str
    manifest: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)  # digest -> bytes, manifest included
    diff_ids: list[str] = field(default_factory=list)
    layer_digests: list[str] = field(default_factory=list)
    layer_tars: list[bytes] = field(default_factory=list)
    config: bytes = b""
    children: list[Built] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    def descriptor(self, **annotations: str) -> dict[str, Any]:
        desc: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.manifest),
        }
        if annotations:
            desc["annotations"] = annotations
        return desc


def build_image(
    layers: list[dict[str, bytes]],
    *,
    os: str = "linux",
    arch: str = "amd64",
    variant: str | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    config_media_type: str = OCI_CONFIG,
) -> Built:
    tars = [layer_tar(files) for files in layers]
    compressed = [gzip.compress(t, mtime=0) for t in tars]
    config_obj: dict[str, Any] = {
        "architecture": arch,
        "os": os,
        "config": {"Labels": labels or {}},
        "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in tars]},
        "history": [{"created_by": f"layer {i}"} for i in range(len(tars))],
    }
    if variant:
        config_obj["variant"] = variant
    config = json.dumps(config_obj, sort_keys=True).encode()
    manifest_obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_media_type, "digest": sha256(config), "size": len(config)},
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": sha256(c), "size": len(c)} for c in compressed
        ],
    }
    if annotations:
        manifest_obj["annotations"] = annotations
    manifest = json.dumps(manifest_obj, sort_keys=True).encode()
    blobs = {sha256(config): config, sha256(manifest): manifest}
    blobs.update({sha256(c): c for c in compressed})
    return Built(
        media_type=OCI_MANIFEST,
        manifest=manifest,
        blobs=blobs,
        diff_ids=[sha256(t) for t in tars],
        layer_digests=[sha256(c) for c in compressed],
        layer_tars=tars,
        config=config,
    )


def build_index(images: list[tuple[Built, dict[str, str]]]) -> Built:
    """An OCI index of ``(image, platform)`` pairs; platform as {"os", "architecture", ...}."""
    entries = []
    blobs: dict[str, bytes] = {}
    for image, platform in images:
        entry = image.descriptor()
        entry["platform"] = platform
        entries.append(entry)
        blobs.update(image.blobs)
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, sort_keys=True
    ).encode()
    blobs[sha256(manifest)] = manifest
    return Built(
        media_type=OCI_INDEX,
        manifest=manifest,
        blobs=blobs,
        children=[image for image, _ in images],
    )


def write_layout(root: Path, tagged: dict[str, Built], *, untagged: list[Built] = ()) -> Path:
    """An OCI image layout at ``root`` holding ``tagged`` (tag -> image or index)."""
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entries = []
    for tag, built in tagged.items():
        entries.append(built.descriptor(**{REF_NAME: tag}))
    entries.extend(built.descriptor() for built in untagged)
    for built in [*tagged.values(), *untagged]:
        for digest, data in built.blobs.items():
            (root / "blobs" / "sha256" / digest.partition(":")[2]).write_bytes(data)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    (root / "index.json").write_text(json.dumps(index))
    return root


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def write_archive(
    path: Path, images: list[tuple[Built, list[str]]], *, blobs_layout: bool = False
) -> Path:
    """A ``docker save`` tarball of ``(image, RepoTags)`` pairs: the classic layout
    (``HEX.json``, ``HEX/layer.tar``), or with ``blobs_layout`` Docker 25's, where
    ``manifest.json`` points into ``blobs/sha256/``."""
    entries = []
    with tarfile.open(path, "w") as tar:
        written: set[str] = set()
        for image, repo_tags in images:
            config_hex = sha256(image.config).partition(":")[2]
            config_name = f"blobs/sha256/{config_hex}" if blobs_layout else f"{config_hex}.json"
            layer_names = []
            for layer in image.layer_tars:
                layer_hex = sha256(layer).partition(":")[2]
                name = f"blobs/sha256/{layer_hex}" if blobs_layout else f"{layer_hex}/layer.tar"
                if name not in written:
                    add_member(tar, name, layer)
                    written.add(name)
                layer_names.append(name)
            if config_name not in written:
                add_member(tar, config_name, image.config)
                written.add(config_name)
            entries.append({"Config": config_name, "RepoTags": repo_tags, "Layers": layer_names})
        add_member(tar, "manifest.json", json.dumps(entries).encode())
    return path


# The images most tests use: a base of two layers and an app of three on top of it.
BASE_LAYERS = [{"etc/os-release": b"ID=testos\n"}, {"usr/lib/libc.so": b"\x7fELF libc"}]
APP_LAYERS = [*BASE_LAYERS, {"app/main.py": b"print('hello')\n"}]
