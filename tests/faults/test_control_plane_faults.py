"""Control-plane faults under a running operator: kube-apiserver restarted while images
change, etcd restarted, the API server paused (SIGSTOP) past the operator's watch timeouts.

The control plane is this module's own (its components are stopped and paused), never the
session's. Every test ends with every status equal to what the engine computes offline from
the stored objects, and with the same operator process alive: it reconnected, it did not
crash or restart.
"""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from image_ancestry.controlplane.cluster import ClusterError, LocalCluster
from tests.clusters import TestCluster
from tests.faults.conftest import (
    PLURAL,
    Burst,
    Images,
    OperatorProcess,
    apply_crds,
    figure,
    new_namespace,
    wait_converged,
    wait_for,
)
from tests.operator.conftest import set_flag

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# The operator's own values (operator.handlers, operator.config, operator.kube) are a 270 s
# server / 300 s client timeout on kopf's watches, 240 s / 270 s on the ConfigMap watch and
# 30 s per request. The pause test runs the same code with the watch timeouts scaled down
# (kopf 15 s / 20 s, ConfigMap 10 s / 40 s) and pauses longer than all of them and than
# the request timeout, so every watch and request in flight times out while the server sleeps.
SCALED = (15, 20, 10)
PAUSE = 45.0
FATAL = ("the controller crashed", "kopf stopped")


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("plane") / "c")
    local.start(audit=False)
    try:
        cluster = TestCluster("faults-plane", local.kubeconfig, local=local)
        apply_crds(cluster)
        yield cluster
    finally:
        local.stop()


@pytest.fixture
def healthy(plane: TestCluster) -> Iterator[TestCluster]:
    """The module's cluster with both components running, before and after the test."""
    yield plane
    local: LocalCluster = plane.local
    with contextlib.suppress(ClusterError):  # not running: started below
        local.signal_component("kube-apiserver", signal.SIGCONT)
    for component in ("etcd", "kube-apiserver"):
        local.start_component(component)


def persistent(change: Callable[[], Any], deadline: float = 120.0) -> Callable[[], None]:
    """``change`` retried while the control plane is away: refused connections, 5xx and
    timeouts are retried; 409 on a create and 404 mean an earlier attempt got through."""

    def run() -> None:
        end = time.monotonic() + deadline
        while True:
            try:
                change()
                return
            except ApiException as exc:
                if exc.status in (404, 409):
                    return
                if exc.status and exc.status < 500 and exc.status != 429:
                    raise
            except Exception:  # urllib3's connection errors while the server is down
                pass
            if time.monotonic() > end:
                raise AssertionError("the control plane did not come back")
            time.sleep(0.5)

    return run


def restart(local: LocalCluster, component: str, down: float) -> Callable[[], None]:
    def hook() -> None:
        local.stop_component(component)
        time.sleep(down)
        local.start_component(component)

    return hook


def no_crash(op: OperatorProcess) -> None:
    op.assert_alive()
    log = op.log()
    assert not [line for line in FATAL if line in log], log[-6000:]


def start(
    cluster: TestCluster, operators: Callable[..., OperatorProcess], tag: str, **options: Any
) -> tuple[Burst, str, OperatorProcess]:
    """A namespace of images (the burst's), an operator namespace, the operator."""
    images = Images(cluster, uuid.uuid4().hex)
    namespace = new_namespace(cluster, f"cp-{tag}")
    system = new_namespace(cluster, f"cp-{tag}-system")
    burst = Burst(images, namespace, size=150, workers=3)
    op = operators(cluster.kubeconfig_path, system, **options)
    return burst, system, op


def burst_through(
    cluster: TestCluster,
    operators: Callable[..., OperatorProcess],
    tag: str,
    faults: dict[int, Callable[[], None]],
) -> None:
    """A converged forest, then 150 changes with ``faults[n]`` injected after the n-th;
    every status right at the end, by the same operator process."""
    burst, _, op = start(cluster, operators, tag)
    seeds = burst.seed_forest(30)
    wait_converged(cluster, {burst.namespace}, alive=op.assert_alive)
    burst.run([persistent(c) for c in burst.changes(seeds)], at=faults)
    assert burst.failed == 0
    seconds = wait_converged(cluster, {burst.namespace}, timeout=120, alive=op.assert_alive)
    figure(f"converged after the faults of {tag}", seconds)
    no_crash(op)


def test_apiserver_restarted_twice_while_images_change(
    healthy: TestCluster, operators: Callable[..., OperatorProcess]
) -> None:
    local = healthy.local
    faults = {40: restart(local, "kube-apiserver", 2.0), 100: restart(local, "kube-apiserver", 0)}
    burst_through(healthy, operators, "apiserver", faults)


def test_etcd_restarted_under_the_operator(
    healthy: TestCluster, operators: Callable[..., OperatorProcess]
) -> None:
    burst_through(healthy, operators, "etcd", {50: restart(healthy.local, "etcd", 3.0)})


def test_apiserver_paused_past_the_watch_timeouts(
    healthy: TestCluster, operators: Callable[..., OperatorProcess]
) -> None:
    burst, system, op = start(healthy, operators, "pause", timeouts=SCALED)
    images, ns = burst.images, burst.namespace
    seeds = burst.seed_forest(30)
    wait_converged(healthy, {ns}, alive=op.assert_alive)

    # changes the operator has not written yet when the server stops: its writes and watches
    # are in flight, and the flag flips (every base image is recomputed)
    burst.size = 40
    burst.run(burst.changes(seeds))
    set_flag(healthy, system, "false")
    local: LocalCluster = healthy.local
    local.signal_component("kube-apiserver", signal.SIGSTOP)
    try:
        time.sleep(PAUSE)
        op.assert_alive()
    finally:
        local.signal_component("kube-apiserver", signal.SIGCONT)
    wait_for(lambda: local.get_raw("/readyz") == "ok", timeout=60, what="the API server back")
    # the pause outlasted what it had to: kopf dropped the silent watch, the ConfigMap watch
    # and the Lease renewals failed (the replica stopped writing)
    log = op.log()
    assert f"Watch-stream for {PLURAL}.v1alpha1.imageancestry.io cluster-wide is inactive" in log
    assert f"watching configmap {system}/image-ancestry-config" in log
    assert "lost leadership" in log

    # after the resume: changes only a resumed watch can deliver
    images.apply(
        images.manifest(ns, "after-pause", ["t0-0", "t0-1", "after"]),
        images.manifest(ns, "after-pause-child", ["t0-0", "t0-1", "after", "child"]),
    )
    images.patch(ns, seeds[-1], {"spec": {"layers": [images.layer(x) for x in ("t1-0", "z")]}})
    seconds = wait_converged(healthy, {ns}, enabled=False, timeout=120, alive=op.assert_alive)
    figure("converged after the pause", seconds)
    assert op.log().count("acquired leadership") >= 2  # and again after the pause
    set_flag(healthy, system, "true")  # the ConfigMap watch resumed too
    seconds = wait_converged(healthy, {ns}, enabled=True, timeout=120, alive=op.assert_alive)
    figure("flag flip seen after the pause", seconds)
    no_crash(op)
