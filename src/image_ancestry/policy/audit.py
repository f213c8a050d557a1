"""The audit: which existing workloads the policies would refuse now.

Admission only sees new objects; a policy written today, or an image whose base moved,
says nothing about what already runs. The audit goes over every workload the operator has
seen (a :class:`WorkloadStore` fed by watch events, keeping only what the gate reads: kind,
name, owner, containers) with the same :meth:`~image_ancestry.policy.gate.Gate.evaluate`
as admission, and reports per policy how many workloads fail it, naming a few.

A Pod owned by a ReplicaSet, a ReplicaSet owned by a Deployment, a Job owned by a CronJob
fail for the same reason as their owner; they are counted once, through the owner, when the
owner is in the store. An orphan counts by itself.

Pure: the operator decides when to run it (on changes, at most every few seconds) and
writes :func:`policy_status` into each policy's status subresource.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from image_ancestry.policy.gate import POD_SPEC_PATHS, Container, Gate, containers_of

MAX_EXAMPLES = 5

WorkloadKey = tuple[str, str, str]
"""(kind, namespace, name)."""


@dataclass(frozen=True, slots=True)
class Workload:
    kind: str
    namespace: str
    name: str
    uid: str
    controller_uid: str | None
    containers: tuple[Container, ...]

    @property
    def key(self) -> WorkloadKey:
        return (self.kind, self.namespace, self.name)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Workload | None:
        """The gate's view of a Pod or workload object; None for other kinds."""
        kind = obj.get("kind")
        if kind not in POD_SPEC_PATHS:
            return None
        metadata = obj.get("metadata") or {}
        controller = next(
            (
                ref.get("uid")
                for ref in metadata.get("ownerReferences") or ()
                if isinstance(ref, Mapping) and ref.get("controller")
            ),
            None,
        )
        return cls(
            kind=str(kind),
            namespace=str(metadata.get("namespace", "default")),
            name=str(metadata.get("name", "")),
            uid=str(metadata.get("uid", "")),
            controller_uid=controller if isinstance(controller, str) else None,
            containers=containers_of(obj),
        )


class WorkloadStore:
    """Every Pod and pod-template workload, reduced to :class:`Workload`, by key."""

    def __init__(self) -> None:
        self._workloads: dict[WorkloadKey, Workload] = {}
        self._uids: dict[str, WorkloadKey] = {}

    def __len__(self) -> int:
        return len(self._workloads)

    def __iter__(self) -> Iterator[Workload]:
        return iter(self._workloads.values())

    def upsert(self, obj: Mapping[str, Any]) -> bool:
        """Store a Pod or workload; True when what the gate sees of it changed."""
        workload = Workload.from_object(obj)
        if workload is None:
            return False
        old = self._workloads.get(workload.key)
        if old == workload:
            return False
        if old is not None:
            self._uids.pop(old.uid, None)
        self._workloads[workload.key] = workload
        self._uids[workload.uid] = workload.key
        return True

    def remove(self, kind: str, namespace: str, name: str) -> bool:
        old = self._workloads.pop((kind, namespace, name), None)
        if old is None:
            return False
        self._uids.pop(old.uid, None)
        return True

    def has_uid(self, uid: str) -> bool:
        return uid in self._uids


@dataclass
class PolicyAudit:
    """One policy's audit: workloads in the namespaces it selects, and those failing it."""

    checked: int = 0
    violating: int = 0
    examples: list[dict[str, str]] = field(default_factory=list)


def audit(
    gate: Gate,
    workloads: Iterable[Workload],
    namespace_labels: Mapping[str, Mapping[str, str]],
    owned: WorkloadStore | None = None,
    results: dict[str, PolicyAudit] | None = None,
) -> dict[str, PolicyAudit]:
    """Every policy's audit (every policy in ``gate.policies`` has an entry).

    ``namespace_labels`` maps namespace names to their labels; a namespace missing from it
    is taken to carry only ``kubernetes.io/metadata.name``, as the API server labels every
    namespace. ``owned`` (the store ``workloads`` come from) lets owned objects be counted
    through their owner. ``results`` accumulates over several calls, so a caller can audit
    a large store in chunks (the operator does, to keep admission requests flowing).
    """
    if results is None:
        results = {}
    for policy in gate.policies:
        results.setdefault(policy.name, PolicyAudit())
    for workload in sorted(workloads, key=lambda w: w.key):
        if owned is not None and workload.controller_uid and owned.has_uid(workload.controller_uid):
            continue
        if gate.is_exempt(workload.namespace):
            continue
        labels = namespace_labels.get(workload.namespace)
        if labels is None:
            labels = {"kubernetes.io/metadata.name": workload.namespace}
        policies = gate.policies.selecting(labels)
        if not policies:
            continue
        decision = gate.evaluate(policies, workload.containers)
        failed: dict[str, str] = {}
        for violation in decision.violations:
            failed.setdefault(violation.policy, violation.message)
        for policy in policies:
            result = results.setdefault(policy.name, PolicyAudit())
            result.checked += 1
            message = failed.get(policy.name)
            if message is None:
                continue
            result.violating += 1
            if len(result.examples) < MAX_EXAMPLES:
                result.examples.append(
                    {
                        "kind": workload.kind,
                        "namespace": workload.namespace,
                        "name": workload.name,
                        "message": message,
                    }
                )
    return results


def policy_status(result: PolicyAudit, generation: int, now: str) -> dict[str, Any]:
    """The status subresource body of a policy whose spec is valid."""
    return {
        "observedGeneration": generation,
        "audit": {
            "lastAuditTime": now,
            "checkedWorkloads": result.checked,
            "violatingWorkloads": result.violating,
            "examples": result.examples,
        },
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Enforced",
                "message": "the policy is enforced at admission",
                "observedGeneration": generation,
            }
        ],
    }


def invalid_policy_status(message: str, generation: int) -> dict[str, Any]:
    """The status of a policy the gate cannot use (it is then not enforced: say so)."""
    return {
        "observedGeneration": generation,
        "audit": None,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "InvalidSpec",
                "message": f"not enforced: {message}",
                "observedGeneration": generation,
            }
        ],
    }
