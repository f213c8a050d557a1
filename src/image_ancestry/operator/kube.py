"""A small asyncio Kubernetes client for what the operator writes and reads besides kopf.

kopf owns the ContainerImage watch; this client does the rest: status patches, Events, the
Lease, the ConfigMap watch and metadata-only listings. Credentials come from the same
kubeconfig (or the in-cluster service account) through the ``kubernetes`` package's loader,
and are handed to kopf too (:meth:`KubeClient.connection_info`), so both talk to the same
server as the same user.

Every request is retried with exponential backoff and jitter on connection errors, timeouts,
429 (honouring ``Retry-After``) and 5xx; other statuses raise :class:`ApiError` at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
MERGE_PATCH = "application/merge-patch+json"
METADATA_LIST_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


class ApiError(Exception):
    """A request the API server answered with a non-retryable (or finally failed) status."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        self.status = status
        self.method = method
        self.path = path
        self.body = body
        try:
            decoded = json.loads(body)
            message, reason = decoded.get("message", body), decoded.get("reason", "")
        except (ValueError, AttributeError):
            message, reason = body, ""
        self.message = str(message)  # the API server's Status message (else the body)
        self.reason = str(reason or "")  # its Status reason, e.g. Invalid, Forbidden
        super().__init__(f"{method} {path}: {status} {self.message[:500]}")

    @property
    def refused(self) -> bool:
        """Whether the server refused the request itself (a 4xx that no retry of the same
        request can change: not 404 Not Found, 409 Conflict or 429 Too Many Requests)."""
        return 400 <= self.status < 500 and self.status not in (404, 409, 429)


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to log in, as the kubernetes loader found them."""

    server: str
    ca_path: str | None
    verify: bool
    cert_path: str | None
    key_path: str | None
    token: str | None
    token_path: str | None = None  # in-cluster: re-read, the kubelet rotates it

    def current_token(self) -> str | None:
        if self.token_path:
            try:
                return Path(self.token_path).read_text().strip()
            except OSError:
                return self.token
        return self.token


def load_credentials(kubeconfig: str | None = None) -> Credentials:
    """Credentials from ``kubeconfig``, else ``$KUBECONFIG`` / ``~/.kube/config``, else the
    in-cluster service account."""
    from kubernetes import client, config

    cfg = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    token_path: str | None = None
    if kubeconfig or Path(path.split(os.pathsep)[0]).is_file():
        config.load_kube_config(config_file=path, client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        token_path = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    # The loader keeps "Bearer <token>" under "BearerToken" (kubernetes >= 30), under
    # "authorization" in older releases.
    keys = cfg.api_key or {}
    auth = keys.get("BearerToken") or keys.get("authorization")
    token: str | None = None
    if auth:
        scheme, _, value = str(auth).partition(" ")
        token = value if value and scheme.lower() == "bearer" else str(auth)
    return Credentials(
        server=str(cfg.host).rstrip("/"),
        ca_path=cfg.ssl_ca_cert or None,
        verify=bool(cfg.verify_ssl),
        cert_path=cfg.cert_file or None,
        key_path=cfg.key_file or None,
        token=token,
        token_path=token_path,
    )


def _ssl_context(creds: Credentials) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=creds.ca_path)
    if not creds.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if creds.cert_path:
        context.load_cert_chain(creds.cert_path, creds.key_path)
    return context


def backoff_delays(first: float = 0.5, factor: float = 2.0, cap: float = 30.0) -> Iterator[float]:
    """Exponential delays with jitter (each in [d/2, d]), forever."""
    delay = first
    while True:
        yield random.uniform(delay / 2, delay)
        delay = min(cap, delay * factor)


class KubeClient:
    """An aiohttp session bound to one API server, with retries."""

    def __init__(
        self,
        creds: Credentials,
        *,
        attempts: int = 8,
        request_timeout: float = 30.0,
        connections: int = 64,
    ) -> None:
        self.creds = creds
        self.attempts = attempts
        self.request_timeout = request_timeout
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=_ssl_context(self.creds), limit=self._connections)
            self._session = aiohttp.ClientSession(
                base_url=None, connector=connector, raise_for_status=False
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def connection_info(self) -> Any:
        """The same credentials as a ``kopf.ConnectionInfo`` for kopf's login handler."""
        import kopf

        token = self.creds.current_token()
        return kopf.ConnectionInfo(
            server=self.creds.server,
            ca_path=self.creds.ca_path,
            insecure=not self.creds.verify,
            certificate_path=self.creds.cert_path,
            private_key_path=self.creds.key_path,
            scheme="Bearer" if token else None,
            token=token,
        )

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "image-ancestry-operator"}
        token = self.creds.current_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if extra:
            headers.update(extra)
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str | None = None,
        attempts: int | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One API call, retried on transient failures; returns the decoded JSON body."""
        url = self.creds.server + path
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        extra = {"Content-Type": content_type} if data is not None else {}
        if accept:
            extra["Accept"] = accept
        delays = backoff_delays()
        tries = attempts if attempts is not None else self.attempts
        for attempt in range(1, tries + 1):
            delay = next(delays)
            try:
                async with self.session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    headers=self._headers(extra),
                    timeout=aiohttp.ClientTimeout(total=timeout or self.request_timeout),
                ) as response:
                    text = await response.text()
                    if response.status < 300:
                        return json.loads(text) if text else None
                    if response.status not in RETRYABLE_STATUSES or attempt == tries:
                        raise ApiError(response.status, method, path, text)
                    retry_after = response.headers.get("Retry-After")
                    if retry_after and retry_after.isdigit():
                        delay = max(delay, min(float(retry_after), 60.0))
                    logger.debug(
                        "%s %s: %s, retrying in %.1fs", method, path, response.status, delay
                    )
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt == tries:
                    raise
                logger.debug("%s %s: %r, retrying in %.1fs", method, path, exc, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def stream(
        self,
        path: str,
        *,
        params: Mapping[str, str],
        client_timeout: float,
    ) -> AsyncIterator[dict[str, Any]]:
        """A watch: yields decoded events until the server or ``client_timeout`` ends it."""
        async with self.session.get(
            self.creds.server + path,
            params=params,
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=client_timeout, sock_connect=10),
        ) as response:
            if response.status >= 300:
                raise ApiError(response.status, "WATCH", path, await response.text())
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)

    # --- the calls the operator makes ------------------------------------------------------

    async def patch_status(
        self, group_version_path: str, namespace: str, plural: str, name: str, patch: Any
    ) -> Any:
        path = f"{group_version_path}/namespaces/{namespace}/{plural}/{name}/status"
        return await self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def list_metadata(self, path: str, chunk: int = 1000) -> tuple[list[dict[str, Any]], str]:
        """Every object's metadata at ``path`` (a collection URL), in chunks, and the list's
        resourceVersion."""
        items: list[dict[str, Any]] = []
        params = {"limit": str(chunk)}
        while True:
            page = await self.request("GET", path, params=params, accept=METADATA_LIST_ACCEPT)
            items.extend(item["metadata"] for item in page.get("items") or [])
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion", ""))
            params = {"limit": str(chunk), "continue": token}

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> Any:
        return await self.request(
            "POST", f"/api/v1/namespaces/{namespace}/events", body=event, attempts=3
        )
