"""A small forest of images and helpers to write policies and workloads, shared by the
gate's unit tests, its cluster tests and the benchmark.

    debian-9  [a, b]                     r.example/debian:9
    debian-10 [a, c]                     r.example/debian:10
      golden  [a, c, g]   (marked)       r.example/golden:1.0
        node  [a, c, g, n]               r.example/node:20      (no digest)
          app [a, c, g, n, x]            r.example/app:v1       base: golden (marked)
      nginx   [a, c, ng]                 nginx (Docker Hub short form)
    legacy    [a, b, l]                  r.example/legacy:1     base: debian-9 (closest)
    scratch   [s]                        r.example/scratch:1    no ancestors
"""

from __future__ import annotations

import hashlib
from typing import Any

from image_ancestry.engine import ImageRecord

PLATFORM = "platform"


def digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def layers(*names: str) -> tuple[str, ...]:
    return tuple(digest("layer-" + name) for name in names)


FOREST: dict[str, tuple[tuple[str, ...], str, bool, bool]] = {
    # name: (layers, image, has digest, marked)
    "debian-9": (("a", "b"), "r.example/debian:9", True, False),
    "debian-10": (("a", "c"), "r.example/debian:10", True, False),
    "golden": (("a", "c", "g"), "r.example/golden:1.0", True, True),
    "node": (("a", "c", "g", "n"), "r.example/node:20", False, False),
    "app": (("a", "c", "g", "n", "x"), "r.example/app:v1", True, False),
    "nginx": (("a", "c", "ng"), "nginx", True, False),
    "legacy": (("a", "b", "l"), "r.example/legacy:1", True, False),
    "scratch": (("s",), "r.example/scratch:1", True, False),
}


def image_digest(name: str, salt: str = "") -> str:
    return digest(f"manifest-{salt}{name}")


def records(
    namespace: str = PLATFORM, salt: str = "", registry: str = "r.example"
) -> list[ImageRecord]:
    """The forest; ``salt`` makes its layers and digests unique (cluster tests share one
    API server), ``registry`` replaces ``r.example`` in its references."""
    return [
        ImageRecord(
            namespace=namespace,
            name=name,
            layers=tuple(digest(f"layer-{salt}{layer}") for layer in names),
            image=image.replace("r.example", registry, 1),
            digest=image_digest(name, salt) if has_digest else None,
            marked=marked,
        )
        for name, (names, image, has_digest, marked) in FOREST.items()
    ]


def container_image_manifest(record: ImageRecord) -> dict[str, Any]:
    spec: dict[str, Any] = {"layers": list(record.layers)}
    if record.image is not None:
        spec["image"] = record.image
    if record.digest is not None:
        spec["digest"] = record.digest
    metadata: dict[str, Any] = {"name": record.name, "namespace": record.namespace}
    if record.marked:
        metadata["annotations"] = {"anchore.user/marked_base_image": "true"}
    return {
        "apiVersion": "imageancestry.io/v1alpha1",
        "kind": "ContainerImage",
        "metadata": metadata,
        "spec": spec,
    }


def policy_manifest(
    name: str, selector: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"namespaceSelector": {} if selector is None else selector}
    body.update(spec)
    return {
        "apiVersion": "imageancestry.io/v1alpha1",
        "kind": "AncestryPolicy",
        "metadata": {"name": name},
        "spec": body,
    }


def pod(name: str, namespace: str, *images: str, init: tuple[str, ...] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)]
    }
    if init:
        spec["initContainers"] = [{"name": f"init{i}", "image": img} for i, img in enumerate(init)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def deployment(name: str, namespace: str, *images: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {"name": f"c{i}", "image": image} for i, image in enumerate(images)
                    ]
                },
            },
        },
    }
