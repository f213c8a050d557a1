"""The validating webhook inside the operator process: kopf's admission server, our TLS.

kopf serves the HTTPS endpoint (``kopf.WebhookServer``) and calls the ``@kopf.on.validate``
handler this module registers; :func:`~image_ancestry.webhook.decisions.decide` answers.
The webhook configuration is ours, not kopf's ``settings.admission.managed`` (which writes
``timeoutSeconds: 30`` and every operation): one webhook, CREATE and UPDATE of
``containerimages`` only (not ``/status``: the operator's status writes never wait for it),
``failurePolicy: Fail``, a 5 s timeout, ``sideEffects: None``.

Modes (:func:`choose_mode`):

- ``local``: the API server is on this host (the local control plane). The endpoint listens
  on ``127.0.0.1`` with a certificate made at start, and the URL webhook
  ``image-ancestry-local-<namespace>`` is registered automatically. Replicas of one namespace
  share it: one takes it when it is absent or its endpoint does not answer, re-checked every
  few seconds, and removes it on exit only if it is its own. Registrations of other
  namespaces whose endpoint is gone (``kill -9``) are deleted, because with
  ``failurePolicy: Fail`` they would refuse every ContainerImage write.
- ``cluster``: in a pod. The endpoint listens on ``:9443`` behind the Service
  ``image-ancestry-webhook``; the ValidatingWebhookConfiguration ``image-ancestry`` comes
  from ``deploy/``. The certificate is either mounted (``cert_dir``: cert-manager) or
  generated into a Secret shared by the replicas, whose CA is patched into that
  configuration's ``caBundle`` (:mod:`.tls`).
- ``off``: a remote API server seen from outside the cluster, which could not call back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import shutil
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from image_ancestry import GROUP, VERSION, pki
from image_ancestry.webhook import tls
from image_ancestry.webhook.config import AdminConfigWatcher
from image_ancestry.webhook.decisions import decide

logger = logging.getLogger(__name__)

PLURAL = "containerimages"
WEBHOOK_ID = "validate-containerimage"  # kopf's handler id: the last URL path segment
WEBHOOK_NAME = "containerimages.imageancestry.io"  # webhooks[].name
CONFIGURATION_NAME = "image-ancestry"  # the in-cluster ValidatingWebhookConfiguration
SERVICE_NAME = "image-ancestry-webhook"
SERVICE_PORT = 443
LISTEN_PORT = 9443
TIMEOUT_SECONDS = 5
RESYNC_SECONDS = 600.0  # in-cluster: re-read the shared Secret and re-check the caBundle
LOCAL_GUARD_SECONDS = 3.0  # local: how often a replica checks who serves the registration
LOCAL_LABEL = "imageancestry.io/local-webhook"

Mode = Literal["local", "cluster", "off"]


def choose_mode(server_url: str, in_cluster: bool) -> Mode:
    """``cluster`` in a pod, ``local`` for an API server on loopback, else ``off``."""
    if in_cluster:
        return "cluster"
    host = urllib.parse.urlsplit(server_url).hostname or ""
    if host == "localhost":
        return "local"
    try:
        return "local" if ipaddress.ip_address(host).is_loopback else "off"
    except ValueError:
        return "off"


def webhook_entry(client_config: Mapping[str, Any]) -> dict[str, Any]:
    """The one webhook of the configuration; ``deploy/webhook/`` holds the same (tested)."""
    return {
        "name": WEBHOOK_NAME,
        "clientConfig": dict(client_config),
        "rules": [
            {
                "apiGroups": [GROUP],
                "apiVersions": [VERSION],
                "operations": ["CREATE", "UPDATE"],
                "resources": [PLURAL],
                "scope": "Namespaced",
            }
        ],
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "timeoutSeconds": TIMEOUT_SECONDS,
        "admissionReviewVersions": ["v1"],
    }


def local_configuration(name: str, url: str, ca_bundle: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/name": "image-ancestry",
                "app.kubernetes.io/component": "webhook",
                LOCAL_LABEL: "true",
            },
        },
        "webhooks": [
            webhook_entry({"url": url, "caBundle": tls.b64(ca_bundle)}),
        ],
    }


WebhookFn = Callable[..., Awaitable[Any]]


class _DenialsAreNotErrors(logging.Filter):
    """kopf logs every denial as "Webhook ... failed permanently" at ERROR; a denial is the
    webhook working, so it is logged at INFO (seen with ``--verbose``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and f"Webhook {WEBHOOK_ID!r} failed" in str(record.msg):
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger("kopf").isEnabledFor(logging.INFO)
        return True


@dataclass
class WebhookOptions:
    namespace: str  # the operator's namespace: its ConfigMap, Secret and Service live there
    mode: Mode
    port: int | None = None  # local: a free port when None; cluster: LISTEN_PORT
    cert_dir: Path | None = None  # cluster: mounted tls.crt/tls.key instead of the Secret
    service: str = SERVICE_NAME
    configuration: str | None = None  # default: image-ancestry (cluster), -local-<ns> (local)

    @property
    def configuration_name(self) -> str:
        if self.configuration:
            return self.configuration
        if self.mode == "local":
            return f"{CONFIGURATION_NAME}-local-{self.namespace}"
        return CONFIGURATION_NAME


class AncestryWebhook:
    """The webhook's runtime: the admin-list watch, the kopf handler, the server, TLS.

    Use: ``register(registry)`` before kopf runs (it adds the ``@kopf.on.validate``
    handler), then ``configure(settings)`` in a startup handler (it sets
    ``settings.admission.server``).
    """

    def __init__(self, client: Any, options: WebhookOptions) -> None:
        self.client = client  # image_ancestry.operator.kube.KubeClient
        self.options = options
        self.watcher = AdminConfigWatcher(client, options.namespace)
        self._dir: Path | None = None
        self._ca_bundle: bytes | None = None  # cluster mode: the bundle last put in place

    # --- the handler ---------------------------------------------------------------------

    def register(self, registry: Any = None) -> None:
        import kopf

        kopf.on.validate(
            GROUP,
            VERSION,
            PLURAL,
            id=WEBHOOK_ID,
            operations=["CREATE", "UPDATE"],
            registry=registry,
        )(self.validate)

    async def validate(self, **kwargs: Any) -> None:
        """The ``@kopf.on.validate`` handler: kopf's keyword arguments in, a denial raised."""
        import kopf

        started = time.perf_counter()
        operation: str | None = kwargs.get("operation")
        userinfo: Mapping[str, Any] = kwargs.get("userinfo") or {}
        new: Mapping[str, Any] | None = kwargs.get("new")
        old: Mapping[str, Any] | None = kwargs.get("old")
        subresource: str | None = kwargs.get("subresource")
        warnings: list[str] = kwargs["warnings"]
        obj = dict(new) if new is not None else None
        namespace = ((obj or {}).get("metadata") or {}).get("namespace") or "default"
        request = {
            "operation": operation,
            "subResource": subresource,
            "userInfo": dict(userinfo),
            "object": obj,
            "oldObject": dict(old) if old is not None else None,
            "namespace": namespace,
        }
        decision = decide(request, self.watcher.current)
        warnings.extend(decision.warnings)
        name = ((obj or {}).get("metadata") or {}).get("name")
        logger.debug(
            "%s %s/%s by %s: %s in %.2f ms",
            operation,
            namespace,
            name,
            userinfo.get("username"),
            "allowed" if decision.allowed else f"denied ({decision.rule})",
            (time.perf_counter() - started) * 1000,
        )
        if not decision.allowed:
            raise kopf.AdmissionError(decision.message, code=decision.code)

    # --- the server ----------------------------------------------------------------------

    def configure(self, settings: Any) -> None:
        """Serve through kopf; the webhook configuration stays ours (not kopf-managed)."""
        settings.admission.server = self.serve
        settings.admission.managed = None
        objects = logging.getLogger("kopf.objects")
        if not any(isinstance(f, _DenialsAreNotErrors) for f in objects.filters):
            objects.addFilter(_DenialsAreNotErrors())

    async def serve(self, fn: WebhookFn) -> AsyncIterator[Mapping[str, Any]]:
        """kopf's ``WebhookServerProtocol``: serve ``fn`` over HTTPS, yield client configs."""
        import kopf

        self.watcher.start()
        resync: asyncio.Task[None] | None = None
        guard: asyncio.Task[None] | None = None
        url: str | None = None
        try:
            cert = await self._certificate()
            server = kopf.WebhookServer(
                addr="127.0.0.1" if self.options.mode == "local" else "0.0.0.0",
                host="127.0.0.1" if self.options.mode == "local" else None,
                port=self.options.port or (None if self.options.mode == "local" else LISTEN_PORT),
                certfile=str(cert.cert_path),
                pkeyfile=str(cert.key_path),
                cadata=cert.ca_bundle,
                file_check_interval=10.0,
            )
            if self.options.mode == "cluster" and self.options.cert_dir is None:
                resync = asyncio.get_running_loop().create_task(self._resync(cert))
            async for client_config in server(fn):
                if self.options.mode == "local":
                    url = f"{str(client_config['url']).rstrip('/')}/{WEBHOOK_ID}"
                    try:
                        await self._claim_local(url, cert.ca_bundle)
                    except Exception as exc:  # keep the operator; the guard tries again
                        logger.error("could not register the validating webhook: %s", exc)
                    if guard is None:
                        guard = asyncio.get_running_loop().create_task(
                            self._guard_local(url, cert.ca_bundle)
                        )
                    yield client_config
                else:
                    # kopf reports its listening address; the API server calls the Service.
                    yield self.service_client_config(self._ca_bundle or cert.ca_bundle)
        finally:
            for task in (resync, guard):
                if task is not None:
                    task.cancel()
            if url is not None:
                await self._release_local(url)
            await self.watcher.stop()
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)

    def service_client_config(self, ca_bundle: bytes) -> dict[str, Any]:
        """The in-cluster clientConfig: the Service in front of every replica (no handler id:
        wrappers append theirs, as to a URL)."""
        return {
            "service": {
                "name": self.options.service,
                "namespace": self.options.namespace,
                "port": SERVICE_PORT,
                "path": "",
            },
            "caBundle": tls.b64(ca_bundle),
        }

    async def _certificate(self) -> tls.ServingCert:
        if self.options.mode == "local":
            self._dir = tls.private_dir()
            return tls.local_cert(self._dir)
        if self.options.cert_dir is not None:
            return tls.files_cert(self.options.cert_dir)
        self._dir = tls.private_dir()
        return await self._sync_secret(None)

    async def _sync_secret(self, current: tls.ServingCert | None) -> tls.ServingCert:
        """Read (or make) the shared Secret, write its pair for kopf, patch the caBundle."""
        assert self._dir is not None
        names = tls.service_dns_names(self.options.service, self.options.namespace)
        data = await tls.ensure_secret(self.client, self.options.namespace, names)
        cert_path, key_path = self._dir / "tls.crt", self._dir / "tls.key"
        if current is None or cert_path.read_bytes() != data["tls.crt"]:
            # kopf's server notices the change and restarts with the new pair.
            tls.write_pair(self._dir, pki.KeyPair(data["tls.crt"], data["tls.key"]))
        try:
            await tls.patch_ca_bundle(
                self.client,
                self.options.configuration_name,
                self.options.service,
                self.options.namespace,
                data["ca.crt"],
            )
        except Exception as exc:  # keep serving; the next resync tries again
            logger.error(
                "could not put the CA into ValidatingWebhookConfiguration %s: %s",
                self.options.configuration_name,
                exc,
            )
        self._ca_bundle = data["ca.crt"]
        return tls.ServingCert(cert_path, key_path, data["ca.crt"])

    async def _resync(self, cert: tls.ServingCert) -> None:
        while True:
            await asyncio.sleep(RESYNC_SECONDS)
            try:
                cert = await self._sync_secret(cert)
            except Exception as exc:
                logger.error("webhook certificate resync failed: %s", exc)

    # --- local mode: one URL webhook, shared by every replica on this host ------------------
    #
    # Replicas started side by side (the HA tests) must not leave the API server calling a
    # dead endpoint: with failurePolicy Fail that would refuse every ContainerImage write.
    # So a replica takes the registration only when it is absent or its endpoint does not
    # answer, checks that again every few seconds, and on exit removes only its own.

    async def _get_local(self) -> dict[str, Any] | None:
        from image_ancestry.operator.kube import ApiError

        try:
            obj: dict[str, Any] = await self.client.request(
                "GET", f"{tls.WEBHOOKS_PATH}/{self.options.configuration_name}", attempts=2
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    async def _claim_local(self, url: str, ca_bundle: bytes) -> bool:
        """Register ``url`` unless a live endpoint is registered; return whether it is ours."""
        from image_ancestry.operator.kube import ApiError

        name = self.options.configuration_name
        existing = await self._get_local()
        body = local_configuration(name, url, ca_bundle)
        try:
            if existing is None:
                await self.client.request("POST", tls.WEBHOOKS_PATH, body=body)
            else:
                current = _registered_url(existing)
                if current == url:
                    return True
                if current is not None and await _answers(current):
                    return False
                body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
                await self.client.request("PUT", f"{tls.WEBHOOKS_PATH}/{name}", body=body)
        except ApiError as exc:
            if exc.status != 409:  # another replica was faster: look again next round
                raise
            return False
        logger.info("registered the validating webhook %s at %s", name, url)
        return True

    async def _guard_local(self, url: str, ca_bundle: bytes) -> None:
        while True:
            await asyncio.sleep(LOCAL_GUARD_SECONDS)
            try:
                await self._claim_local(url, ca_bundle)
                await self._sweep_local()
            except Exception as exc:
                logger.warning("checking the local webhook registration failed: %s", exc)

    async def _sweep_local(self) -> None:
        """Delete other operators' local registrations whose endpoint is gone (a ``kill -9``
        of the only operator of another namespace would otherwise block every write)."""
        listing = await self.client.request(
            "GET", tls.WEBHOOKS_PATH, params={"labelSelector": f"{LOCAL_LABEL}=true"}
        )
        for item in listing.get("items") or []:
            name = item["metadata"]["name"]
            url = _registered_url(item)
            if name == self.options.configuration_name or (url and await _answers(url)):
                continue
            await self._delete_local(item)
            logger.info("removed %s: its endpoint %s does not answer", name, url)

    async def _delete_local(self, configuration: Mapping[str, Any]) -> None:
        from image_ancestry.operator.kube import ApiError

        metadata = configuration["metadata"]
        try:
            await self.client.request(
                "DELETE",
                f"{tls.WEBHOOKS_PATH}/{metadata['name']}",
                body={"preconditions": {"resourceVersion": metadata["resourceVersion"]}},
                attempts=2,
            )
        except ApiError as exc:
            if exc.status not in (404, 409):  # gone already, or re-registered meanwhile
                raise

    async def _release_local(self, url: str) -> None:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            existing = await self._get_local()
            if existing is None or _registered_url(existing) != url:
                return
            await self._delete_local(existing)
            logger.info("removed the validating webhook %s", self.options.configuration_name)


def _registered_url(configuration: Mapping[str, Any]) -> str | None:
    for hook in configuration.get("webhooks") or []:
        url = (hook.get("clientConfig") or {}).get("url")
        if hook.get("name") == WEBHOOK_NAME and isinstance(url, str):
            return url
    return None


async def _answers(url: str) -> bool:
    """Whether something accepts TCP connections at ``url``'s host and port."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return False
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, parts.port or 443), timeout=1.0
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
