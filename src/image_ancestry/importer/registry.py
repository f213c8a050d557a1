"""Registries over the OCI distribution API: ``docker://HOST/REPO:TAG`` or ``@DIGEST``.

Standard library only (urllib). Authentication follows the registry's ``WWW-Authenticate``
challenge: anonymous first; ``Basic`` with the stored credentials; ``Bearer`` by asking the
challenge's token realm for a pull token (with the stored credentials when there are any).
Credentials come from ``REGISTRY_AUTH_FILE`` (the containers ``auth.json`` format) when it is
set, else from ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``; only the ``auth``
(or ``username``/``password``) fields are read, not credential helpers.

HTTPS always, except with ``--insecure`` for a loopback registry (``localhost``, 127.0.0.0/8,
``[::1]``), which is then spoken to in plain HTTP. Loopback traffic never goes through a proxy.
Manifests are bounded to 4 MiB and configs to 8 MiB, and every body is checked against its
digest; layers are not downloaded.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

from image_ancestry.importer.errors import (
    INVALID,
    NOT_FOUND,
    UNAUTHORIZED,
    UNREACHABLE,
    ImportFailure,
)
from image_ancestry.importer.images import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    Descriptor,
    ImportedImage,
    Template,
    check_limit,
    checked_digest,
    resolve,
    verify,
)
from image_ancestry.importer.sources import (
    DOCKER_HUB,
    RegistrySource,
    is_loopback_host,
)

ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
MAX_TOKEN_BYTES = 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024
DEFAULT_TIMEOUT = 30.0
USER_AGENT = "image-ancestry-import"
_CHALLENGE_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def auth_file_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("REGISTRY_AUTH_FILE"):
        return Path(env["REGISTRY_AUTH_FILE"])
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    return Path(env.get("HOME") or Path.home()) / ".docker" / "config.json"


def _auth_key(key: str) -> str:
    key = re.sub(r"^https?://", "", key).rstrip("/")
    for suffix in ("/v1", "/v2"):
        key = key.removesuffix(suffix)
    if key in ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"):
        return DOCKER_HUB
    return key


@dataclass
class AuthConfig:
    """The ``auths`` section of a Docker or containers auth file, by registry host."""

    path: Path | None = None
    entries: dict[str, Credentials] = field(default_factory=dict)
    helpers: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, path: Path | None = None) -> AuthConfig:
        path = path or auth_file_path()
        try:
            obj = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path=path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read credentials from {path}: {exc}") from None
        config = cls(path=path)
        if not isinstance(obj, dict):
            raise ValueError(f"cannot read credentials from {path}: not a JSON object")
        auths = obj.get("auths")
        for key, value in auths.items() if isinstance(auths, dict) else ():
            if not isinstance(value, dict):
                continue
            creds = _credentials(value)
            if creds is not None:
                config.entries[_auth_key(str(key))] = creds
        helpers = obj.get("credHelpers")
        if isinstance(helpers, dict):
            config.helpers.update(_auth_key(str(k)) for k in helpers)
        if obj.get("credsStore"):
            config.helpers.add("*")
        return config

    def lookup(self, host: str, repository: str) -> Credentials | None:
        """The most specific entry: ``host/repo/path`` ... ``host``."""
        parts = repository.split("/")
        for n in range(len(parts), -1, -1):
            key = "/".join([host, *parts[:n]])
            if key in self.entries:
                return self.entries[key]
        return None

    def hint(self, host: str) -> str:
        where = f" in {self.path}" if self.path else ""
        if host in self.helpers or "*" in self.helpers:
            return f"; credential helpers are not supported, put an auths entry{where}"
        return f"; no credentials for {host}{where}"


def _credentials(value: dict[str, Any]) -> Credentials | None:
    auth = value.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return Credentials(user, password) if sep else None
    username, secret = value.get("username"), value.get("password")
    if isinstance(username, str) and isinstance(secret, str) and username:
        return Credentials(username, secret)
    return None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) or m.group(3) or "" for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), params


@dataclass
class _Response:
    status: int
    headers: Message
    body: bytes


class Registry:
    """One registry host: its scheme, its opener and the authorization it has earned."""

    def __init__(
        self,
        host: str,
        *,
        insecure: bool,
        auth: AuthConfig,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.host = host  # as written in the reference, docker.io for Docker Hub
        self.api_host = "registry-1.docker.io" if host == DOCKER_HUB else host
        self.loopback = is_loopback_host(self.api_host)
        self.scheme = "http" if insecure and self.loopback else "https"
        self.base = f"{self.scheme}://{self.api_host}"
        self.auth = auth
        self.timeout = timeout
        handlers: list[urllib.request.BaseHandler] = []
        if self.loopback:
            handlers.append(urllib.request.ProxyHandler({}))
        self.opener = urllib.request.build_opener(*handlers)
        self.authorization: dict[str, str] = {}  # repository -> Authorization header

    # -- HTTP ----------------------------------------------------------------------------

    def _send(
        self, label: str, url: str, headers: Mapping[str, str], limit: int, what: str
    ) -> _Response:
        request = urllib.request.Request(url, method="GET")
        request.add_header("User-Agent", USER_AGENT)
        for key, value in headers.items():
            if key == "Authorization":
                request.add_unredirected_header(key, value)  # never sent on to a redirect
            else:
                request.add_header(key, value)
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                return _Response(
                    response.status, response.headers, _read(label, response, limit, what)
                )
        except urllib.error.HTTPError as exc:
            body = exc.read(MAX_ERROR_BYTES) if exc.fp is not None else b""
            return _Response(exc.code, exc.headers, body)
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLError):
                hint = (
                    " (a plain-HTTP registry? --insecure allows that for loopback registries)"
                    if self.loopback
                    else ""
                )
                raise ImportFailure(
                    label, UNREACHABLE, f"TLS with {self.base} failed: {reason}{hint}"
                ) from None
            text = getattr(reason, "strerror", None) or str(reason)
            raise ImportFailure(
                label, UNREACHABLE, f"cannot connect to {self.base}: {text}"
            ) from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, short reads
            raise ImportFailure(
                label, UNREACHABLE, f"{self.base}: {type(exc).__name__}: {exc}"
            ) from None

    def get(
        self,
        source: RegistrySource,
        path: str,
        *,
        limit: int,
        what: str,
        accept: str | None = None,
    ) -> _Response:
        """GET ``/v2/REPO/PATH``, answering one authentication challenge."""
        label = source.text
        repository = source.repository
        url = f"{self.base}/v2/{repository}/{path}"
        headers = {"Accept": accept} if accept else {}
        authorization = self.authorization.get(repository)
        if authorization:
            headers["Authorization"] = authorization
        response = self._send(label, url, headers, limit, what)
        if response.status == 401:
            challenge = response.headers.get("WWW-Authenticate", "")
            new = self._authorize(label, repository, challenge)
            if new is not None and new != authorization:
                self.authorization[repository] = new
                headers["Authorization"] = new
                response = self._send(label, url, headers, limit, what)
            if response.status == 401:
                creds = self.auth.lookup(self.host, repository)
                refused = (
                    f"the registry refused the credentials for {self.host}"
                    if creds is not None
                    else f"the registry requires credentials{self.auth.hint(self.host)}"
                )
                raise ImportFailure(label, UNAUTHORIZED, f"{what}: {refused}")
        if response.status == 403:
            raise ImportFailure(label, UNAUTHORIZED, f"{what}: access denied{_errors(response)}")
        if response.status == 404:
            raise ImportFailure(label, NOT_FOUND, f"{what}{_errors(response) or ': HTTP 404'}")
        if response.status != 200:
            raise ImportFailure(
                label,
                UNREACHABLE,
                f"{what}: the registry answered HTTP {response.status}{_errors(response)}",
            )
        return response

    def _authorize(self, label: str, repository: str, challenge: str) -> str | None:
        scheme, params = parse_challenge(challenge)
        creds = self.auth.lookup(self.host, repository)
        if scheme == "basic":
            return creds.basic() if creds is not None else None
        if scheme != "bearer" or not params.get("realm"):
            return None
        realm = params["realm"]
        parsed = urllib.parse.urlsplit(realm)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ImportFailure(label, UNAUTHORIZED, f"token realm {realm!r} is not a URL")
        if parsed.scheme == "http" and not (
            self.scheme == "http" and is_loopback_host(parsed.netloc)
        ):
            raise ImportFailure(
                label, UNAUTHORIZED, f"token realm {realm!r} is plain HTTP off loopback: refused"
            )
        query = {"scope": params.get("scope") or f"repository:{repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        separator = "&" if parsed.query else "?"
        url = f"{realm}{separator}{urllib.parse.urlencode(query)}"
        headers = {"Authorization": creds.basic()} if creds is not None else {}
        if is_loopback_host(parsed.netloc) != self.loopback:
            raise ImportFailure(
                label, UNAUTHORIZED, f"token realm {realm!r} is not on the registry's network"
            )
        response = self._send(label, url, headers, MAX_TOKEN_BYTES, "token")
        if response.status in (401, 403):
            detail = (
                f"the token service refused the credentials for {self.host}"
                if creds is not None
                else f"the token service requires credentials{self.auth.hint(self.host)}"
            )
            raise ImportFailure(label, UNAUTHORIZED, detail)
        if response.status != 200:
            raise ImportFailure(
                label, UNREACHABLE, f"token service {realm} answered HTTP {response.status}"
            )
        try:
            obj = json.loads(response.body)
        except ValueError:
            obj = None
        token = (obj.get("token") or obj.get("access_token")) if isinstance(obj, dict) else None
        if not isinstance(token, str) or not token:
            raise ImportFailure(label, UNAUTHORIZED, f"token service {realm} gave no token")
        return f"Bearer {token}"


def _read(label: str, response: Any, limit: int, what: str) -> bytes:
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ImportFailure(
            label, INVALID, f"{what} is {length} bytes, over the {limit}-byte limit"
        )
    data: bytes = response.read(limit + 1)
    if len(data) > limit:
        raise ImportFailure(label, INVALID, f"{what} is over the {limit}-byte limit")
    return data


def _errors(response: _Response) -> str:
    """The distribution API's error codes and messages, as ``: CODE message; ...``."""
    try:
        obj = json.loads(response.body)
    except ValueError:
        return ""
    errors = obj.get("errors") if isinstance(obj, dict) else None
    if not isinstance(errors, list):
        return ""
    parts = [
        f"{e.get('code', '')} {e.get('message', '')}".strip() for e in errors if isinstance(e, dict)
    ]
    return (": " + "; ".join(parts)) if parts else ""


class RegistryStore:
    """A repository's manifests and blobs, as a :class:`~images.BlobStore`."""

    def __init__(self, registry: Registry, source: RegistrySource) -> None:
        self.registry = registry
        self.source = source
        self.label = source.text
        self.manifests: dict[str, bytes] = {}

    def fetch(self, descriptor: Descriptor, *, limit: int, manifest: bool = False) -> bytes:
        check_limit(self.label, descriptor, limit, "manifest" if manifest else "blob")
        if manifest and descriptor.digest in self.manifests:
            data = self.manifests[descriptor.digest]
        else:
            kind = "manifests" if manifest else "blobs"
            what = f"{'manifest' if manifest else 'blob'} {descriptor.digest}"
            response = self.registry.get(
                self.source,
                f"{kind}/{descriptor.digest}",
                limit=limit,
                what=what,
                accept=ACCEPT if manifest else None,
            )
            data = response.body
        verify(self.label, descriptor, data, "manifest" if manifest else "blob")
        return data

    def check(self, descriptor: Descriptor) -> None:
        """The registry accepted the manifest, so its layers are there."""

    def top(self) -> Descriptor:
        """Fetch the manifest the reference names; its digest is computed from the bytes."""
        source = self.source
        reference = source.manifest_ref
        what = f"manifest {reference!r} of {source.host}/{source.repository}"
        response = self.registry.get(
            source, f"manifests/{reference}", limit=MAX_MANIFEST_BYTES, what=what, accept=ACCEPT
        )
        body = response.body
        algorithm = source.digest.partition(":")[0] if source.digest else "sha256"
        if algorithm not in ("sha256", "sha512"):
            raise ImportFailure(self.label, INVALID, f"unsupported digest algorithm {algorithm}")
        digest = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
        if source.digest is not None and digest != source.digest:
            raise ImportFailure(
                self.label, INVALID, f"the registry sent a manifest with digest {digest}"
            )
        header = response.headers.get("Docker-Content-Digest")
        if header and header.startswith(f"{algorithm}:") and header != digest:
            raise ImportFailure(
                self.label,
                INVALID,
                f"the registry says the manifest is {header}, its bytes are {digest}",
            )
        content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip()
        digest = checked_digest(self.label, digest, "manifest")
        self.manifests[digest] = body
        return Descriptor(media_type=content_type, digest=digest, size=len(body))


def read_registry(
    source: RegistrySource, registry: Registry, *, platform: str | None
) -> list[ImportedImage]:
    store = RegistryStore(registry, source)
    top = store.top()
    components = (source.host, *source.repository.split("/"))
    if source.host == DOCKER_HUB and source.repository.startswith("library/"):
        components = (source.host, *source.repository.split("/")[1:])
    template = Template(components=components, tag=source.tag, image=source.reference)
    return resolve(store, top, template, platform=platform)
