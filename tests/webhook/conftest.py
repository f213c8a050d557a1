"""Fixtures for the webhook on the real API server: the operator as a subprocess, alice.

One operator (``python -m image_ancestry.cli run``) serves the whole module; it registers
its local URL webhook itself, and the fixture waits until the API server calls it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from image_ancestry.model import MARK_ANNOTATION
from tests.clusters import KubectlError, TestCluster
from tests.operator.conftest import crds, wait_for

__all__ = ["crds", "wait_for"]  # the operator tests' fixture and poller, shared

REPO = Path(__file__).resolve().parents[2]
ALICE = ("--as=alice", "--as-group=devs")


def layer(n: int) -> str:
    return "sha256:" + f"{n:x}".rjust(64, "0")


def manifest(
    namespace: str, name: str, layers: list[str], mark: str | None = None, **spec: Any
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if mark is not None:
        metadata["annotations"] = {MARK_ANNOTATION: mark}
    return {
        "apiVersion": "imageancestry.io/v1alpha1",
        "kind": "ContainerImage",
        "metadata": metadata,
        "spec": {"layers": layers, **spec},
    }


def kubectl_error(cluster: TestCluster, *args: str, input: str | None = None) -> str:
    """Run kubectl expecting a refusal; return its stderr (fails if kubectl succeeded)."""
    try:
        out = cluster.kubectl(*args, input=input)
    except KubectlError as exc:
        return exc.stderr
    raise AssertionError(f"kubectl {' '.join(args)} succeeded: {out}")


def stop_process(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL if it is still there after 30 s; the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


@dataclass
class Operator:
    cluster: TestCluster
    namespace: str
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def configuration(self) -> str:
        return f"image-ancestry-local-{self.namespace}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        return stop_process(self.proc)

    def set_config(self, **data: str) -> None:
        doc = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "image-ancestry-config", "namespace": self.namespace},
            "data": data,
        }
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))


def start_operator(cluster: TestCluster, namespace: str, log_path: Path) -> Operator:
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "image_ancestry.cli", "run", "--namespace", namespace, "-v"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=cluster.env(),
    )
    log.close()
    return Operator(cluster, namespace, log_path, proc)


def wait_until_served(op: Operator, probe_namespace: str) -> None:
    """Until the API server calls this operator's webhook: a server-side dry run of a value
    only the webhook refuses (the schema allows any string) comes back denied by rule 5."""
    probe = json.dumps(manifest(probe_namespace, "probe", [layer(1)], mark="maybe"))

    def denied() -> bool:
        assert op.proc.poll() is None, f"the operator exited:\n{op.log()[-4000:]}"
        try:
            op.cluster.kubectl("create", "--dry-run=server", "-f", "-", input=probe)
        except KubectlError as exc:
            return "rule 5" in exc.stderr
        return False

    wait_for(denied, timeout=60, what="the API server to call the webhook")


@pytest.fixture(scope="module")
def operator(crds: TestCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    namespace = f"ia-webhook-{uuid.uuid4().hex[:6]}"
    crds.kubectl("create", "namespace", namespace)
    op = start_operator(crds, namespace, tmp_path_factory.mktemp("operator") / "operator.log")
    try:
        wait_until_served(op, namespace)
        yield op
    finally:
        code = op.stop()
        if code not in (0, -15):
            sys.stderr.write(f"operator exited {code}:\n{op.log()[-6000:]}\n")
        crds.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def alice(cluster: TestCluster, namespace: str) -> Callable[..., str]:
    """``alice(*kubectl_args)``: kubectl as user alice (group devs), who may edit
    ContainerImages in ``namespace`` through a Role, and nothing else."""
    cluster.kubectl(
        "create",
        "role",
        "containerimage-editor",
        "-n",
        namespace,
        "--verb=get,list,watch,create,update,patch,delete",
        "--resource=containerimages.imageancestry.io",
    )
    cluster.kubectl(
        "create",
        "rolebinding",
        "alice-edits-images",
        "-n",
        namespace,
        "--role=containerimage-editor",
        "--user=alice",
    )

    def run(*args: str, input: str | None = None, check: bool = True) -> str:
        return cluster.kubectl(*ALICE, "-n", namespace, *args, input=input, check=check)

    return run


@pytest.fixture
def env_kubeconfig(cluster: TestCluster) -> Iterator[str]:
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig_path)
    yield str(cluster.kubeconfig_path)
    if old is None:
        os.environ.pop("KUBECONFIG", None)
    else:
        os.environ["KUBECONFIG"] = old
