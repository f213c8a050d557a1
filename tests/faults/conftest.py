"""Helpers of the fault tests: operators as subprocesses, bursts of changes, and the check
that every stored status is what the engine computes offline from the stored objects.

The operator runs as a real process (``image-ancestry run``), so ``kill -9`` and SIGSTOP
are real; the API server is always a real one (the session's, or a cluster of the test's own
when the test stops its components).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from image_ancestry.engine import AncestryIndex
from image_ancestry.model import MARK_ANNOTATION, ContainerImage, ManifestError
from tests.clusters import KubectlError, TestCluster
from tests.operator.conftest import Images, pytest_runtest_makereport, wait_for

# the report hook sets item.rep_call (logs of failed tests are shown)
__all__ = ["Images", "pytest_runtest_makereport", "wait_for"]

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "imageancestry.io", "v1alpha1", "containerimages"
CONTRACT_KEYS = ("layerCount", "ancestorCount", "ancestors", "parent", "baseImage")

# Runs the operator with its watch timeouts scaled down (the values are the module constants
# the operator reads when it builds kopf's settings, and the ConfigMap watch's default), so a
# pause of the API server can outlast them within a test's time.
_SCALED_TIMEOUTS = """
import sys
import image_ancestry.operator.handlers as handlers
from image_ancestry.operator.config import ConfigWatcher
handlers.WATCH_SERVER_TIMEOUT = {server}
handlers.WATCH_CLIENT_TIMEOUT = {client}
ConfigWatcher.__init__.__kwdefaults__["server_timeout"] = {configmap}
from image_ancestry.cli import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class OperatorProcess:
    """One ``image-ancestry run`` process, with any kubeconfig and webhook mode."""

    kubeconfig: Path
    namespace: str
    log_path: Path
    identity: str = "faults-0"
    webhook: str = "off"
    extra: list[str] = field(default_factory=list)
    # (kopf server, kopf client, ConfigMap server) watch timeouts; None: the operator's own
    timeouts: tuple[int, int, int] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        if self.timeouts is None:
            head = [sys.executable, "-m", "image_ancestry.cli"]
        else:
            server, client, configmap = self.timeouts
            code = _SCALED_TIMEOUTS.format(server=server, client=client, configmap=configmap)
            head = [sys.executable, "-c", code]
        cmd = [
            *head,
            "run",
            f"--namespace={self.namespace}",
            f"--kubeconfig={self.kubeconfig}",
            f"--identity={self.identity}",
            "--lease-duration=6",
            "--verbose",
            f"--webhook={self.webhook}",
            *self.extra,
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assert_alive(self) -> None:
        assert self.alive(), f"the operator exited:\n{self.log()[-6000:]}"


@pytest.fixture
def operators(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """``operators(kubeconfig, namespace, **options)`` starts an operator; all are stopped at
    the end, and their logs shown when the test failed."""
    started: list[OperatorProcess] = []

    def start(kubeconfig: Path, namespace: str, **options: Any) -> OperatorProcess:
        n = len(started)
        options.setdefault("identity", f"faults-{n}")
        op = OperatorProcess(Path(kubeconfig), namespace, tmp_path / f"operator-{n}.log", **options)
        started.append(op.start())
        return op

    yield start
    for op in started:
        op.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for op in started:
            sys.stderr.write(f"\n===== {op.log_path} =====\n{op.log()[-8000:]}\n")


def empty_namespace(cluster: TestCluster, namespace: str) -> None:
    """Delete a namespace's ContainerImages: with no kube-controller-manager a deleted
    namespace keeps its objects, and every later operator would list them."""
    from kubernetes import client

    client.CustomObjectsApi(cluster.api).delete_collection_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL
    )


def new_namespace(cluster: TestCluster, stem: str) -> str:
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    return name


def apply_crds(cluster: TestCluster, *files: str) -> None:
    for name in files or ("containerimages.yaml",):
        cluster.kubectl("apply", "-f", str(REPO / "crds" / name))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")


def wait_served(cluster: TestCluster, op: OperatorProcess, namespace: str) -> None:
    """Until the API server calls the operator's webhook: a dry run only it refuses."""
    probe = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ContainerImage",
        "metadata": {"name": "probe", "namespace": namespace,
                     "annotations": {MARK_ANNOTATION: "maybe"}},
        "spec": {"layers": ["sha256:" + "0" * 64]},
    }  # fmt: skip

    def denied() -> bool:
        op.assert_alive()
        try:
            cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(probe))
        except KubectlError as exc:
            return "rule 5" in exc.stderr
        return False

    wait_for(denied, timeout=60, what="the API server to call the webhook")


# --- the oracle: statuses computed offline from the stored objects ------------------------------


def stored_images(cluster: TestCluster, namespaces: set[str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for namespace in sorted(namespaces):
        out = cluster.kubectl("get", PLURAL, "-n", namespace, "-o", "json")
        items.extend(json.loads(out)["items"])
    return items


def status_problems(
    cluster: TestCluster, namespaces: set[str], *, enabled: bool = True
) -> list[str]:
    """What differs between every stored status in ``namespaces`` and the engine's answer
    computed offline from the same stored objects (empty: every status is right).

    The namespaces' images must share no layers with images elsewhere (tests salt them).
    """
    items = stored_images(cluster, namespaces)
    records, invalid = [], set()
    for item in items:
        try:
            records.append(ContainerImage.from_manifest(item, source="cluster").to_record())
        except ManifestError:
            invalid.add((item["metadata"]["namespace"], item["metadata"]["name"]))
    index = AncestryIndex.build(records, user_base_image_enabled=enabled)
    problems: list[str] = []
    for item in items:
        meta = item["metadata"]
        key = (meta["namespace"], meta["name"])
        status = item.get("status") or {}
        ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
        want_ready = "False" if key in invalid else "True"
        if not ready or ready[0].get("status") != want_ready:
            problems.append(f"{key[0]}/{key[1]}: Ready is {ready or 'absent'}, not {want_ready}")
            continue
        if status.get("observedGeneration") != meta.get("generation"):
            problems.append(
                f"{key[0]}/{key[1]}: observedGeneration {status.get('observedGeneration')} "
                f"of generation {meta.get('generation')}"
            )
        if key in invalid:
            continue
        want = index.status(key)
        for name in CONTRACT_KEYS:
            if status.get(name) != want[name]:
                problems.append(
                    f"{key[0]}/{key[1]}: {name} is {status.get(name)!r}, not {want[name]!r}"
                )
    return problems


def wait_converged(
    cluster: TestCluster,
    namespaces: set[str],
    *,
    enabled: bool = True,
    timeout: float = 90.0,
    alive: Callable[[], None] | None = None,
) -> float:
    """Until every status in ``namespaces`` is right; the deadline bounds the wait only.
    Returns the seconds it took (printed by the tests as figures, never asserted)."""
    started = time.monotonic()

    def right() -> bool:
        if alive is not None:
            alive()
        problems = status_problems(cluster, namespaces, enabled=enabled)
        assert not problems, f"{len(problems)} wrong: {problems[:5]}"
        return True

    wait_for(right, timeout=timeout, interval=1.0, what="every status right")
    return time.monotonic() - started


def figure(what: str, seconds: float) -> None:
    """A measurement for the closing note (``pytest -s`` shows them); never asserted."""
    print(f"\nfigure: {what}: {seconds:.1f}s")


# --- bursts -----------------------------------------------------------------------------------


@dataclass
class Burst:
    """A reproducible mix of ``size`` changes to the images of ``images`` (an
    :class:`Images`) in ``namespace``: creates of new images on top of existing chains,
    layer edits, mark changes and deletes. ``done`` counts the changes made; ``failed``
    those the API server refused (e.g. a patch of an image deleted meanwhile)."""

    images: Images
    namespace: str
    size: int = 1000
    seed: int = 9
    workers: int = 6
    done: int = 0
    failed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _hooks: threading.Lock = field(default_factory=threading.Lock)  # one fault at a time

    def seed_forest(self, count: int = 40) -> list[str]:
        """The images the burst starts from: chains sharing prefixes, a few marked."""
        rng = random.Random(self.seed)
        docs = []
        for i in range(count):
            depth = rng.randint(1, 6)
            trunk = f"t{i % 5}"
            layers = [f"{trunk}-{d}" for d in range(depth)] + ([f"own-{i}"] if i % 3 else [])
            mark = "true" if i % 7 == 0 else None
            docs.append(self.images.manifest(self.namespace, f"seed-{i}", layers, marked=mark))
        self.images.apply(*docs)
        return [d["metadata"]["name"] for d in docs]

    def changes(self, seeds: list[str]) -> list[Callable[[], None]]:
        rng = random.Random(self.seed + 1)
        ns, images = self.namespace, self.images
        deletable = seeds[: len(seeds) // 4]
        editable = seeds[len(seeds) // 4 :]
        out: list[Callable[[], None]] = []
        for i in range(self.size):
            roll = rng.random()
            trunk, depth = f"t{rng.randrange(5)}", rng.randint(0, 7)
            layers = [f"{trunk}-{d}" for d in range(depth)] + [f"new-{i}"]
            if roll < 0.6:
                mark = "true" if rng.random() < 0.1 else None
                out.append(lambda n=f"b-{i}", ls=layers, m=mark: images.create(ns, n, ls, marked=m))
            elif roll < 0.85:
                name = rng.choice(editable)
                digests = [images.layer(x) for x in layers]
                out.append(lambda n=name, d=digests: images.patch(ns, n, {"spec": {"layers": d}}))
            elif roll < 0.95:
                name, value = rng.choice(editable), rng.choice(["true", "false", None])
                out.append(lambda n=name, v=value: images.mark(ns, n, v))
            elif deletable:
                name = deletable.pop()
                out.append(lambda n=name: images.delete(ns, n))
            else:
                name = rng.choice(editable)
                out.append(lambda n=name: images.mark(ns, n, "true"))
        return out

    def run(
        self, changes: list[Callable[[], None]], at: dict[int, Callable[[], None]] | None = None
    ) -> None:
        """Make the changes from ``workers`` threads; ``at[n]`` runs once ``n`` are done,
        in the thread that made the n-th change, never two at the same time."""
        pending = dict(at or {})

        def one(change: Callable[[], None]) -> None:
            try:
                change()
            except Exception:
                with self._lock:
                    self.failed += 1
            with self._lock:
                self.done += 1
                hooks = [pending.pop(n) for n in sorted(pending) if n <= self.done]
            for hook in hooks:
                with self._hooks:
                    hook()

        started = time.monotonic()
        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(one, changes))
        figure(f"{len(changes)} changes made ({self.failed} refused)", time.monotonic() - started)
        for n in sorted(pending):  # thresholds past the end
            pending[n]()
