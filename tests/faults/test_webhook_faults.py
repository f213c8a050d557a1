"""The webhook slow (the operator SIGSTOPped) or down (kill -9), on the real API server.

- ContainerImage writes fail closed (``failurePolicy: Fail``), with the API server's message
  naming the webhook and the cause, and nothing is stored; the status subresource (the
  operator's own writes) is not in the webhook's path.
- The API server is never left waiting past the webhook's ``timeoutSeconds``: every refusal
  is measured and bounded by the registered timeout plus slack (that bound is the contract).
- Pods: with no AncestryPolicy there is no gate registration at all; with one, only the
  namespaces it selects are in the gate's path (its namespaceSelector), and never
  kube-system or the operator's own namespace, even when they carry the selected label.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from image_ancestry.policy.admission import WEBHOOK_NAME as GATE_WEBHOOK
from image_ancestry.webhook.server import WEBHOOK_NAME
from tests.clusters import TestCluster
from tests.faults.conftest import (
    GROUP,
    PLURAL,
    VERSION,
    Images,
    OperatorProcess,
    apply_crds,
    empty_namespace,
    figure,
    new_namespace,
    wait_for,
    wait_served,
)
from tests.operator.conftest import crds

__all__ = ["crds"]

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SLACK = 3.0  # seconds beyond timeoutSeconds: the client, TLS and a loaded 2-core machine


@pytest.fixture(scope="module")
def env(crds: TestCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One operator serving the webhook locally for the module (the last test replaces it),
    its namespace and a namespace of images; registrations removed at the end."""
    apply_crds(crds, "containerimages.yaml", "ancestrypolicies.yaml")
    system = new_namespace(crds, "faults-webhook")
    namespace = new_namespace(crds, "faults-webhook-images")
    logs = tmp_path_factory.mktemp("webhook-faults")
    started: list[OperatorProcess] = []

    def start() -> OperatorProcess:
        n = len(started)
        op = OperatorProcess(
            crds.kubeconfig_path, system, logs / f"operator-{n}.log", f"webhook-{n}", "local"
        )
        started.append(op.start())
        wait_served(crds, op, namespace)
        return op

    state = {"system": system, "ns": namespace, "images": Images(crds, uuid.uuid4().hex)}
    try:
        state["op"] = start()
        state["start"] = start
        yield state
    finally:
        for op in started:
            op.stop()
        for name in (f"image-ancestry-local-{system}", f"image-ancestry-policy-local-{system}"):
            crds.kubectl("delete", "validatingwebhookconfiguration", name, "--ignore-not-found")
        empty_namespace(crds, namespace)
        for ns in (system, namespace):
            crds.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def show_logs(env: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[None]:
    """The operator's log on stderr when the test failed."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        sys.stderr.write(f"\n===== operator log =====\n{env['op'].log()[-8000:]}\n")


def timeout_seconds(cluster: TestCluster, configuration: str) -> int:
    obj = json.loads(
        cluster.kubectl("get", "validatingwebhookconfiguration", configuration, "-o", "json")
    )
    (hook,) = obj["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    return int(hook["timeoutSeconds"])


def refused(call: Callable[[], Any]) -> tuple[ApiException, float]:
    """Run an API call that must be refused; return the refusal and how long it took."""
    started = time.monotonic()
    try:
        call()
    except ApiException as exc:
        return exc, time.monotonic() - started
    raise AssertionError("the call was admitted")


def message(exc: ApiException) -> str:
    return str(json.loads(exc.body or "{}").get("message", exc.body))


def pod(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": f"registry.example.com/{name}:1"}]},
    }


def test_containerimage_writes_fail_closed_while_the_webhook_is_paused(
    crds: TestCluster, env: dict[str, Any], show_logs: None
) -> None:
    images, ns, op = env["images"], env["ns"], env["op"]
    bound = timeout_seconds(crds, f"image-ancestry-local-{env['system']}") + SLACK
    images.create(ns, "stored", ["a"])  # the module's namespace: names are unique in it
    before = images.get(ns, "stored")["metadata"]["resourceVersion"]
    core = client.CoreV1Api(crds.api)

    op.signal(signal.SIGSTOP)
    try:
        exc, took = refused(lambda: images.create(ns, "new", ["a", "b"]))
        figure("create refused while the webhook is paused", took)
        assert took <= bound, f"the API server waited {took:.1f}s (bound {bound}s)"
        text = message(exc)
        assert f'failed calling webhook "{WEBHOOK_NAME}"' in text, text
        assert "deadline exceeded" in text or "timeout" in text, text
        exc, took = refused(
            lambda: images.patch(ns, "stored", {"spec": {"image": "registry.example.com/x:2"}})
        )
        assert took <= bound and WEBHOOK_NAME in message(exc), (took, message(exc))
        # the status subresource is out of the webhook's path: the operator never waits on it
        images.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, PLURAL, "stored", {"status": {"layerCount": 1}}
        )
        # no policy: no gate registration, so Pods never wait on the paused operator
        core.create_namespaced_pod(ns, pod(ns, "free"))
    finally:
        op.signal(signal.SIGCONT)
    with pytest.raises(ApiException) as gone:
        images.get(ns, "new")
    assert gone.value.status == 404
    assert images.get(ns, "stored")["spec"]["image"] != "registry.example.com/x:2"
    assert images.get(ns, "stored")["metadata"]["resourceVersion"] != before  # the status only
    wait_for(lambda: images.create(ns, "new", ["a", "b"]), what="writes admitted again")


def test_pods_outside_the_selected_namespaces_never_wait_on_the_gate(
    crds: TestCluster, env: dict[str, Any], show_logs: None
) -> None:
    op, system = env["op"], env["system"]
    core, apps = client.CoreV1Api(crds.api), client.AppsV1Api(crds.api)
    key, value = "imageancestry.io/faults-gate", uuid.uuid4().hex[:8]
    selected = new_namespace(crds, "faults-gated")
    free = new_namespace(crds, "faults-free")
    exempt = [system, "kube-system"]
    policy = f"faults-{value}"
    try:
        for ns in (selected, *exempt):  # the exempt ones carry the label too
            crds.kubectl("label", "namespace", ns, f"{key}={value}", "--overwrite")
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AncestryPolicy",
            "metadata": {"name": policy},
            "spec": {"namespaceSelector": {"matchLabels": {key: value}}, "action": "Deny",
                     "unknownImages": "Deny"},
        }  # fmt: skip
        crds.kubectl("apply", "-f", "-", input=json.dumps(body))

        def gated() -> bool:
            try:
                core.create_namespaced_pod(selected, pod(selected, "probe"), dry_run="All")
            except ApiException as exc:
                return policy in message(exc)
            return False

        wait_for(gated, timeout=60, what="the gate denying in the selected namespace")
        configuration = f"image-ancestry-policy-local-{system}"
        bound = timeout_seconds(crds, configuration) + SLACK
        registered = json.loads(
            crds.kubectl("get", "validatingwebhookconfiguration", configuration, "-o", "json")
        )
        (hook,) = registered["webhooks"]
        assert hook["name"] == GATE_WEBHOOK
        expressions = hook["namespaceSelector"]["matchExpressions"]
        assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn"}.items() <= (
            expressions[0].items()
        ) and set(exempt) <= set(expressions[0]["values"])

        op.signal(signal.SIGSTOP)
        try:
            for ns in (free, *exempt):
                core.create_namespaced_pod(ns, pod(ns, f"ok-{value}"))
            deployment = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "ok", "namespace": free},
                "spec": {
                    "selector": {"matchLabels": {"app": "ok"}},
                    "template": {
                        "metadata": {"labels": {"app": "ok"}},
                        "spec": pod(free, "ok")["spec"],
                    },
                },
            }
            apps.create_namespaced_deployment(free, deployment)
            exc, took = refused(lambda: core.create_namespaced_pod(selected, pod(selected, "x")))
            figure("Pod refused in a selected namespace while the gate is paused", took)
            assert took <= bound, f"the API server waited {took:.1f}s (bound {bound}s)"
            assert f'failed calling webhook "{GATE_WEBHOOK}"' in message(exc), message(exc)
        finally:
            op.signal(signal.SIGCONT)
    finally:
        crds.kubectl("delete", "apol", policy, "--ignore-not-found")
        for ns in exempt:
            crds.kubectl("label", "namespace", ns, f"{key}-")
            crds.kubectl("delete", "pod", f"ok-{value}", "-n", ns, "--ignore-not-found",
                         "--wait=false")  # fmt: skip
        for ns in (selected, free):
            crds.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_containerimage_writes_fail_closed_while_the_webhook_is_down(
    crds: TestCluster, env: dict[str, Any], show_logs: None
) -> None:
    """Last in the module: it kills the module's operator and starts its replacement."""
    images, ns, op, system = env["images"], env["ns"], env["op"], env["system"]
    bound = timeout_seconds(crds, f"image-ancestry-local-{system}") + SLACK
    op.kill9()  # its registration stays: the API server calls a port nobody listens on
    exc, took = refused(lambda: images.create(ns, "after-kill", ["a"]))
    figure("create refused while the webhook is down", took)
    assert took <= bound
    text = message(exc)
    assert f'failed calling webhook "{WEBHOOK_NAME}"' in text and "connection refused" in text
    with pytest.raises(ApiException):
        images.get(ns, "after-kill")
    # a new replica takes the registration over (the old endpoint is dead): writes go through
    env["op"] = env["start"]()
    images.create(ns, "after-kill", ["a"])
