"""The CRD's caps keep every ContainerImage far below etcd's 1.5 MiB object limit.

The worst case is built field by field at each schema maximum (sha512 layers at the layer cap,
the longest names and references, 100 listed ancestors with the longest fields), stored
through the real API server, and measured as the API server returns it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from image_ancestry.engine import MAX_LISTED_ANCESTORS
from image_ancestry.model import LAYER_CAP
from tests.clusters import KubectlError, TestCluster

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
ETCD_LIMIT = 1_572_864  # etcd's default --max-request-bytes (1.5 MiB)


def _schema() -> dict[str, object]:
    crd = yaml.safe_load((REPO / "crds" / "containerimages.yaml").read_text())
    schema: dict[str, object] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _sha512(i: int) -> str:
    return "sha512:" + hashlib.sha512(str(i).encode()).hexdigest()


def _ref(i: int, image_len: int, digest: bool) -> dict[str, object]:
    ref: dict[str, object] = {
        "namespace": "n" * 63,
        "name": f"{i:03d}" + "a" * 250,
        "image": ("r" * (image_len - 4)) + f"{i:04d}",
    }
    if digest:
        ref["digest"] = _sha512(10_000 + i)
    return ref


def test_worst_case_object_stays_under_etcd_limit(cluster: TestCluster, namespace: str) -> None:
    props = _schema()["properties"]
    assert isinstance(props, dict)
    spec_props = props["spec"]["properties"]
    image_len = spec_props["image"]["maxLength"]
    assert spec_props["layers"]["maxItems"] == LAYER_CAP
    assert props["status"]["properties"]["ancestors"]["maxItems"] == MAX_LISTED_ANCESTORS

    cluster.kubectl("apply", "-f", str(REPO / "crds" / "containerimages.yaml"))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/containerimages.imageancestry.io",
        "--timeout=60s",
    )
    name = "w" * 253
    obj = {
        "apiVersion": "imageancestry.io/v1alpha1",
        "kind": "ContainerImage",
        # Kubernetes caps all annotations together at 256 KiB; take nearly all of it.
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {"example.com/filler": "x" * (256 * 1024 - 200)},
        },
        "spec": {
            "image": "i" * image_len,
            "digest": _sha512(-1),
            "layers": [_sha512(i) for i in range(LAYER_CAP)],
        },
    }
    cluster.kubectl("create", "-f", "-", input=json.dumps(obj))
    ancestors = []
    for i in range(MAX_LISTED_ANCESTORS):
        ref = _ref(i, image_len, digest=True)
        ref["layerCount"] = LAYER_CAP - 1 - i
        ancestors.append(ref)
    status = {
        "observedGeneration": 1,
        "layerCount": LAYER_CAP,
        "ancestorCount": 10**9,
        "ancestors": ancestors,
        "parent": _ref(0, image_len, digest=True),
        "baseImage": {**_ref(1, image_len, digest=True), "reason": "MarkedBaseImage"},
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Computed",
                "message": "m" * 1024,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 1,
            }
        ],
    }

    def patch_status() -> None:
        patch = json.dumps({"status": status})
        args = ["-n", namespace, "--subresource=status", "--type=merge", "-p", patch]
        cluster.kubectl("patch", "containerimage", name, *args)

    patch_status()
    stored = cluster.kubectl("get", "containerimage", name, "-n", namespace, "-o", "json")
    size = len(stored.encode())
    print(f"worst-case ContainerImage as stored: {size} bytes ({size / ETCD_LIMIT:.1%} of 1.5 MiB)")
    assert len(json.loads(stored)["status"]["ancestors"]) == MAX_LISTED_ANCESTORS
    assert size < ETCD_LIMIT

    # And the caps hold: one layer more, or one listed ancestor more, is refused.
    too_many = json.loads(json.dumps(obj))
    too_many["metadata"] = {"name": "too-many-layers", "namespace": namespace}
    too_many["spec"]["layers"].append(_sha512(LAYER_CAP))
    with pytest.raises(KubectlError, match=r"spec\.layers"):
        cluster.kubectl("create", "-f", "-", input=json.dumps(too_many))
    status["ancestors"] = [*ancestors, _ref(MAX_LISTED_ANCESTORS, image_len, digest=False)]
    with pytest.raises(KubectlError, match=r"status\.ancestors"):
        patch_status()
