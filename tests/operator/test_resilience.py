"""The flag, crashes and failover, with real processes killed by SIGKILL."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
from tests.operator.conftest import Images, Operator, lease_holder, set_flag, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_the_flag_both_ways_and_an_invalid_value(
    images: Images, namespace: str, start_operator: Callable[..., Operator]
) -> None:
    images.apply(
        images.manifest(namespace, "distro", ["a"], marked="true"),
        images.manifest(namespace, "runtime", ["a", "b"]),
        images.manifest(namespace, "app", ["a", "b", "c"]),
    )
    op = start_operator()
    images.wait_base(namespace, "app", (namespace, "distro"), "MarkedBaseImage")

    set_flag(images.cluster, op.namespace, "false")  # marks ignored: the parent is the base
    images.wait_base(namespace, "app", (namespace, "runtime"), "ClosestAncestor")
    images.wait_base(namespace, "runtime", (namespace, "distro"), "ClosestAncestor")
    set_flag(images.cluster, op.namespace, " True ")
    images.wait_base(namespace, "app", (namespace, "distro"), "MarkedBaseImage")
    set_flag(images.cluster, op.namespace, "false")
    images.wait_base(namespace, "app", (namespace, "runtime"), "ClosestAncestor")

    # an invalid value: logged, a Warning on the ConfigMap, the last good value (false) kept
    set_flag(images.cluster, op.namespace, "maybe")
    warnings = wait_for(
        lambda: images.events(op.namespace, "image-ancestry-config", "InvalidConfig"),
        what="a Warning event on the ConfigMap",
    )
    assert warnings[0]["type"] == "Warning" and "maybe" in warnings[0]["message"]
    images.mark(namespace, "runtime", "true")  # would make runtime app's marked base if on
    images.apply(images.manifest(namespace, "probe", ["a", "b", "c", "p"]))
    images.wait_base(namespace, "probe", (namespace, "app"), "ClosestAncestor")
    assert images.status(namespace, "app")["baseImage"]["reason"] == "ClosestAncestor"
    assert "is neither" in op.log()

    set_flag(images.cluster, op.namespace, None)  # no map: true
    images.wait_base(namespace, "app", (namespace, "runtime"), "MarkedBaseImage")
    assert op.alive()


def test_kill_9_changes_while_down_and_restart_converge(
    images: Images, namespace: str, start_operator: Callable[..., Operator]
) -> None:
    images.apply(
        images.manifest(namespace, "distro", ["a"]),
        images.manifest(namespace, "golden", ["a", "b"], marked="true"),
        images.manifest(namespace, "app", ["a", "b", "c"]),
        images.manifest(namespace, "tool", ["a", "t"]),
    )
    first = start_operator()
    images.wait_base(namespace, "app", (namespace, "golden"), "MarkedBaseImage")
    images.wait_base(namespace, "tool", (namespace, "distro"), "ClosestAncestor")
    first.kill9()

    # while nobody is watching: an ancestor goes, an image moves, one arrives, the flag flips,
    # and a status is overwritten with junk
    images.delete(namespace, "golden")
    images.patch(namespace, "tool", {"spec": {"layers": [images.layer(x) for x in "abct"]}})
    images.apply(images.manifest(namespace, "late", ["a", "b", "c", "l"]))
    set_flag(images.cluster, first.namespace, "false")
    images.api.patch_namespaced_custom_object_status(
        "imageancestry.io",
        "v1alpha1",
        namespace,
        "containerimages",
        "distro",
        {"status": {"layerCount": 99, "ancestorCount": 7}},
    )

    second = start_operator(namespace=first.namespace, identity="replica-restarted")
    images.wait_base(namespace, "app", (namespace, "distro"), "ClosestAncestor")
    tool = images.wait_base(namespace, "tool", (namespace, "app"), "ClosestAncestor")
    assert [a["name"] for a in tool["ancestors"]] == ["app", "distro"]
    late = images.wait_base(namespace, "late", (namespace, "app"), "ClosestAncestor")
    assert late["ancestorCount"] == 2
    distro = wait_for(
        lambda: (
            images.status(namespace, "distro").get("layerCount") == 1
            and images.status(namespace, "distro")
        ),
        what="the junk status corrected",
    )
    assert distro["ancestorCount"] == 0
    assert second.alive()


def test_two_replicas_one_active_and_failover_after_kill_9(
    images: Images, namespace: str, start_operator: Callable[..., Operator]
) -> None:
    images.apply(
        images.manifest(namespace, "base", ["a"]),
        images.manifest(namespace, "app", ["a", "b"]),
    )
    one = start_operator(identity="replica-one")
    two = start_operator(namespace=one.namespace, identity="replica-two")
    images.wait_base(namespace, "app", (namespace, "base"))
    holder = wait_for(lambda: lease_holder(images.cluster, one.namespace), what="a lease holder")
    active, standby = (one, two) if holder == one.identity else (two, one)
    assert holder == active.identity
    # the standby keeps its index warm (it has listed) but does not hold the lease
    wait_for(lambda: "listing (start) done" in standby.log(), what="the standby listed")
    acquired = standby.log().count("acquired leadership")

    active.kill9()
    images.apply(images.manifest(namespace, "after", ["a", "b", "c"]))
    # the lease is 8s in these tests (15s by default); the wait is bounded well within 60s
    images.wait_base(namespace, "after", (namespace, "app"), timeout=60)
    assert lease_holder(images.cluster, one.namespace) == standby.identity
    assert standby.log().count("acquired leadership") > acquired
    assert standby.alive()


def test_a_relist_forgets_images_deleted_while_the_watch_was_away(
    images: Images, namespace: str, start_operator: Callable[..., Operator]
) -> None:
    """No DELETED event ever reaches the operator here: it is frozen while the API server
    restarts (its new watch cache starts after the operator's resourceVersion, so the resumed
    watch gets 410 Gone and kopf relists) and the ancestor is deleted meanwhile."""
    local = images.cluster.local
    if local is None:
        pytest.skip("needs the local control plane (restarts its kube-apiserver)")
    images.apply(
        images.manifest(namespace, "base", ["a"]),
        images.manifest(namespace, "app", ["a", "b"]),
    )
    op = start_operator()
    images.wait_base(namespace, "app", (namespace, "base"))
    assert op.proc is not None
    op.proc.send_signal(signal.SIGSTOP)
    try:
        local.stop_component("kube-apiserver")
        local.start_component("kube-apiserver")
        wait_for(
            lambda: images.cluster.kubectl("get", "--raw", "/readyz", check=False) == "ok",
            what="the API server back",
        )
        images.delete(namespace, "base")
    finally:
        op.proc.send_signal(signal.SIGCONT)
    status = images.wait_base(namespace, "app", None, timeout=60)
    assert status["ancestorCount"] == 0
    assert f"forgetting {namespace}/base" in op.log()
