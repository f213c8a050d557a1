"""The local control plane is a real Kubernetes API server: prove what tests rely on."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from image_ancestry import pki
from image_ancestry.controlplane.build import KUBERNETES_VERSION, ensure_binaries
from image_ancestry.controlplane.cluster import LocalCluster, _pid_alive
from tests.clusters import KubectlError, TestCluster

pytestmark = pytest.mark.cluster


def test_readyz_is_ok(cluster: TestCluster) -> None:
    assert cluster.kubectl("get", "--raw", "/readyz") == "ok"


def test_server_reports_its_real_version(cluster: TestCluster) -> None:
    if cluster.local is None:
        pytest.skip("the version pin only applies to the local control plane")
    info = json.loads(cluster.kubectl("version", "-o", "json"))
    assert info["serverVersion"]["gitVersion"] == KUBERNETES_VERSION


def test_cached_binaries_are_reused(cluster: TestCluster) -> None:
    """A second run builds nothing: every binary is found in the cache."""
    if cluster.local is None:
        pytest.skip("only the local control plane builds binaries")
    messages: list[str] = []
    ensure_binaries(progress=messages.append)
    assert messages == []


WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.imageancestry.io}
spec:
  group: test.imageancestry.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, properties: {size: {type: integer}}}
            status: {type: object, properties: {seen: {type: integer}}}
"""


def test_crd_with_status_subresource_serves(cluster: TestCluster, namespace: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.test.imageancestry.io", "--timeout=60s"
    )
    widget = {
        "apiVersion": "test.imageancestry.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": namespace},
        "spec": {"size": 3},
        "status": {"seen": 99},  # ignored on create: status goes through the subresource
    }
    cluster.kubectl("create", "-f", "-", input=json.dumps(widget))
    stored = json.loads(cluster.kubectl("get", "widget", "w1", "-n", namespace, "-o", "json"))
    assert "status" not in stored
    cluster.kubectl(
        "patch",
        "widget",
        "w1",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"seen": 3}}',
    )
    stored = json.loads(cluster.kubectl("get", "widget", "w1", "-n", namespace, "-o", "json"))
    assert stored["status"] == {"seen": 3}
    assert stored["spec"] == {"size": 3}


def test_pod_and_deployment_can_be_created(cluster: TestCluster, namespace: str) -> None:
    """The ServiceAccount admission plugin is off, so Pods need no default account."""
    cluster.kubectl("run", "p1", "-n", namespace, "--image=busybox", "--restart=Never")
    pod = json.loads(cluster.kubectl("get", "pod", "p1", "-n", namespace, "-o", "json"))
    assert pod["spec"]["containers"][0]["image"] == "busybox"
    cluster.kubectl("create", "deployment", "d1", "-n", namespace, "--image=nginx")
    assert "d1" in cluster.kubectl("get", "deployments", "-n", namespace, "-o", "name")


class _TinyWebhook:
    """An HTTPS admission webhook on loopback that denies every request and records it."""

    def __init__(self, tmp: Path):
        ca = pki.make_ca("tiny-webhook-ca")
        serving = pki.make_serving_cert(ca, "tiny-webhook", ["localhost"], ["127.0.0.1"])
        serving.write(tmp / "tls.crt", tmp / "tls.key")
        self.ca_pem = ca.cert_pem
        self.seen: list[dict[str, Any]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                seen.append(review["request"])
                body = json.dumps(
                    {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": {
                            "uid": review["request"]["uid"],
                            "allowed": False,
                            "status": {"code": 403, "message": "tiny webhook says no"},
                        },
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tmp / "tls.crt"), str(tmp / "tls.key"))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tiny_webhook(tmp_path: Path) -> Iterator[_TinyWebhook]:
    hook = _TinyWebhook(tmp_path)
    yield hook
    hook.close()


def test_url_webhook_on_loopback_is_called(
    cluster: TestCluster, namespace: str, tiny_webhook: _TinyWebhook
) -> None:
    if cluster.local is None:
        pytest.skip("a URL webhook on 127.0.0.1 is reachable only from a local API server")
    label = uuid.uuid4().hex[:10]
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": f"tiny-{label}"},
        "webhooks": [
            {
                "name": "tiny.test.imageancestry.io",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{tiny_webhook.port}/validate",
                    "caBundle": base64.b64encode(tiny_webhook.ca_pem).decode(),
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["configmaps"],
                    }
                ],
                # Only this test's objects go through it, so nothing else in the suite is affected.
                "objectSelector": {"matchLabels": {"tiny-webhook": label}},
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
            }
        ],
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(config))
    try:
        cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "c1", "namespace": namespace, "labels": {"tiny-webhook": label}},
        }
        # The configuration takes a moment to reach the API server's webhook cache.
        denied = ""
        for _ in range(50):
            try:
                cluster.kubectl("create", "-f", "-", input=json.dumps(cm))
            except KubectlError as exc:
                denied = exc.stderr
                break
            cluster.kubectl("delete", "configmap", "c1", "-n", namespace)
            time.sleep(0.2)
        assert "tiny webhook says no" in denied
        assert any(r["name"] == "c1" and r["namespace"] == namespace for r in tiny_webhook.seen)
        # An unlabelled object never reaches it.
        cluster.kubectl("create", "configmap", "c2", "-n", namespace)
        assert not any(r["name"] == "c2" for r in tiny_webhook.seen)
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", f"tiny-{label}", check=False)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "image_ancestry.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cli_start_stop_leaves_no_process(tmp_path: Path) -> None:
    """`cluster start` returns with detached processes; `cluster stop` ends exactly those."""
    directory = tmp_path / "c"
    started = _cli("cluster", "start", "--dir", str(directory))
    assert started.returncode == 0, started.stderr
    assert f"KUBECONFIG={directory.resolve() / 'kubeconfig'}" in started.stdout
    state = json.loads((directory / "state.json").read_text())
    pids = list(state["pids"].values())
    assert len(pids) == 2 and all(_pid_alive(p) for p in pids)
    kubeconfig = yaml.safe_load((directory / "kubeconfig").read_text())
    assert kubeconfig["users"][0]["name"] == "admin"
    # Starting again reuses what runs.
    again = _cli("cluster", "start", "--dir", str(directory))
    assert again.returncode == 0 and "already running" in again.stderr
    assert json.loads((directory / "state.json").read_text())["pids"] == state["pids"]
    stopped = _cli("cluster", "stop", "--dir", str(directory))
    assert stopped.returncode == 0, stopped.stderr
    assert not any(_pid_alive(p) for p in pids)
    assert not directory.exists()
    assert "nothing running" in _cli("cluster", "stop", "--dir", str(directory)).stdout


def test_component_restart_keeps_data(tmp_path: Path) -> None:
    """Stopping and starting the API server and etcd loses nothing stored."""
    local = LocalCluster(tmp_path / "c", progress=lambda _m: None)
    local.start()
    try:
        tc = TestCluster("restart", local.kubeconfig, local=local)
        tc.kubectl("create", "configmap", "keep-me", "--from-literal=k=v")
        local.stop_component("kube-apiserver")
        local.stop_component("etcd")
        local.start_component("etcd")
        local.start_component("kube-apiserver")
        got = json.loads(tc.kubectl("get", "configmap", "keep-me", "-o", "json"))
        assert got["data"] == {"k": "v"}
    finally:
        local.stop()
