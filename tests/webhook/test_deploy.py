"""deploy/: what `kubectl apply -k deploy/` installs, checked as built and on the API server.

The static checks read `kubectl kustomize deploy/` (kubectl's own kustomize); the cluster
checks apply it to the real local API server and run the operator with exactly the RBAC
deploy/ grants.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from image_ancestry import pki
from image_ancestry.webhook import config as admin_config
from image_ancestry.webhook import server, tls
from tests.clusters import TestCluster
from tests.webhook.conftest import REPO, layer, manifest, stop_process, wait_for

DEPLOY = REPO / "deploy"
NAMESPACE = "image-ancestry-system"
SA_USER = f"system:serviceaccount:{NAMESPACE}:image-ancestry"


@pytest.fixture(scope="module")
def built() -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


# --- as built ------------------------------------------------------------------------------


def test_crds_are_the_copies_of_crds_and_all_installed() -> None:
    """crds/ is the source of truth; kustomize cannot reach it (no ../), so deploy/crds/
    holds copies. Refresh with: cp crds/*.yaml deploy/crds/"""
    sources = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    assert sources, "no CRDs in crds/"
    resources = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    for name in sources:
        copy = DEPLOY / "crds" / name
        assert copy.is_file(), f"deploy/crds/{name} is missing"
        assert copy.read_bytes() == (REPO / "crds" / name).read_bytes(), f"{name} differs"
        assert f"crds/{name}" in resources
    assert sorted(p.name for p in (DEPLOY / "crds").glob("*.yaml")) == sources


def test_webhook_configuration_is_what_the_operator_serves(built: list[dict[str, Any]]) -> None:
    vwc = one(built, "ValidatingWebhookConfiguration", server.CONFIGURATION_NAME)
    (hook,) = vwc["webhooks"]
    expected = server.webhook_entry(
        {
            "service": {
                "name": server.SERVICE_NAME,
                "namespace": NAMESPACE,
                "path": f"/{server.WEBHOOK_ID}",
                "port": server.SERVICE_PORT,
            }
        }
    )
    assert hook == expected
    service = one(built, "Service", server.SERVICE_NAME)
    (port,) = service["spec"]["ports"]
    assert port["port"] == server.SERVICE_PORT and port["targetPort"] == "webhook"
    deployment = one(built, "Deployment")
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["webhook"] == server.LISTEN_PORT


def test_rbac_is_explicit_and_pinned(built: list[dict[str, Any]]) -> None:
    roles = [d for d in built if d["kind"] in ("ClusterRole", "Role")]
    assert {r["kind"] for r in roles} == {"ClusterRole", "Role"}
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(key, []), f"{role['kind']}: wildcard in {rule}"
            assert set(rule["verbs"]) <= {"get", "list", "watch", "create", "update", "patch"}
            # Secrets and ConfigMaps are readable only by name, never listed at large.
            if {"secrets", "configmaps"} & set(rule["resources"]) and rule["verbs"] != ["create"]:
                assert rule.get("resourceNames"), rule
    cluster_role = one(built, "ClusterRole")
    for rule in cluster_role["rules"]:
        assert not {"secrets", "configmaps", "leases"} & set(rule["resources"])
        if "validatingwebhookconfigurations" in rule["resources"]:
            assert rule["resourceNames"] == [server.CONFIGURATION_NAME]
    for binding in (d for d in built if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "image-ancestry", "namespace": NAMESPACE}
        ]


def test_deployment_is_hardened_and_probed_on_kopfs_health_endpoint(
    built: list[dict[str, Any]],
) -> None:
    deployment = one(built, "Deployment")
    assert deployment["metadata"]["namespace"] == NAMESPACE
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "image-ancestry"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert set(c["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert "memory" in c["resources"]["limits"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # The probes ask the endpoint `run --liveness` serves (kopf's health reporter).
    assert all(a.startswith("--") for a in c["args"])  # options of the entrypoint's `run`
    (liveness,) = [a for a in c["args"] if a.startswith("--liveness=")]
    url = liveness.removeprefix("--liveness=")
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    path = "/" + url.rsplit(":", 1)[1].split("/", 1)[1]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe["httpGet"]["path"] == path and ports[probe["httpGet"]["port"]] == port
    # The only writable place is a small emptyDir: the webhook's certificate files.
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/tmp"]
    pdb = one(built, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_configmap_states_the_defaults(built: list[dict[str, Any]]) -> None:
    data = one(built, "ConfigMap", admin_config.CONFIGMAP_NAME)["data"]
    assert data == {
        "enable_user_base_image": "true",
        "admin_groups": "system:masters",
        "admin_users": "",
    }
    # What it says is what the code does without it.
    source = "x"
    assert admin_config.parse_admin_config(data, source=source) == (
        admin_config.parse_admin_config(None, source=source)
    )


# --- on the API server ---------------------------------------------------------------------


@pytest.mark.cluster
def test_apply_dry_run_server_succeeds(cluster: TestCluster) -> None:
    """`kubectl apply -k deploy/` creates the Namespace before the rest; a server-side dry
    run persists nothing, so the Namespace must exist for the namespaced objects."""
    cluster.kubectl("apply", "-f", str(DEPLOY / "namespace.yaml"))
    result = subprocess.run(
        ["kubectl", "apply", "--dry-run=server", "-k", str(DEPLOY)],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for kind in ("deployment.apps/image-ancestry", "validatingwebhookconfiguration"):
        assert kind in result.stdout
    # The namespace enforces the restricted Pod Security level; the pod template meets it.
    assert "PodSecurity" not in result.stderr, result.stderr


@contextlib.contextmanager
def running_operator(
    args: list[str], log_path: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``image-ancestry run ARGS`` as a subprocess, logging to ``log_path``; stopped after."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "image_ancestry.cli", "run", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )
    try:
        yield proc
    finally:
        stop_process(proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def installed(cluster: TestCluster, built: list[dict[str, Any]]) -> Iterator[None]:
    """deploy/ applied for real, except the Deployment (nothing runs pods here) and with the
    webhook narrowed to no object, so that it cannot refuse other tests' writes."""
    docs = []
    for doc in built:
        if doc["kind"] == "Deployment":
            continue
        if doc["kind"] == "ValidatingWebhookConfiguration":
            for hook in doc["webhooks"]:
                hook["objectSelector"] = {"matchLabels": {"imageancestry.io/never": "true"}}
        docs.append(doc)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    yield
    cluster.kubectl(
        "delete", "validatingwebhookconfiguration", server.CONFIGURATION_NAME, check=False
    )


def _service_account_kubeconfig(cluster: TestCluster, directory: Path) -> Path:
    """Credentials for the ServiceAccount's user name: a client certificate from the local
    control plane's CA (RBAC binds the name, whatever authenticated it)."""
    pki_dir = cluster.local.pki_dir
    ca = pki.KeyPair((pki_dir / "ca.crt").read_bytes(), (pki_dir / "ca.key").read_bytes())
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"]
    pki.make_client_cert(ca, SA_USER, groups).write(directory / "sa.crt", directory / "sa.key")
    admin = yaml.safe_load(cluster.kubeconfig_path.read_text())
    server_url = admin["clusters"][0]["cluster"]["server"]
    path = directory / "sa.kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {
                            "server": server_url,
                            "certificate-authority": str(pki_dir / "ca.crt"),
                        },
                    }
                ],
                "users": [
                    {
                        "name": "sa",
                        "user": {
                            "client-certificate": str(directory / "sa.crt"),
                            "client-key": str(directory / "sa.key"),
                        },
                    }
                ],
                "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa"}}],
                "current-context": "sa",
            }
        )
    )
    return path


@pytest.mark.cluster
@pytest.mark.slow
def test_the_operator_works_with_exactly_deploys_rbac(
    cluster: TestCluster, installed: None, namespace: str, tmp_path: Path
) -> None:
    if cluster.local is None:
        pytest.skip("needs the local control plane's CA to authenticate as the ServiceAccount")
    kubeconfig = _service_account_kubeconfig(cluster, tmp_path)
    cluster.kubectl("delete", "secret", tls.SECRET_NAME, "-n", NAMESPACE, "--ignore-not-found")
    salt = uuid.uuid4().int % 10**6 * 1000
    base, app = layer(salt + 1), layer(salt + 2)
    for doc in (manifest(namespace, "base", [base]), manifest(namespace, "app", [base, app])):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
    log_path = tmp_path / "operator.log"
    args = ["--kubeconfig", str(kubeconfig), "--identity", "rbac-test", "--webhook", "cluster",
            "--webhook-port", str(_free_port())]  # fmt: skip
    env = {**os.environ, "POD_NAMESPACE": NAMESPACE}
    with running_operator(args, log_path, env) as proc:

        def computed() -> bool:
            assert proc.poll() is None, log_path.read_text()[-4000:]
            obj = json.loads(cluster.kubectl("get", "cimg", "app", "-n", namespace, "-o", "json"))
            parent = (obj.get("status") or {}).get("parent") or {}
            return parent.get("name") == "base"

        wait_for(computed, timeout=90, what="the operator, as its ServiceAccount, to write status")

        def bundle_patched() -> bool:
            secret = json.loads(
                cluster.kubectl("get", "secret", tls.SECRET_NAME, "-n", NAMESPACE, "-o", "json",
                                check=False) or "{}"
            )  # fmt: skip
            vwc = json.loads(
                cluster.kubectl(
                    "get", "validatingwebhookconfiguration", server.CONFIGURATION_NAME, "-o", "json"
                )
            )
            ca = (secret.get("data") or {}).get("ca.crt")
            return bool(ca) and vwc["webhooks"][0]["clientConfig"].get("caBundle") == ca

        wait_for(bundle_patched, timeout=60, what="the generated CA in the caBundle")
        lease = json.loads(
            cluster.kubectl("get", "lease", "image-ancestry", "-n", NAMESPACE, "-o", "json")
        )
        assert lease["spec"]["holderIdentity"] == "rbac-test"
    log = log_path.read_text()
    assert "forbidden" not in log.lower(), [x for x in log.splitlines() if "orbidden" in x][:5]


@pytest.mark.cluster
@pytest.mark.parametrize(
    "args",
    [
        ["delete", "containerimages"],
        ["update", "containerimages"],
        ["list", "secrets", "-n", NAMESPACE],
        ["get", "secrets/other", "-n", NAMESPACE],
        ["get", "configmaps/other", "-n", NAMESPACE],
        ["update", "validatingwebhookconfigurations/someone-elses"],
        ["create", "pods", "-n", "default"],
        ["patch", "deployments", "-n", "default"],
        ["update", "leases/other", "-n", NAMESPACE],
    ],
)
def test_the_service_account_may_do_nothing_else(
    cluster: TestCluster, installed: None, args: list[str]
) -> None:
    answer = cluster.kubectl("auth", "can-i", f"--as={SA_USER}", *args, check=False).strip()
    assert answer == "no"
    # ... while what it needs is granted (the same question, answered yes).
    assert cluster.kubectl(
        "auth", "can-i", f"--as={SA_USER}", "get", "secrets/image-ancestry-webhook-tls",
        "-n", NAMESPACE,
    ).strip() == "yes"  # fmt: skip


def test_cert_manager_component_mounts_its_certificate_and_injects_the_ca(
    tmp_path: Path,
) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(DEPLOY, overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [base], "components": [f"{base}/cert-manager"]})
    )
    out = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    certificate = one(docs, "Certificate")
    assert certificate["metadata"]["namespace"] == NAMESPACE
    assert certificate["spec"]["dnsNames"] == tls.service_dns_names(server.SERVICE_NAME, NAMESPACE)
    vwc = one(docs, "ValidatingWebhookConfiguration")
    assert vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{certificate['metadata']['name']}"
    )
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "POD_NAMESPACE" in env  # merged, not replaced
    cert_dir = env["IMAGE_ANCESTRY_WEBHOOK_CERT_DIR"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == cert_dir]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    # The operator's generated Secret is another one: it never overwrites cert-manager's.
    assert certificate["spec"]["secretName"] != tls.SECRET_NAME


@pytest.mark.cluster
def test_the_operator_client_authenticates_with_a_service_account_token(
    cluster: TestCluster, installed: None, tmp_path: Path
) -> None:
    """In a pod the operator has a token, not a certificate: the in-cluster loader and a
    token kubeconfig store it the same way."""
    import asyncio

    from image_ancestry.operator.kube import KubeClient, load_credentials

    token = cluster.kubectl("create", "token", "image-ancestry", "-n", NAMESPACE).strip()
    admin = yaml.safe_load(cluster.kubeconfig_path.read_text())
    admin["users"] = [{"name": "sa", "user": {"token": token}}]
    for context in admin["contexts"]:
        context["context"]["user"] = "sa"
    path = tmp_path / "token.kubeconfig"
    path.write_text(yaml.safe_dump(admin))

    async def whoami() -> str:
        async with KubeClient(load_credentials(str(path))) as client:
            review = await client.request(
                "POST",
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            )
            return str(review["status"]["userInfo"]["username"])

    assert asyncio.run(whoami()) == SA_USER


@pytest.mark.cluster
def test_a_local_operator_that_may_not_register_keeps_running_and_says_so(
    cluster: TestCluster, installed: None, tmp_path: Path
) -> None:
    """deploy/'s RBAC allows no URL webhook of one's own: the local registration is refused,
    and the operator goes on (statuses do not depend on the webhook) while it retries."""
    if cluster.local is None:
        pytest.skip("needs the local control plane's CA to authenticate as the ServiceAccount")
    kubeconfig = _service_account_kubeconfig(cluster, tmp_path)
    log_path = tmp_path / "operator.log"
    args = ["--namespace", NAMESPACE, "--kubeconfig", str(kubeconfig), "--identity",
            "local-refused", "--webhook", "local"]  # fmt: skip
    with running_operator(args, log_path) as proc:

        def refused() -> bool:
            assert proc.poll() is None, log_path.read_text()[-4000:]
            return "could not register the validating webhook" in log_path.read_text()

        wait_for(refused, timeout=60, what="the refused registration to be logged")
        assert proc.poll() is None
