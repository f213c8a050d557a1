"""The audit over existing workloads: counts, owners, and counts moving with the index."""

from __future__ import annotations

import dataclasses
from typing import Any

from image_ancestry.policy.audit import WorkloadStore, audit, policy_status
from tests.policy.forest import PLATFORM, deployment, pod, policy_manifest
from tests.policy.test_gate import GOLDEN_ONLY, make_gate

LABELS = {"team-a": {"policy": "strict"}, "team-b": {}}


def owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"]["ownerReferences"] = [
        {
            "kind": owner["kind"],
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
            "controller": True,
        }
    ]
    return obj


def with_uid(obj: dict[str, Any], uid: str) -> dict[str, Any]:
    obj["metadata"]["uid"] = uid
    return obj


def test_audit_counts_failing_workloads_in_selected_namespaces_once_each() -> None:
    gate = make_gate(GOLDEN_ONLY)
    store = WorkloadStore()
    bad = with_uid(deployment("legacy-web", "team-a", "r.example/legacy:1"), "u1")
    store.upsert(bad)
    store.upsert(with_uid(owned_by(pod("legacy-web-1", "team-a", "r.example/legacy:1"), bad), "u2"))
    store.upsert(with_uid(pod("orphan", "team-a", "r.example/scratch:1"), "u3"))
    store.upsert(with_uid(pod("fine", "team-a", "r.example/app:v1"), "u4"))
    store.upsert(with_uid(pod("elsewhere", "team-b", "r.example/legacy:1"), "u5"))
    results = audit(gate, store, LABELS, store)
    result = results["golden-bases"]
    assert (result.checked, result.violating) == (3, 2)
    assert [(e["kind"], e["name"]) for e in result.examples] == [
        ("Deployment", "legacy-web"),
        ("Pod", "orphan"),
    ]
    assert result.examples[0]["message"].startswith('container "c0" (image "r.example/legacy:1"')
    # Without the owner the pod counts by itself.
    assert store.remove("Deployment", "team-a", "legacy-web")
    assert audit(gate, store, LABELS, store)["golden-bases"].violating == 2
    assert [e["name"] for e in audit(gate, store, LABELS, store)["golden-bases"].examples] == [
        "legacy-web-1",
        "orphan",
    ]


def test_audit_counts_move_when_an_images_base_changes() -> None:
    gate = make_gate(GOLDEN_ONLY)
    store = WorkloadStore()
    store.upsert(with_uid(deployment("web", "team-a", "r.example/app:v1"), "u1"))
    assert audit(gate, store, LABELS)["golden-bases"].violating == 0
    # Unmark golden: app's base falls back to its parent, node, which is not allowed.
    golden = gate.index.get((PLATFORM, "golden"))
    assert golden is not None
    unmarked = dataclasses.replace(golden, marked=False)
    gate.index.upsert(unmarked)
    gate.lookup.upsert(unmarked)
    result = audit(gate, store, LABELS)["golden-bases"]
    assert result.violating == 1
    assert (
        "base image platform/node (r.example/node:20) is not allowed"
        in result.examples[0]["message"]
    )
    gate.index.upsert(golden)
    assert audit(gate, store, LABELS)["golden-bases"].violating == 0


def test_every_policy_has_an_audit_and_exempt_namespaces_are_skipped() -> None:
    gate = make_gate(GOLDEN_ONLY, policy_manifest("everywhere", {}))
    store = WorkloadStore()
    store.upsert(with_uid(pod("dns", "kube-system", "r.example/mystery:1"), "u1"))
    store.upsert(with_uid(pod("p", "team-b", "r.example/mystery:1"), "u2"))
    results = audit(gate, store, LABELS)
    assert set(results) == {"golden-bases", "everywhere"}
    assert (results["golden-bases"].checked, results["everywhere"].violating) == (0, 1)
    status = policy_status(results["everywhere"], 3, "2026-01-01T00:00:00Z")
    assert status["observedGeneration"] == 3
    assert status["audit"]["violatingWorkloads"] == 1
    assert status["audit"]["examples"][0]["name"] == "p"


def test_store_reports_only_changes_the_gate_sees() -> None:
    store = WorkloadStore()
    obj = with_uid(deployment("d", "team-a", "r.example/app:v1"), "u1")
    assert store.upsert(obj)
    obj["spec"]["replicas"] = 3
    assert not store.upsert(obj)
    obj["spec"]["template"]["spec"]["containers"][0]["image"] = "r.example/app:v2"
    assert store.upsert(obj)
    assert not store.upsert({"kind": "ConfigMap", "metadata": {"name": "c"}})
    assert len(store) == 1
