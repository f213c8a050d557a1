"""Webhook certificates: the shared Secret and the caBundle patch on the real API server,
and the local registration's life cycle with real operator processes."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509

from image_ancestry import pki
from image_ancestry.operator.kube import KubeClient, load_credentials
from image_ancestry.webhook import tls
from image_ancestry.webhook.server import webhook_entry
from tests.clusters import TestCluster
from tests.webhook.conftest import Operator, layer, manifest, start_operator, wait_for

T = TypeVar("T")


def run(cluster: TestCluster, call: Callable[[KubeClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with KubeClient(load_credentials(str(cluster.kubeconfig_path))) as client:
            return await call(client)

    return asyncio.run(main())


def _secret(cluster: TestCluster, namespace: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "secret", tls.SECRET_NAME, "-n", namespace, "-o", "json")
    obj: dict[str, Any] = json.loads(out)
    return obj


def _sans(cert_pem: bytes) -> list[str]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(ext.get_values_for_type(x509.DNSName))


NAMES = tls.service_dns_names("image-ancestry-webhook", "ia-system")


# --- pure ----------------------------------------------------------------------------------


def test_generated_secret_data_is_usable_and_checks_what_it_should() -> None:
    data = tls.new_secret_data(NAMES)
    assert tls.secret_usable(data, NAMES)
    assert not tls.secret_usable(data, [*NAMES, "other.example"])  # a name it lacks
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=340)
    assert not tls.secret_usable(data, NAMES, now=later)  # within RENEW_BEFORE of expiry
    other = tls.new_secret_data(NAMES)
    assert not tls.secret_usable({**data, "tls.key": other["tls.key"]}, NAMES)  # wrong key
    assert not tls.secret_usable({**data, "ca.crt": other["ca.crt"]}, NAMES)  # wrong CA
    assert not tls.secret_usable({}, NAMES)


def test_renewal_keeps_the_previous_ca_in_the_bundle() -> None:
    first = tls.new_secret_data(NAMES)
    renewed = tls.new_secret_data(NAMES, base64.b64decode(first["ca.crt"]))
    bundle = x509.load_pem_x509_certificates(base64.b64decode(renewed["ca.crt"]))
    assert len(bundle) == 2
    old_ca = x509.load_pem_x509_certificate(base64.b64decode(first["ca.crt"]))
    assert bundle[1] == old_ca
    assert tls.secret_usable(renewed, NAMES)


def test_local_certificate_is_for_loopback(tmp_path: Path) -> None:
    cert = tls.local_cert(tmp_path)
    assert _sans(cert.cert_path.read_bytes()) == ["localhost"]
    assert oct(cert.key_path.stat().st_mode & 0o777) == "0o600"
    leaf = x509.load_pem_x509_certificate(cert.cert_path.read_bytes())
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(cert.ca_bundle))


# --- on the API server ----------------------------------------------------------------------


@pytest.mark.cluster
def test_replicas_starting_at_once_agree_on_one_secret(
    cluster: TestCluster, namespace: str
) -> None:
    names = tls.service_dns_names("image-ancestry-webhook", namespace)

    async def four(client: KubeClient) -> list[dict[str, bytes]]:
        return list(
            await asyncio.gather(*(tls.ensure_secret(client, namespace, names) for _ in range(4)))
        )

    results = run(cluster, four)
    assert all(r == results[0] for r in results)
    stored = _secret(cluster, namespace)
    assert stored["type"] == "kubernetes.io/tls"
    assert base64.b64decode(stored["data"]["tls.crt"]) == results[0]["tls.crt"]
    assert set(_sans(results[0]["tls.crt"])) == set(names)
    # A later start reuses it.
    again = run(cluster, lambda c: tls.ensure_secret(c, namespace, names))
    assert again == results[0]


@pytest.mark.cluster
def test_a_secret_for_other_names_is_replaced(cluster: TestCluster, namespace: str) -> None:
    wrong = tls.new_secret_data(tls.service_dns_names("something-else", namespace))
    cluster.kubectl(
        "create", "-f", "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {"name": tls.SECRET_NAME, "namespace": namespace},
                "data": wrong,
            }
        ),
    )  # fmt: skip
    names = tls.service_dns_names("image-ancestry-webhook", namespace)
    data = run(cluster, lambda c: tls.ensure_secret(c, namespace, names))
    assert set(_sans(data["tls.crt"])) == set(names)
    # The old CA stays trusted next to the new one while replicas move over.
    assert base64.b64decode(wrong["ca.crt"]) in data["ca.crt"]


@pytest.mark.cluster
def test_ca_bundle_is_patched_into_our_webhooks_only(cluster: TestCluster, namespace: str) -> None:
    name = f"ca-bundle-test-{namespace}"
    ours = webhook_entry(
        {"service": {"name": "image-ancestry-webhook", "namespace": namespace, "path": "/x"}}
    )
    theirs = webhook_entry(
        {"service": {"name": "someone-else", "namespace": namespace, "path": "/y"}}
    )
    theirs["name"] = "other.example.com"
    for hook in (ours, theirs):
        # Nothing real is sent to these: no object in the cluster matches the selector.
        hook["objectSelector"] = {"matchLabels": {"ca-bundle-test": namespace}}
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [ours, theirs],
    }
    cluster.kubectl("create", "-f", "-", input=json.dumps(config))
    try:
        ca = pki.make_ca("test-ca").cert_pem

        def patch(client: KubeClient) -> Awaitable[bool]:
            return tls.patch_ca_bundle(client, name, "image-ancestry-webhook", namespace, ca)

        assert run(cluster, patch) is True
        assert run(cluster, patch) is False  # already there: no write
        got = json.loads(
            cluster.kubectl("get", "validatingwebhookconfiguration", name, "-o", "json")
        )
        bundles = {h["name"]: h["clientConfig"].get("caBundle") for h in got["webhooks"]}
        assert base64.b64decode(bundles[ours["name"]]) == ca
        assert bundles["other.example.com"] is None
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", name, check=False)


def _configuration(cluster: TestCluster, name: str) -> dict[str, Any] | None:
    out = cluster.kubectl(
        "get", "validatingwebhookconfiguration", name, "-o", "json", "--ignore-not-found"
    )
    return json.loads(out) if out.strip() else None


@pytest.mark.cluster
@pytest.mark.slow
def test_local_registration_is_removed_on_exit_and_swept_after_kill(
    cluster: TestCluster, operator: Operator, namespace: str, tmp_path: Path
) -> None:
    """A clean stop removes the operator's registration before the process exits; after a
    ``kill -9`` the registration outlives it, and a live operator (the module's) deletes it,
    so ContainerImage writes are not refused for good."""
    for n, how in enumerate(("terminate", "kill")):
        other_ns = f"{namespace[:50]}-{n}"
        cluster.kubectl("create", "namespace", other_ns)
        other = start_operator(cluster, other_ns, tmp_path / f"{how}.log")
        try:
            wait_for(
                lambda o=other: _configuration(cluster, o.configuration),  # type: ignore[misc]
                timeout=60,
                what="the second operator's registration",
            )
            if how == "terminate":
                assert other.stop() in (0, -signal.SIGTERM)
                assert _configuration(cluster, other.configuration) is None
            else:
                other.proc.send_signal(signal.SIGKILL)
                other.proc.wait(timeout=10)
                assert _configuration(cluster, other.configuration) is not None
                wait_for(
                    lambda o=other: _configuration(cluster, o.configuration) is None,  # type: ignore[misc]
                    timeout=60,
                    what="the dead registration to be swept",
                )
        finally:
            other.stop()
            cluster.kubectl("delete", "namespace", other_ns, "--wait=false", check=False)
    # Writes go through again (the module's operator still answers).
    cluster.kubectl("create", "-f", "-", input=json.dumps(manifest(namespace, "after", [layer(7)])))
