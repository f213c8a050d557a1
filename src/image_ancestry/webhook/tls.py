"""Serving certificates for the webhook: never plain HTTP.

Three sources, one per way of running:

- **local** (``image-ancestry run`` against an API server on this host): a CA and a
  certificate for ``127.0.0.1`` and ``localhost`` made at start in a private temp directory;
  the CA goes into the URL webhook's ``caBundle``.
- **files** (``--webhook-cert-dir``, e.g. a cert-manager Secret mounted into the pod):
  ``tls.crt`` and ``tls.key``, re-read by kopf's server when they change; the caBundle is
  someone else's job (cert-manager's CA injector).
- **generated in the cluster** (the default of ``deploy/``): the Secret
  ``image-ancestry-webhook-tls`` holds a CA and a certificate for the webhook Service's DNS
  names. The first replica to start makes it (create is atomic, so two replicas starting at
  once agree on one), every replica serves it, and the CA is patched into the
  ValidatingWebhookConfiguration's ``caBundle``. A certificate within
  :data:`RENEW_BEFORE` of expiry (or for other names) is replaced; the bundle keeps the
  previous CA while it is valid, so replicas still serving the old certificate stay trusted.
"""

from __future__ import annotations

import base64
import datetime
import logging
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from image_ancestry import pki

if TYPE_CHECKING:
    from image_ancestry.operator.kube import KubeClient

logger = logging.getLogger(__name__)

SECRET_NAME = "image-ancestry-webhook-tls"
RENEW_BEFORE = datetime.timedelta(days=30)
LOCAL_HOSTS = ("localhost",)
LOCAL_IPS = ("127.0.0.1",)
WEBHOOKS_PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"


@dataclass(frozen=True)
class ServingCert:
    """Files kopf's server loads, and the CA bundle the API server must trust."""

    cert_path: Path
    key_path: Path
    ca_bundle: bytes


def private_dir(prefix: str = "image-ancestry-webhook-") -> Path:
    """A fresh directory only this user can read (under ``$TMPDIR``: an emptyDir in the pod)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def write_pair(directory: Path, pair: pki.KeyPair) -> tuple[Path, Path]:
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    pair.write(cert_path, key_path)
    return cert_path, key_path


def local_cert(directory: Path) -> ServingCert:
    """A new CA and a certificate for loopback, written into ``directory``."""
    ca = pki.make_ca("image-ancestry-webhook-local-ca")
    serving = pki.make_serving_cert(
        ca, "image-ancestry-webhook", list(LOCAL_HOSTS), list(LOCAL_IPS)
    )
    cert_path, key_path = write_pair(directory, serving)
    return ServingCert(cert_path, key_path, ca.cert_pem)


def files_cert(directory: Path) -> ServingCert:
    """``tls.crt``/``tls.key`` (and ``ca.crt`` if present) from a mounted Secret."""
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    for path in (cert_path, key_path):
        if not path.is_file():
            raise FileNotFoundError(f"webhook certificate directory {directory}: no {path.name}")
    ca_path = directory / "ca.crt"
    bundle = ca_path.read_bytes() if ca_path.is_file() else cert_path.read_bytes()
    return ServingCert(cert_path, key_path, bundle)


def service_dns_names(service: str, namespace: str) -> list[str]:
    """The names the API server may use for a Service (it uses ``<svc>.<ns>.svc``)."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any) -> bytes:
    return base64.b64decode(value) if isinstance(value, str) else b""


def _load_certs(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        return []


def _valid_for(
    cert: x509.Certificate,
    now: datetime.datetime,
    dns_names: Iterable[str],
    margin: datetime.timedelta,
) -> bool:
    if not (cert.not_valid_before_utc <= now and now + margin < cert.not_valid_after_utc):
        return False
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    names = set(sans.value.get_values_for_type(x509.DNSName))
    return set(dns_names) <= names


def _spki(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def secret_usable(
    data: dict[str, Any], dns_names: Iterable[str], now: datetime.datetime | None = None
) -> bool:
    """Whether a Secret's ``data`` holds a serving pair for ``dns_names`` that is not near expiry,
    whose key matches its certificate, signed by a CA in ``ca.crt``."""
    now = now or datetime.datetime.now(datetime.UTC)
    certs = _load_certs(_unb64(data.get("tls.crt")))
    cas = _load_certs(_unb64(data.get("ca.crt")))
    if not certs or not cas:
        return False
    leaf = certs[0]
    try:
        key = serialization.load_pem_private_key(_unb64(data.get("tls.key")), password=None)
    except (ValueError, TypeError):
        return False
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        return False
    if not _valid_for(leaf, now, dns_names, RENEW_BEFORE):
        return False
    for ca in cas:
        try:
            leaf.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return True
    return False


def new_secret_data(dns_names: list[str], previous_ca: bytes = b"") -> dict[str, str]:
    """A new CA and serving pair; ``ca.crt`` keeps ``previous_ca``'s still-valid certificates."""
    ca = pki.make_ca("image-ancestry-webhook-ca")
    # CN is at most 64 characters: the bare Service name (a DNS label); SANs carry the rest.
    serving = pki.make_serving_cert(ca, dns_names[0][:64], dns_names, [])
    now = datetime.datetime.now(datetime.UTC)
    kept = [c for c in _load_certs(previous_ca) if c.not_valid_after_utc > now]
    bundle = ca.cert_pem + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in kept[:1])
    return {
        "tls.crt": b64(serving.cert_pem),
        "tls.key": b64(serving.key_pem),
        "ca.crt": b64(bundle),
    }


async def ensure_secret(
    client: KubeClient, namespace: str, dns_names: list[str], name: str = SECRET_NAME
) -> dict[str, bytes]:
    """The Secret's serving pair and CA bundle, made or renewed when needed.

    Races between replicas are settled by the API server: a create that finds the Secret
    there (409) or an update on a stale resourceVersion (409) starts over by reading it.
    """
    from image_ancestry.operator.kube import ApiError

    path = f"/api/v1/namespaces/{namespace}/secrets"
    for _ in range(5):
        try:
            secret = await client.request("GET", f"{path}/{name}")
        except ApiError as exc:
            if exc.status != 404:
                raise
            secret = None
        data = (secret or {}).get("data") or {}
        if secret is not None and secret_usable(data, dns_names):
            return {key: _unb64(data.get(key)) for key in ("tls.crt", "tls.key", "ca.crt")}
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {
                    "app.kubernetes.io/name": "image-ancestry",
                    "app.kubernetes.io/component": "webhook",
                },
            },
            "data": new_secret_data(dns_names, _unb64(data.get("ca.crt"))),
        }
        try:
            if secret is None:
                logger.info("creating the webhook certificate in Secret %s/%s", namespace, name)
                await client.request("POST", path, body=body)
            else:
                logger.info("renewing the webhook certificate in Secret %s/%s", namespace, name)
                body["metadata"]["resourceVersion"] = secret["metadata"]["resourceVersion"]
                await client.request("PUT", f"{path}/{name}", body=body)
        except ApiError as exc:
            if exc.status != 409:
                raise
    raise RuntimeError(f"Secret {namespace}/{name}: could not agree on a certificate")


async def patch_ca_bundle(
    client: KubeClient, configuration: str, service: str, namespace: str, ca_bundle: bytes
) -> bool:
    """Put ``ca_bundle`` into the webhooks of ``configuration`` that call ``service``.

    Returns whether anything changed. Only webhooks whose ``clientConfig.service`` is ours
    are touched; the update carries the resourceVersion read, so a concurrent edit wins and
    this starts over.
    """
    from image_ancestry.operator.kube import ApiError

    encoded = b64(ca_bundle)
    for _ in range(5):
        obj = await client.request("GET", f"{WEBHOOKS_PATH}/{configuration}")
        changed = False
        for hook in obj.get("webhooks") or []:
            ref = (hook.get("clientConfig") or {}).get("service") or {}
            ours = ref.get("name") == service and ref.get("namespace") == namespace
            if ours and hook["clientConfig"].get("caBundle") != encoded:
                hook["clientConfig"]["caBundle"] = encoded
                changed = True
        if not changed:
            return False
        try:
            await client.request("PUT", f"{WEBHOOKS_PATH}/{configuration}", body=obj)
        except ApiError as exc:
            if exc.status != 409:
                raise
            continue
        logger.info("patched the caBundle of ValidatingWebhookConfiguration %s", configuration)
        return True
    raise RuntimeError(f"ValidatingWebhookConfiguration {configuration}: conflicting updates")
