"""A real registry for the importer's tests: Debian's ``docker-registry`` on loopback.

``LocalRegistry`` starts ``docker-registry serve`` on a free 127.0.0.1 port, with no auth,
with htpasswd basic auth, or with bearer tokens from :class:`TokenServer` (a small token
service here, signing real JWTs that the registry verifies against our certificate). Images
are loaded with ``skopeo copy``; :meth:`LocalRegistry.put_manifest` pushes raw blobs and
manifests over the distribution API, for content skopeo would not copy (artifacts).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

USER = "puller"
PASSWORD = "s3cret-pw"
SERVICE = "test-registry"
ISSUER = "test-token-issuer"


def need(*tools: str) -> None:
    import pytest

    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (make test installs hack/system-deps.txt)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues registry bearer tokens to ``USER``/``PASSWORD`` only, over loopback HTTP."""

    def __init__(self, directory: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = directory / "token-ca.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._der = self.cert.public_bytes(serialization.Encoding.DER)
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                query = parse_qs(urlsplit(self.path).query)
                body = json.dumps({"token": server.token(query.get("scope", []))}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def token(self, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": repo, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self._der).decode()]}
        claims = {
            "iss": ISSUER,
            "sub": USER,
            "aud": SERVICE,
            "exp": now + 600,
            "nbf": now - 60,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class LocalRegistry:
    directory: Path
    auth: str | None = None  # None, "htpasswd" or "token"
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    token_server: TokenServer | None = None
    log: Path = field(init=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> LocalRegistry:
        need("docker-registry", "skopeo")
        self.port = free_port()
        storage = self.directory / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.host},
        }
        if self.auth == "htpasswd":
            need("htpasswd")
            htpasswd = self.directory / "htpasswd"
            subprocess.run(
                ["htpasswd", "-Bbc", str(htpasswd), USER, PASSWORD],
                check=True,
                capture_output=True,
            )
            config["auth"] = {"htpasswd": {"realm": "test-realm", "path": str(htpasswd)}}
        elif self.auth == "token":
            self.token_server = TokenServer(self.directory)
            config["auth"] = {
                "token": {
                    "realm": self.token_server.realm,
                    "service": SERVICE,
                    "issuer": ISSUER,
                    "rootcertbundle": str(self.token_server.bundle),
                }
            }
        config_path = self.directory / "config.yml"
        config_path.write_text(yaml.safe_dump(config, default_flow_style=False))
        self.log = self.directory / "registry.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["docker-registry", "serve", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # docker-registry reads REGISTRY_* variables as configuration overrides, and
                # the importer's REGISTRY_AUTH_FILE would become "auth: file".
                env={k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")},
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        # Readiness is a condition polled a bounded number of times, not a timed assert.
        for _ in range(300):
            if self.process is not None and self.process.poll() is not None:
                break
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2).close()
                return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.token_server is not None:
            self.token_server.close()

    def creds(self) -> list[str]:
        return ["--dest-creds", f"{USER}:{PASSWORD}"] if self.auth else []

    def copy(self, layout: Path, tag: str, repository: str, *, all_platforms: bool = False) -> None:
        """``skopeo copy oci:LAYOUT:TAG docker://HOST/REPOSITORY:TAG``."""
        command = [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            *self.creds(),
            *(["--all"] if all_platforms else []),
            # Keep the manifests byte for byte, so their digests are the ones we built.
            "--preserve-digests",
            f"oci:{layout}:{tag}",
            f"docker://{self.host}/{repository}:{tag}",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"skopeo copy failed: {result.stderr}")

    def put_manifest(
        self, repository: str, tag: str, blobs: dict[str, bytes], manifest: bytes, media_type: str
    ) -> None:
        """Push blobs and a manifest over the distribution API (anonymous registries only)."""
        assert self.auth is None
        base = f"http://{self.host}/v2/{repository}"
        for digest, data in blobs.items():
            start = urllib.request.Request(f"{base}/blobs/uploads/", method="POST", data=b"")
            with urllib.request.urlopen(start, timeout=10) as response:
                location = response.headers["Location"]
            if location.startswith("/"):
                location = f"http://{self.host}{location}"
            separator = "&" if "?" in location else "?"
            put = urllib.request.Request(
                f"{location}{separator}digest={digest}",
                method="PUT",
                data=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            urllib.request.urlopen(put, timeout=10).close()
        put = urllib.request.Request(
            f"{base}/manifests/{tag}",
            method="PUT",
            data=manifest,
            headers={"Content-Type": media_type},
        )
        urllib.request.urlopen(put, timeout=10).close()
