"""Fixtures for the gate's cluster tests: the real API server, a real operator process.

One operator (``image-ancestry run``, a subprocess with its own namespace) and one salted
forest of ContainerImages serve the whole module; each test makes its own namespaces, each
with a label of its own, and policies selecting only that label, so tests never see each
other's policies. Policies are deleted after each test: the operator removes the gate's
webhook configuration when none is left, so no later test of the session is gated.
"""

from __future__ import annotations

import json
import os
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

from tests.clusters import KubectlError, TestCluster
from tests.policy.forest import container_image_manifest, image_digest, records

REPO = Path(__file__).resolve().parents[2]
LABEL = "ancestry-test"


def wait_for(probe: Callable[[], Any], *, timeout: float = 30.0, what: str = "") -> Any:
    """Poll until ``probe`` returns something truthy; the deadline only bounds the wait."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or probe}: last saw {last!r}")
        time.sleep(0.25)


@dataclass
class Attempt:
    """A ``kubectl create`` and what came of it."""

    ok: bool
    stdout: str
    stderr: str


@dataclass
class GateEnv:
    cluster: TestCluster
    operator_namespace: str
    platform: str
    salt: str
    registry: str
    log_path: Path
    made_namespaces: list[str] = field(default_factory=list)
    made_policies: list[str] = field(default_factory=list)

    def image(self, name: str) -> str:
        """The forest image's reference (``app`` -> ``r<salt>.example/app:v1``)."""
        return next(r.image for r in records(registry=self.registry) if r.name == name) or ""

    def digest(self, name: str) -> str:
        return image_digest(name, self.salt)

    def namespace(self) -> tuple[str, str]:
        """A new namespace with a label value of its own: (name, label value)."""
        value = uuid.uuid4().hex[:10]
        name = f"gate-{value}"
        self.cluster.kubectl("create", "namespace", name)
        self.cluster.kubectl("label", "namespace", name, f"{LABEL}={value}")
        self.made_namespaces.append(name)
        return name, value

    def policy(self, stem: str, selects: str | list[str], **spec: Any) -> str:
        values = [selects] if isinstance(selects, str) else selects
        name = f"{stem}-{uuid.uuid4().hex[:6]}"
        body = {
            "apiVersion": "imageancestry.io/v1alpha1",
            "kind": "AncestryPolicy",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {
                    "matchExpressions": [{"key": LABEL, "operator": "In", "values": values}]
                },
                **spec,
            },
        }
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        self.made_policies.append(name)
        return name

    def create(self, manifest: dict[str, Any], dry_run: bool = False) -> Attempt:
        args = ["create", "-f", "-"] + (["--dry-run=server"] if dry_run else [])
        try:
            out = self.cluster.kubectl(*args, input=json.dumps(manifest))
        except KubectlError as exc:
            return Attempt(False, "", exc.stderr)
        return Attempt(True, out, "")

    def create_with_stderr(self, manifest: dict[str, Any]) -> tuple[int, str]:
        cmd = ["kubectl", f"--kubeconfig={self.cluster.kubeconfig_path}", "create", "-f", "-"]
        result = subprocess.run(
            cmd, input=json.dumps(manifest), capture_output=True, text=True, timeout=60
        )
        return result.returncode, result.stderr

    def wait_denied(self, manifest: dict[str, Any]) -> Attempt:
        """Wait until the gate refuses ``manifest`` (a dry run): the policy is in force."""
        return wait_for(
            lambda: (a := self.create(manifest, dry_run=True)) and not a.ok and a,
            what="the gate to refuse a dry run",
        )

    def policy_status(self, name: str) -> dict[str, Any]:
        out = self.cluster.kubectl("get", "ancestrypolicy", name, "-o", "json")
        status: dict[str, Any] = json.loads(out).get("status") or {}
        return status

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def apply_crds(cluster: TestCluster) -> None:
    for crd in ("containerimages", "ancestrypolicies"):
        cluster.kubectl("apply", "-f", str(REPO / "crds" / f"{crd}.yaml"))
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}.imageancestry.io"
        )


@pytest.fixture(scope="module")
def gate_env(cluster: TestCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateEnv]:
    apply_crds(cluster)
    salt = uuid.uuid4().hex[:8]
    operator_ns, platform = f"ia-gate-{salt}", f"platform-{salt}"
    for ns in (operator_ns, platform):
        cluster.kubectl("create", "namespace", ns)
    env = GateEnv(
        cluster,
        operator_ns,
        platform,
        salt,
        f"r{salt}.example",
        tmp_path_factory.mktemp("gate") / "operator.log",
    )
    forest = [container_image_manifest(r) for r in records(platform, salt, env.registry)]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(forest))
    log = env.log_path.open("ab")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "image_ancestry.cli", "run",
            "--namespace", operator_ns,
            "--kubeconfig", str(cluster.kubeconfig_path),
            "--identity", "gate-tests",
            "--verbose",
        ],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=dict(os.environ),
    )  # fmt: skip
    log.close()

    def app_has_its_base() -> bool:
        out = cluster.kubectl("get", "cimg", "-n", platform, "app", "-o", "json")
        base = (json.loads(out).get("status") or {}).get("baseImage") or {}
        return base.get("name") == "golden" and "ancestry gate:" in env.log()

    try:
        wait_for(app_has_its_base, timeout=60, what="the operator to compute the forest")
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for name in (
            f"image-ancestry-policy-local-{operator_ns}",
            f"image-ancestry-local-{operator_ns}",
        ):
            cluster.kubectl(
                "delete", "validatingwebhookconfiguration", name, "--ignore-not-found", check=False
            )
        cluster.kubectl("delete", "namespace", operator_ns, platform, "--wait=false", check=False)


@pytest.fixture
def gate(gate_env: GateEnv, request: pytest.FixtureRequest) -> Iterator[GateEnv]:
    """The module's environment, with this test's namespaces and policies removed after."""
    yield gate_env
    for name in gate_env.made_policies:
        gate_env.cluster.kubectl(
            "delete", "ancestrypolicy", name, "--ignore-not-found", check=False
        )
    for name in gate_env.made_namespaces:
        gate_env.cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
    gate_env.made_policies.clear()
    gate_env.made_namespaces.clear()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        sys.stderr.write(f"\n===== operator log =====\n{gate_env.log()[-8000:]}\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
