"""How the gate registers itself, on the real API server: its entry in deploy/'s
configuration (cluster mode), and the sweep of dead local registrations.

The operator's controller is stood in for by the three things the gate reads of it (an
index, a ready event, can_write); every request goes to the session's API server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import types
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from image_ancestry.engine import AncestryIndex
from image_ancestry.operator.kube import KubeClient, load_credentials
from image_ancestry.policy.admission import WEBHOOK_NAME, PolicyGate, gate_configuration
from tests.clusters import TestCluster
from tests.policy.conftest import apply_crds

pytestmark = pytest.mark.cluster

CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()
NOWHERE = {"matchLabels": {"ancestry-test": "selects-no-namespace"}}


def make_gate(kube: KubeClient) -> PolicyGate:
    ready = asyncio.Event()
    ready.set()
    controller = types.SimpleNamespace(index=AncestryIndex(), ready=ready, can_write=lambda: True)
    gate = PolicyGate(controller, kube, f"ia-reg-{uuid.uuid4().hex[:6]}")
    gate.loaded.set()
    return gate


def policy(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "imageancestry.io/v1alpha1",
        "kind": "AncestryPolicy",
        "metadata": {"name": name, "resourceVersion": "1", "generation": 1},
        "spec": {"namespaceSelector": NOWHERE},
    }


def get(cluster: TestCluster, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "validatingwebhookconfiguration", name, "-o", "json")
    result: dict[str, Any] = json.loads(out)
    return result


def test_cluster_mode_adds_and_removes_its_entry_beside_the_others(cluster: TestCluster) -> None:
    apply_crds(cluster)
    name = f"ia-reg-{uuid.uuid4().hex[:6]}"
    theirs = {
        "name": "containerimages.imageancestry.io",
        "clientConfig": {
            "service": {"name": "svc", "namespace": "ia-reg", "path": "/validate-containerimage"},
            "caBundle": CA,
        },
        "rules": [
            {
                "apiGroups": ["test.invalid"],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["nothing"],
            }
        ],
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    }
    body = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [theirs],
    }
    cluster.kubectl("create", "-f", "-", input=json.dumps(body))

    async def scenario() -> None:
        async with KubeClient(load_credentials(str(cluster.kubeconfig_path))) as kube:
            gate = make_gate(kube)
            gate.cluster_configuration = name

            async def server(_: Any) -> AsyncIterator[dict[str, Any]]:
                yield {
                    "service": {"name": "svc", "namespace": "ia-reg", "path": ""},
                    "caBundle": "c3RhbGU=",
                }

            served = gate.wrap_server(server)(None)
            await served.__anext__()
            gate.on_policy("ADDED", policy("p1"))
            await gate._apply_configuration()
            hooks = get(cluster, name)["webhooks"]
            assert [h["name"] for h in hooks] == [theirs["name"], WEBHOOK_NAME]
            ours = hooks[1]
            assert ours["clientConfig"]["service"]["path"] == "/validate-ancestry"
            assert ours["clientConfig"]["caBundle"] == CA  # the current one, not the stale
            expressions = ours["namespaceSelector"]["matchExpressions"]
            assert expressions[0]["operator"] == "NotIn"
            assert set(expressions[0]["values"]) == {"kube-system", gate.namespace}
            assert ours["namespaceSelector"]["matchLabels"] == NOWHERE["matchLabels"]
            assert ours["failurePolicy"] == "Fail"
            gate.on_policy("DELETED", policy("p1"))
            await gate._apply_configuration()
            assert [h["name"] for h in get(cluster, name)["webhooks"]] == [theirs["name"]]
            await served.aclose()

    try:
        asyncio.run(scenario())
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", name, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_local_sweep_removes_only_registrations_whose_endpoint_is_gone(
    cluster: TestCluster,
) -> None:
    dead = f"ia-dead-{uuid.uuid4().hex[:6]}"
    alive = f"ia-alive-{uuid.uuid4().hex[:6]}"

    async def scenario() -> None:
        listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        for name, at in ((dead, free_port()), (alive, port)):
            body = gate_configuration(
                name,
                {"url": f"https://127.0.0.1:{at}/validate-ancestry", "caBundle": CA},
                ["kube-system"],
                NOWHERE,
            )
            cluster.kubectl("create", "-f", "-", input=json.dumps(body))
        async with KubeClient(load_credentials(str(cluster.kubeconfig_path))) as kube:
            await make_gate(kube)._sweep_local()
        listener.close()

    try:
        asyncio.run(scenario())
        names = cluster.kubectl("get", "validatingwebhookconfigurations", "-o", "name").split()
        assert f"validatingwebhookconfiguration.admissionregistration.k8s.io/{alive}" in names
        assert f"validatingwebhookconfiguration.admissionregistration.k8s.io/{dead}" not in names
    finally:
        for name in (dead, alive):
            cluster.kubectl(
                "delete", "validatingwebhookconfiguration", name, "--ignore-not-found", check=False
            )
