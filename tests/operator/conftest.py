"""Fixtures for the operator tests: the CRDs applied, operators as real subprocesses.

Every operator runs as ``python -m image_ancestry.cli run`` in a process of its own, so
``kill -9`` is real, with its own operator namespace (its own ConfigMap and Lease). The API
server is the session's real one. Operators watch every namespace, so each test salts its
layer digests: images of other tests never share layers with its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.clusters import TestCluster

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "imageancestry.io", "v1alpha1", "containerimages"


def wait_for(
    probe: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.25, what: str = ""
) -> Any:
    """Poll ``probe`` until it returns a truthy value; fail with the last value at the
    deadline. A deadline bounds the wait only: nothing asserts how long it took."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = probe()
        except AssertionError as exc:  # probes may assert, to say what is still wrong
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or probe}: last saw {last!r}")
        time.sleep(interval)


@dataclass
class Operator:
    """One ``image-ancestry run`` subprocess."""

    cluster: TestCluster
    namespace: str
    log_path: Path
    identity: str
    extra: list[str] = field(default_factory=list)
    kubeconfig: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        cmd = [
            sys.executable,
            "-m",
            "image_ancestry.cli",
            "run",
            "--namespace",
            self.namespace,
            "--kubeconfig",
            str(self.kubeconfig or self.cluster.kubeconfig_path),
            "--identity",
            self.identity,
            "--lease-duration",
            "8",
            "--verbose",
            # The webhook is tested on its own; here it would refuse the bad values these
            # tests store on purpose, and a kill -9 would leave its registration behind.
            "--webhook",
            "off",
            *self.extra,
        ]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=dict(os.environ)
        )
        log.close()
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Images:
    """ContainerImages of one test: salted layers, applied and read through the real API."""

    def __init__(self, cluster: TestCluster, salt: str) -> None:
        self.cluster = cluster
        self.salt = salt
        from kubernetes import client

        self.api = client.CustomObjectsApi(cluster.api)
        self.core = client.CoreV1Api(cluster.api)

    def layer(self, name: str) -> str:
        return "sha256:" + hashlib.sha256(f"{self.salt}/{name}".encode()).hexdigest()

    def manifest(
        self,
        namespace: str,
        name: str,
        layers: list[str],
        *,
        image: str | None = None,
        marked: str | None = None,
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        notes = dict(annotations or {})
        if marked is not None:
            notes["anchore.user/marked_base_image"] = marked
        if notes:
            meta["annotations"] = notes
        spec: dict[str, Any] = {"layers": [self.layer(x) for x in layers]}
        spec["image"] = image or f"registry.example.com/{name}:{self.salt[:6]}"
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ContainerImage",
            "metadata": meta,
            "spec": spec,
        }

    def apply(self, *manifests: dict[str, Any]) -> None:
        text = yaml.safe_dump_all(manifests)
        self.cluster.kubectl("apply", "-f", "-", input=text)

    def create(self, namespace: str, name: str, layers: list[str], **kw: Any) -> dict[str, Any]:
        body = self.manifest(namespace, name, layers, **kw)
        created: dict[str, Any] = self.api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body
        )
        return created

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
        return obj

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get(namespace, name).get("status") or {}

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body)

    def annotate(self, namespace: str, name: str, key: str, value: str | None) -> None:
        self.patch(namespace, name, {"metadata": {"annotations": {key: value}}})

    def mark(self, namespace: str, name: str, value: str | None) -> None:
        self.annotate(namespace, name, "anchore.user/marked_base_image", value)

    def delete(self, namespace: str, name: str) -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def events(self, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
        found = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name},reason={reason}"
        )
        return [e.to_dict() for e in found.items]

    def wait_base(
        self,
        namespace: str,
        name: str,
        base: tuple[str, str] | None,
        reason: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Wait until the image's status names ``base`` (None: no base) with ``reason``."""

        def probe() -> dict[str, Any] | None:
            status = self.status(namespace, name)
            got = status.get("baseImage")
            if "conditions" not in status:
                return None
            if base is None:
                return status if got is None else None
            if (
                got
                and (got["namespace"], got["name"]) == base
                and (reason is None or got["reason"] == reason)
            ):
                return status
            return None

        result: dict[str, Any] = wait_for(
            probe, timeout=timeout, what=f"{namespace}/{name} base {base} {reason or ''}"
        )
        return result


def set_flag(cluster: TestCluster, namespace: str, value: str | None) -> None:
    """Write (or, with None, delete) the operator's ConfigMap."""
    if value is None:
        cluster.kubectl(
            "delete", "configmap", "image-ancestry-config", "-n", namespace, "--ignore-not-found"
        )
        return
    doc = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "image-ancestry-config", "namespace": namespace},
        "data": {"enable_user_base_image": value},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))


@pytest.fixture(scope="session")
def crds(cluster: TestCluster) -> TestCluster:
    cluster.kubectl("apply", "-f", str(REPO / "crds" / "containerimages.yaml"))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/containerimages.imageancestry.io",
    )
    return cluster


def _new_namespace(cluster: TestCluster, stem: str) -> str:
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    return name


@pytest.fixture
def make_namespace(crds: TestCluster) -> Iterator[Callable[[str], str]]:
    """Extra namespaces for one test (ancestry across namespaces); emptied afterwards."""
    made: list[str] = []

    def make(stem: str) -> str:
        made.append(_new_namespace(crds, stem))
        return made[-1]

    yield make
    for ns in made:
        crds.kubectl("delete", "containerimages", "--all", "-n", ns, "--wait=false", check=False)
        crds.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def images(crds: TestCluster) -> Images:
    return Images(crds, uuid.uuid4().hex)


@pytest.fixture
def start_operator(
    crds: TestCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Operator]]:
    """Start operators (``start_operator(namespace=None, identity=None)``); all are stopped
    at the end and their logs shown when the test failed."""
    started: list[Operator] = []
    namespaces: dict[str, str] = {}

    def start(
        namespace: str | None = None, identity: str | None = None, kubeconfig: Path | None = None
    ) -> Operator:
        if namespace is None:
            namespace = namespaces.setdefault("default", _new_namespace(crds, "ia-system"))
        n = len(started)
        op = Operator(
            crds,
            namespace,
            tmp_path / f"operator-{n}.log",
            identity or f"replica-{n}",
            kubeconfig=kubeconfig,
        ).start()
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for op in started:
            sys.stderr.write(f"\n===== {op.log_path} =====\n{op.log()[-6000:]}\n")
    for ns in namespaces.values():
        crds.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


def load_examples(images: Images, namespaces: dict[str, str]) -> list[dict[str, Any]]:
    """examples/ (the seed's forest) moved into this test's namespaces, layers salted so
    they are this test's own: the prefix structure, names, images and marks are kept."""
    docs: list[dict[str, Any]] = []
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "ContainerImage":
                continue
            meta = doc["metadata"]
            meta["namespace"] = namespaces[meta.get("namespace", "default")]
            doc["spec"]["layers"] = [images.layer(x) for x in doc["spec"]["layers"]]
            docs.append(doc)
    return docs


def lease_holder(cluster: TestCluster, namespace: str) -> str | None:
    out = cluster.kubectl(
        "get", "lease", "image-ancestry", "-n", namespace, "-o", "json", check=False
    )
    if not out:
        return None
    holder: str | None = json.loads(out).get("spec", {}).get("holderIdentity")
    return holder
