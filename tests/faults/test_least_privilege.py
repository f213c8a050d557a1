"""Least privilege, for real: the operator runs with only deploy/'s ServiceAccount and RBAC,
authenticated by a token from the TokenRequest API, and the API server's audit log says what
it did.

One run (module fixture) drives every feature: statuses, the ConfigMap flag (and an invalid
value, whose Warning Event goes on the ConfigMap), BaseImageChanged Events, the Lease (created,
renewed, released to a second replica that takes over), the webhook's Secret (created by the
first replica, renewed by the second), the caBundle of deploy/'s webhook configuration, the
ancestry gate (policies watched, their audit written into their status; a namespace the
watches have not delivered looked up) and the base comparison (VulnerabilityReports watched).
Then (a) nothing it did was forbidden and (b) every (apiGroup, resource, verb) the roles grant
was used.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import ssl
import subprocess
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from image_ancestry.webhook import server, tls
from tests.clusters import TestCluster
from tests.faults.conftest import REPO, Images, OperatorProcess, empty_namespace, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

DEPLOY = REPO / "deploy"
NAMESPACE = "image-ancestry-system"
ACCOUNT = "image-ancestry"
USER = f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}"
CONFIGMAP = "image-ancestry-config"
Triple = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)


def _built() -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def granted(docs: list[dict[str, Any]]) -> set[Triple]:
    """Every (apiGroup, resource, verb) the ClusterRole and Role of deploy/ grant."""
    out: set[Triple] = set()
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in doc.get("rules") or []:
            assert "nonResourceURLs" not in rule, rule
            for group in rule.get("apiGroups") or []:
                for resource in rule.get("resources") or []:
                    for verb in rule.get("verbs") or []:
                        assert "*" not in (group, resource, verb), rule
                        out.add((group, resource, verb))
    return out


def used(events: list[dict[str, Any]]) -> set[Triple]:
    out: set[Triple] = set()
    for event in events:
        ref = event.get("objectRef")
        if not ref:
            continue  # discovery and other non-resource URLs (granted to every user)
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out.add((ref.get("apiGroup", ""), resource, event["verb"]))
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def token_kubeconfig(cluster: TestCluster, path: Path) -> Path:
    """A kubeconfig holding only the cluster's CA and a TokenRequest token of the account."""
    token = cluster.kubectl("create", "token", ACCOUNT, "-n", NAMESPACE, "--duration=1h").strip()
    admin = yaml.safe_load(cluster.kubeconfig_path.read_text())
    cluster_entry = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster_entry],
        "users": [{"name": ACCOUNT, "user": {"token": token}}],
        "contexts": [
            {"name": ACCOUNT, "context": {"cluster": cluster_entry["name"], "user": ACCOUNT}}
        ],
        "current-context": ACCOUNT,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def install(cluster: TestCluster, docs: list[dict[str, Any]]) -> None:
    """deploy/ for real, except the Deployment and its PDB (no pods run here), with the
    webhook narrowed to no object (its Service is unreachable from this API server, and it
    fails closed)."""
    keep = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "PodDisruptionBudget"):
            continue
        if doc["kind"] == "ValidatingWebhookConfiguration":
            for hook in doc["webhooks"]:
                hook["objectSelector"] = {"matchLabels": {"imageancestry.io/never": "true"}}
                hook["clientConfig"].pop("caBundle", None)
        keep.append(doc)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(keep))
    cluster.kubectl("apply", "-f", str(REPO / "tests" / "data" / "vulnerabilityreports-crd.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    # what the run must create itself
    for kind, name in (("lease", "image-ancestry"), ("secret", tls.SECRET_NAME)):
        cluster.kubectl("delete", kind, name, "-n", NAMESPACE, "--ignore-not-found")


def _audit_since(path: Path, offset: int) -> list[dict[str, Any]]:
    with path.open("rb") as f:
        f.seek(offset)
        lines = f.read().splitlines()
    events = [json.loads(line) for line in lines if line.strip()]
    return [e for e in events if (e.get("user") or {}).get("username") == USER]


def _admission_review(namespace: str) -> bytes:
    """An AdmissionReview as the API server sends it, for a Pod in ``namespace``."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": "registry.example.com/x:1"}]},
    }
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    request = {
        "uid": str(uuid.uuid4()),
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "name": "probe",
        "namespace": namespace,
        "operation": "CREATE",
        "userInfo": {"username": "admin", "groups": ["system:masters"]},
        "object": pod,
        "oldObject": None,
        "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    return json.dumps(body).encode()


@dataclass
class Run:
    granted: set[Triple]
    events: list[dict[str, Any]]
    logs: list[str]
    observed: dict[str, Any]


def _drive(
    cluster: TestCluster,
    images: Images,
    ns: str,
    start: Callable[..., OperatorProcess],
    ports: dict[str, int],
) -> dict[str, Any]:
    """Every feature, through the real API server; returns what each produced."""
    seen: dict[str, Any] = {}
    images.apply(
        images.manifest(ns, "distro", ["a"]),
        images.manifest(ns, "runtime", ["a", "b"]),
        images.manifest(ns, "app", ["a", "b", "c"]),
    )
    first = start(identity="lp-first", webhook_port=_free_port())
    seen["computed"] = images.wait_base(ns, "app", (ns, "runtime"), "ClosestAncestor", 90)
    images.mark(ns, "distro", "true")  # as admin: the webhook admits it (rule 7)
    images.wait_base(ns, "app", (ns, "distro"), "MarkedBaseImage")
    seen["event"] = wait_for(
        lambda: images.events(ns, "app", "BaseImageChanged"), what="a BaseImageChanged Event"
    )

    def set_config(value: str) -> None:
        patch = {"data": {"enable_user_base_image": value}}
        cluster.kubectl(
            "patch",
            "configmap",
            CONFIGMAP,
            "-n",
            NAMESPACE,
            "--type=merge",
            "-p",
            json.dumps(patch),
        )

    set_config("false")
    images.wait_base(ns, "app", (ns, "runtime"), "ClosestAncestor")
    set_config("sometimes")
    seen["invalid"] = wait_for(
        lambda: images.events(NAMESPACE, CONFIGMAP, "InvalidConfig"), what="InvalidConfig"
    )
    set_config("true")
    images.wait_base(ns, "app", (ns, "distro"), "MarkedBaseImage")

    policy = f"lp-{uuid.uuid4().hex[:6]}"
    doc = {
        "apiVersion": "imageancestry.io/v1alpha1",
        "kind": "AncestryPolicy",
        "metadata": {"name": policy},
        "spec": {
            "namespaceSelector": {"matchLabels": {"imageancestry.io/least-privilege": "yes"}},
            "action": "Warn",
            "unknownImages": "Allow",
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def audited() -> Any:
        obj = json.loads(cluster.kubectl("get", "apol", policy, "-o", "json"))
        return (obj.get("status") or {}).get("observedGeneration") == 1 and obj["status"]

    seen["policy"] = wait_for(audited, timeout=60, what="the policy's audit in its status")

    def bundle() -> str:
        obj = json.loads(
            cluster.kubectl(
                "get", "validatingwebhookconfiguration", server.CONFIGURATION_NAME, "-o", "json"
            )
        )
        return str(obj["webhooks"][0]["clientConfig"].get("caBundle") or "")

    seen["bundle"] = wait_for(bundle, timeout=60, what="the caBundle patched in")
    secret = json.loads(
        cluster.kubectl("get", "secret", tls.SECRET_NAME, "-n", NAMESPACE, "-o", "json")
    )
    ca = base64.b64decode(secret["data"]["ca.crt"])
    # the gate on a Pod of a namespace no watch delivered: it looks the namespace up
    context = ssl.create_default_context(cadata=ca.decode())
    context.check_hostname = False
    request = urllib.request.Request(
        f"https://127.0.0.1:{ports['lp-first']}/validate-ancestry",
        data=_admission_review(f"nowhere-{uuid.uuid4().hex[:6]}"),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        seen["review"] = json.loads(response.read())

    # the second replica: the Secret it finds is unusable (renewed), the Lease is handed over
    second = start(identity="lp-second", webhook_port=_free_port())
    wait_for(lambda: "listing (start) done" in second.log(), timeout=60, what="the standby")
    cluster.kubectl(
        "patch", "secret", tls.SECRET_NAME, "-n", NAMESPACE, "--type=merge",
        "-p", json.dumps({"data": {"tls.crt": "", "tls.key": ""}}),
    )  # fmt: skip
    third = start(identity="lp-third", webhook_port=_free_port())
    wait_for(lambda: "renewing the webhook certificate" in third.log(), timeout=60, what="renew")
    first.signal(signal.SIGTERM)  # a clean exit releases the Lease
    assert first.proc is not None
    first.proc.wait(timeout=30)

    def holder() -> Any:
        lease = json.loads(
            cluster.kubectl("get", "lease", "image-ancestry", "-n", NAMESPACE, "-o", "json")
        )
        name = lease["spec"].get("holderIdentity")
        return name in ("lp-second", "lp-third") and name

    seen["holder"] = wait_for(holder, timeout=60, what="a standby holding the Lease")
    images.apply(images.manifest(ns, "late", ["a", "b", "c", "d"]))
    seen["late"] = images.wait_base(ns, "late", (ns, "distro"), "MarkedBaseImage", 60)
    cluster.kubectl("delete", "apol", policy)
    return seen


@pytest.fixture(scope="module")
def run(cluster: TestCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if cluster.local is None or cluster.local.state().audit_log is None:
        pytest.skip("needs the local control plane's audit log")
    audit_log = Path(cluster.local.state().audit_log)
    docs = _built()
    install(cluster, docs)
    directory = tmp_path_factory.mktemp("least-privilege")
    kubeconfig = token_kubeconfig(cluster, directory / "token.kubeconfig")
    images = Images(cluster, uuid.uuid4().hex)
    ns = f"lp-images-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    offset = audit_log.stat().st_size
    started: list[OperatorProcess] = []
    ports: dict[str, int] = {}

    def start(identity: str, webhook_port: int) -> OperatorProcess:
        op = OperatorProcess(
            kubeconfig,
            NAMESPACE,
            directory / f"{identity}.log",
            identity=identity,
            webhook="cluster",
            extra=[f"--webhook-port={webhook_port}"],
        )
        ports[identity] = webhook_port
        started.append(op.start())
        return op

    try:
        observed = _drive(cluster, images, ns, start, ports)
    finally:
        for op in started:
            op.stop()
        cluster.kubectl(
            "delete", "validatingwebhookconfiguration", server.CONFIGURATION_NAME, check=False
        )
        empty_namespace(cluster, ns)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    yield Run(
        granted(docs), _audit_since(audit_log, offset), [op.log() for op in started], observed
    )


def test_every_feature_worked_as_the_service_account(run: Run) -> None:
    seen = run.observed
    assert seen["computed"]["parent"]["name"] == "runtime"
    assert seen["event"][0]["type"] == "Normal"
    assert "sometimes" in seen["invalid"][0]["message"]
    assert seen["policy"]["observedGeneration"] == 1
    assert seen["bundle"]
    assert seen["review"]["response"]["allowed"] is True
    assert seen["late"]["ancestorCount"] == 3
    assert {e["user"]["username"] for e in run.events} == {USER}
    assert run.events, "the audit log saw nothing of the service account"


def test_nothing_it_did_was_forbidden(run: Run) -> None:
    forbidden = [
        (e["verb"], e["requestURI"])
        for e in run.events
        if (e.get("responseStatus") or {}).get("code") == 403
    ]
    assert not forbidden, forbidden[:10]
    for log in run.logs:
        lines = [x for x in log.splitlines() if " 403 " in x or "orbidden" in x]
        assert not lines, lines[:5]


def test_the_roles_grant_nothing_it_did_not_use(run: Run) -> None:
    calls = used(run.events)
    print(f"\nfigure: {len(run.events)} audit events, {len(calls)} (group, resource, verb):")
    print("\n".join(f"  {c}" for c in sorted(calls)))
    unused = run.granted - calls
    assert not unused, f"granted but never used: {sorted(unused)}"
