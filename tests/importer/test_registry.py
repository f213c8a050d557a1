"""A real registry (Debian's docker-registry on loopback), loaded with skopeo copy."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.importer.builders import OCI_MANIFEST, build_image
from tests.importer.conftest import Images, Result
from tests.importer.registries import PASSWORD, USER, LocalRegistry, free_port
from tests.importer.test_local_sources import assert_failed, by_name

Cli = Callable[..., Result]


def write_auth(
    path: Path, host: str, user: str = USER, password: str = PASSWORD, *, docker: bool = False
) -> Path:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    key = f"https://{host}/v1/" if docker else host
    path.write_text(json.dumps({"auths": {key: {"auth": auth}}}))
    return path


def test_anonymous_by_tag(cli: Cli, registry: LocalRegistry, images: Images) -> None:
    source = f"docker://{registry.host}/platform/base:base-1"
    (doc,) = cli("--insecure", "-n", "platform", source).docs()
    assert doc["metadata"] == {"name": "base-base-1", "namespace": "platform"}
    assert doc["spec"] == {
        "image": f"{registry.host}/platform/base:base-1",
        "digest": images.base.digest,
        "layers": images.base.diff_ids,
    }


def test_by_digest_and_layers_manifest(cli: Cli, registry: LocalRegistry, images: Images) -> None:
    source = f"docker://{registry.host}/team/app@{images.app.digest}"
    (doc,) = cli("--insecure", "--layers", "manifest", source).docs()
    assert doc["spec"]["image"] == f"{registry.host}/team/app@{images.app.digest}"
    assert doc["spec"]["digest"] == images.app.digest
    assert doc["spec"]["layers"] == images.app.layer_digests
    assert doc["metadata"]["name"] == "app-" + images.app.digest[7:19]
    assert doc["metadata"]["annotations"]["imageancestry.io/declared-base-digest"] == (
        images.base.digest
    )


def test_multi_platform_index(cli: Cli, registry: LocalRegistry, images: Images) -> None:
    source = f"docker://{registry.host}/platform/multi:multi"
    docs = by_name(cli("--insecure", source))
    assert sorted(docs) == ["multi-multi-linux-amd64", "multi-multi-linux-arm64-v8"]
    for child, name in zip(images.multi.children, sorted(docs), strict=True):
        assert docs[name]["spec"]["digest"] == child.digest
        assert docs[name]["spec"]["layers"] == child.diff_ids
        assert docs[name]["metadata"]["annotations"]["imageancestry.io/index-digest"] == (
            images.multi.digest
        )
    (doc,) = cli("--insecure", "--platform", "linux/amd64", source).docs()
    assert doc["metadata"]["name"] == "multi-multi"
    assert doc["spec"]["digest"] == images.multi.children[0].digest


def test_many_sources_one_run(cli: Cli, registry: LocalRegistry, images: Images) -> None:
    sources = [
        f"docker://{registry.host}/platform/base:base-1",
        f"docker://{registry.host}/team/app:app-1",
        f"docker://{registry.host}/platform/multi:multi",
        f"oci:{images.layout}:base-1",
    ]
    result = cli("--insecure", *sources)
    docs = by_name(result)
    assert len(docs) == 5
    assert [line.split(":", 1)[0] for line in result.err.splitlines()] == [
        f"imported {k}/4" for k in range(1, 5)
    ]


def test_plain_http_needs_insecure(cli: Cli, registry: LocalRegistry) -> None:
    source = f"docker://{registry.host}/platform/base:base-1"
    assert_failed(cli(source), source, "unreachable", "--insecure allows that")


def test_unreachable(cli: Cli) -> None:
    source = f"docker://127.0.0.1:{free_port()}/platform/base:1"
    assert_failed(cli("--insecure", source), source, "unreachable", "cannot connect")


def test_not_found(cli: Cli, registry: LocalRegistry) -> None:
    tag = f"docker://{registry.host}/platform/base:nope"
    assert_failed(cli("--insecure", tag), tag, "not found", "MANIFEST_UNKNOWN")
    repo = f"docker://{registry.host}/nobody/here:1"
    assert_failed(cli("--insecure", repo), repo, "not found", "nobody/here")


def test_not_an_image(cli: Cli, registry: LocalRegistry) -> None:
    """An OCI artifact (a config of another type) pushed over the distribution API."""
    chart = build_image(
        [{"chart.yaml": b"name: x\n"}], config_media_type="application/vnd.cncf.helm.config.v1+json"
    )
    blobs = {d: b for d, b in chart.blobs.items() if d != chart.digest}
    registry.put_manifest("charts/x", "1", blobs, chart.manifest, OCI_MANIFEST)
    source = f"docker://{registry.host}/charts/x:1"
    assert_failed(cli("--insecure", source), source, "not an image", "artifact")


@pytest.mark.parametrize(
    ("registry_fixture", "anonymous_refusal"),
    [("basic_registry", "requires credentials"), ("token_registry", "token service requires")],
)
def test_credentials(
    cli: Cli,
    images: Images,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    registry_fixture: str,
    anonymous_refusal: str,
) -> None:
    """htpasswd basic auth, and bearer tokens: refused anonymously, right and wrong creds."""
    secured: LocalRegistry = request.getfixturevalue(registry_fixture)
    source = f"docker://{secured.host}/platform/multi:multi"
    assert_failed(cli("--insecure", source), source, "unauthorized", anonymous_refusal)

    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(write_auth(tmp_path / "a.json", secured.host)))
    tokens_before = secured.token_server.requests if secured.token_server else 0
    docs = by_name(cli("--insecure", source))
    assert [d["spec"]["digest"] for _, d in sorted(docs.items())] == [
        c.digest for c in images.multi.children
    ]
    if secured.token_server is not None:
        # One token for the repository, reused for the index, both manifests, both configs.
        assert secured.token_server.requests - tokens_before == 1

    wrong = write_auth(tmp_path / "w.json", secured.host, password="nope")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(wrong))
    assert_failed(cli("--insecure", source), source, "unauthorized", "refused the credentials")


def test_docker_config_json(
    cli: Cli,
    basic_registry: LocalRegistry,
    images: Images,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without REGISTRY_AUTH_FILE, ~/.docker/config.json (with Docker's URL-style keys)."""
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".docker").mkdir()
    write_auth(tmp_path / ".docker" / "config.json", basic_registry.host, docker=True)
    (doc,) = cli("--insecure", f"docker://{basic_registry.host}/platform/base:base-1").docs()
    assert doc["spec"]["digest"] == images.base.digest


def test_unknown_digest_is_not_found(cli: Cli, registry: LocalRegistry) -> None:
    source = f"docker://{registry.host}/platform/base@sha256:{'0' * 64}"
    assert_failed(cli("--insecure", source), source, "not found", "MANIFEST_UNKNOWN")


class _Hostile(BaseHTTPRequestHandler):
    """Not a registry: a server that lies, which the real registry never does."""

    def do_GET(self) -> None:
        if self.path.endswith("/manifests/huge"):
            self.send_response(200)
            self.send_header("Content-Type", OCI_MANIFEST)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            self.wfile.write(b"{" * 65536)
            return
        body = b'{"schemaVersion": 2}'
        self.send_response(200)
        self.send_header("Content-Type", OCI_MANIFEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_hostile_registry(cli: Cli, hostile: str) -> None:
    huge = f"docker://{hostile}/x/y:huge"
    assert_failed(cli("--insecure", huge), huge, "invalid", "over the 4194304-byte limit")
    wanted = "sha256:" + "1" * 64
    lying = f"docker://{hostile}/x/y@{wanted}"
    assert_failed(cli("--insecure", lying), lying, "invalid", "sent a manifest with digest")
