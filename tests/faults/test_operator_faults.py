"""Operator faults on the real API server: kill -9 in the middle of a burst of 1,000 changes,
two replicas under the same burst (the leader killed half-way), a status overwritten by
someone else while the operator runs, and statuses that cannot be written (too large for the
schema, or forbidden by an admission policy) while the other images carry on.

tests/operator/ already covers kill -9 with changes made while no operator runs, a junk
status corrected at restart, and the Lease failover of two idle replicas; these are the same
faults under load, and the faults it does not cover.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from image_ancestry.model import MARK_ANNOTATION
from tests.clusters import TestCluster
from tests.faults.conftest import (
    GROUP,
    PLURAL,
    VERSION,
    Burst,
    Images,
    OperatorProcess,
    empty_namespace,
    figure,
    new_namespace,
    status_problems,
    wait_converged,
    wait_for,
)
from tests.operator.conftest import crds, lease_holder

__all__ = ["crds"]

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

MESSAGE_CAP = 32768  # the CRD's maxLength of status.conditions[].message


@dataclass
class Env:
    """One test's images (salted, in ``namespace``) and its operators' namespace."""

    cluster: TestCluster
    images: Images
    namespace: str
    system: str
    start: Callable[..., OperatorProcess]

    def operator(self, **options: Any) -> OperatorProcess:
        return self.start(self.cluster.kubeconfig_path, self.system, **options)


@pytest.fixture
def env(
    crds: TestCluster, namespace: str, operators: Callable[..., OperatorProcess]
) -> Iterator[Env]:
    system = new_namespace(crds, "faults-system")
    yield Env(crds, Images(crds, uuid.uuid4().hex), namespace, system, operators)
    empty_namespace(crds, namespace)
    crds.kubectl("delete", "namespace", system, "--wait=false", check=False)


def test_kill_9_during_a_burst_of_1000_changes_then_restart(env: Env) -> None:
    crds, images, namespace, system = env.cluster, env.images, env.namespace, env.system
    burst = Burst(images, namespace)
    seeds = burst.seed_forest()
    first = env.operator(identity="killed")
    wait_converged(crds, {namespace}, alive=first.assert_alive)
    replacement: list[OperatorProcess] = []

    def kill_and_restart() -> None:
        first.kill9()
        replacement.append(env.operator(identity="restarted"))

    burst.run(burst.changes(seeds), at={400: kill_and_restart})
    assert replacement and not first.alive()
    second = replacement[0]
    seconds = wait_converged(crds, {namespace}, timeout=180, alive=second.assert_alive)
    figure(f"converged after kill -9 at 400 of {burst.done} changes", seconds)
    assert lease_holder(crds, system) == "restarted"


def test_two_replicas_under_the_same_burst_leader_killed_half_way(env: Env) -> None:
    crds, images, namespace, system = env.cluster, env.images, env.namespace, env.system
    burst = Burst(images, namespace, seed=11)
    seeds = burst.seed_forest()
    replicas = {r.identity: r for r in (env.operator(identity=f"replica-{n}") for n in (1, 2))}
    wait_converged(crds, {namespace}, alive=replicas["replica-1"].assert_alive)
    wait_for(lambda: lease_holder(crds, system), what="a lease holder")
    roles: dict[str, OperatorProcess] = {}

    def kill_the_leader() -> None:
        # whoever holds the Lease now (on a starved machine it may have changed hands once)
        holder = lease_holder(crds, system)
        assert holder in replicas, holder
        roles["killed"] = replicas[holder]
        roles["survivor"] = next(r for name, r in replicas.items() if name != holder)
        roles["killed"].kill9()

    burst.run(burst.changes(seeds), at={500: kill_the_leader})
    survivor = roles["survivor"]
    seconds = wait_converged(crds, {namespace}, timeout=180, alive=survivor.assert_alive)
    figure("two replicas: converged after the leader's kill -9 at 500 of 1000", seconds)
    assert lease_holder(crds, system) == survivor.identity
    assert "acquired leadership" in survivor.log()


def test_a_status_overwritten_while_the_operator_runs_is_put_right(env: Env) -> None:
    crds, images, namespace = env.cluster, env.images, env.namespace
    images.apply(
        images.manifest(namespace, "distro", ["a"], marked="true"),
        images.manifest(namespace, "runtime", ["a", "b"]),
        images.manifest(namespace, "app", ["a", "b", "c"]),
    )
    op = env.operator()
    wait_converged(crds, {namespace}, alive=op.assert_alive)

    def overwrite(name: str, status: dict[str, Any]) -> None:
        images.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}
        )

    foreign = {"type": "Scanned", "status": "True", "reason": "ByScanner", "message": "theirs"}
    ready = json.loads(
        json.dumps(images.status(namespace, "app")["conditions"])
    )  # the operator's own Ready condition, kept beside the foreign one
    overwrite(
        "app",
        {
            "layerCount": 99,
            "ancestorCount": 0,
            "ancestors": [],
            "parent": {"namespace": "elsewhere", "name": "nobody"},
            "baseImage": {"namespace": "elsewhere", "name": "nobody", "reason": "MarkedBaseImage"},
            "conditions": [*ready, foreign],
        },
    )
    overwrite("runtime", {"conditions": [{"type": "Ready", "status": "False", "reason": "Junk"}]})
    overwrite("distro", {"layerCount": None, "ancestorCount": None, "conditions": None})
    seconds = wait_converged(crds, {namespace}, alive=op.assert_alive)
    figure("three overwritten statuses put right", seconds)
    conditions = images.status(namespace, "app")["conditions"]
    assert [c for c in conditions if c["type"] == "Scanned"] == [foreign]  # others' are kept


def _huge_forest(images: Images, namespace: str) -> None:
    """``huge``'s mark value marks nothing and is longer than the schema's maxLength of a
    condition message: the Ready message quotes it cut short, so its status is stored
    like the others'."""
    images.apply(
        images.manifest(namespace, "base", ["a"]),
        images.manifest(namespace, "before", ["a", "b"]),
        images.manifest(
            namespace, "huge", ["a", "h"], annotations={MARK_ANNOTATION: "x" * (MESSAGE_CAP + 1)}
        ),
    )


def _later_images(images: Images, namespace: str) -> None:
    images.apply(*(images.manifest(namespace, f"later-{i}", ["a", "b", str(i)]) for i in range(20)))


def _right_except(crds: TestCluster, namespace: str, name: str) -> bool:
    problems = status_problems(crds, {namespace})
    assert problems and all(p.startswith(f"{namespace}/{name}:") for p in problems), problems
    return True


def _others_carry_on(crds: TestCluster, op: OperatorProcess, namespace: str, name: str) -> None:
    """Every status but ``name``'s is right, and the operator said (no traceback) why."""
    wait_for(lambda: _right_except(crds, namespace, name), timeout=60, what="the others")
    wait_for(lambda: f"writing the status of {namespace}/{name} failed" in op.log(), what="log")
    assert "Traceback" not in op.log()


def _ready(images: Images, namespace: str, name: str) -> dict[str, Any] | None:
    conditions = images.status(namespace, name).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), None)


def test_a_mark_value_too_large_to_quote_is_cut_and_stored(env: Env) -> None:
    crds, images, namespace = env.cluster, env.images, env.namespace
    _huge_forest(images, namespace)
    op = env.operator()
    _later_images(images, namespace)
    wait_converged(crds, {namespace}, timeout=60, alive=op.assert_alive)
    ready = _ready(images, namespace, "huge")
    assert ready is not None and ready["status"] == "True", ready
    assert "marks nothing" in ready["message"] and len(ready["message"]) < 1000, ready
    assert f"writing the status of {namespace}/huge failed" not in op.log()


def test_a_status_too_large_to_store_gets_ready_false(env: Env) -> None:
    """A status the API server refuses as Invalid (422; here an admission policy capping
    what ``huge``'s status may hold: none of the ancestry) gets the minimal ``Ready=False``
    status instead; the others carry on, and it is written once the cap is lifted."""
    crds, images, namespace = env.cluster, env.images, env.namespace
    _huge_forest(images, namespace)
    policy = _deny_status_writes(
        crds,
        namespace,
        "huge",
        expression="object.metadata.name != 'huge' || !has(object.status.layerCount)",
        reason="Invalid",
        probe=422,
    )
    try:
        op = env.operator()

        def ready_false() -> bool:
            ready = _ready(images, namespace, "huge")
            return ready is not None and ready["status"] == "False"

        wait_for(ready_false, timeout=20, what="huge: Ready=False")
        ready = _ready(images, namespace, "huge")
        assert ready is not None and ready["reason"] == "StatusWriteRefused", ready
        assert "422 Invalid" in ready["message"] and len(ready["message"]) < 1000, ready
        status = images.status(namespace, "huge")
        assert status.get("observedGeneration") == 1 and "layerCount" not in status, status
        _later_images(images, namespace)
        _others_carry_on(crds, op, namespace, "huge")
    finally:
        _allow_status_writes(crds, policy)
    seconds = wait_converged(crds, {namespace}, timeout=60, alive=op.assert_alive)
    figure("a refused status written once the cap was lifted", seconds)


def _deny_status_writes(
    crds: TestCluster,
    namespace: str,
    name: str,
    *,
    expression: str | None = None,
    reason: str = "Forbidden",
    probe: int = 403,
) -> str:
    """A ValidatingAdmissionPolicy (CEL, in the API server) forbidding every status write to
    one ContainerImage: its writes fail with 403 whatever they hold (or, with another
    ``expression`` and ``reason``, those the expression refuses, with that reason's code).
    Returns once a status write of ``layerCount`` to it is refused with ``probe``."""
    images = Images(crds, "")
    policy = f"faults-deny-{uuid.uuid4().hex[:6]}"
    docs = [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": policy},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [GROUP],
                            "apiVersions": [VERSION],
                            "operations": ["UPDATE"],
                            "resources": [f"{PLURAL}/status"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": expression or f"object.metadata.name != '{name}'",
                        "message": "status writes to this image are forbidden (fault test)",
                        "reason": reason,
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": policy},
            "spec": {
                "policyName": policy,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                },
            },
        },
    ]
    crds.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    )

    def refused() -> bool:
        try:
            images.api.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": {"layerCount": 2}}
            )
        except Exception as exc:
            assert getattr(exc, "status", None) == probe, exc
            return True
        return False

    try:
        wait_for(refused, what="the admission policy in force")
    except BaseException:
        _allow_status_writes(crds, policy)
        raise
    return policy


def _allow_status_writes(crds: TestCluster, policy: str) -> None:
    for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
        crds.kubectl("delete", kind, policy, "--ignore-not-found")


def test_a_forbidden_status_write_blocks_no_other_image_and_heals(env: Env) -> None:
    crds, images, namespace = env.cluster, env.images, env.namespace
    # the policy is in force once a status write to "locked" is refused
    images.apply(images.manifest(namespace, "locked", ["a", "l"]))
    policy = _deny_status_writes(crds, namespace, "locked")
    try:
        images.apply(images.manifest(namespace, "base", ["a"]))
        op = env.operator()
        _later_images(images, namespace)
        _others_carry_on(crds, op, namespace, "locked")
    finally:
        _allow_status_writes(crds, policy)
    # once allowed, the next retry writes it: no restart needed
    seconds = wait_converged(crds, {namespace}, timeout=60, alive=op.assert_alive)
    figure("a forbidden status written once the denial was lifted", seconds)
