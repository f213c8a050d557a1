"""The gate's in-memory state in the operator: events in any order leave it right."""

from __future__ import annotations

import asyncio
import types
from typing import Any

from image_ancestry.engine import AncestryIndex, ImageRecord
from image_ancestry.policy.admission import PolicyGate
from image_ancestry.policy.gate import LookupIndex
from tests.policy.forest import deployment, policy_manifest


def make_gate() -> PolicyGate:
    controller = types.SimpleNamespace(
        index=AncestryIndex(), ready=asyncio.Event(), can_write=lambda: True
    )
    gate = PolicyGate(controller, kube=None, namespace="ia-system")
    assert isinstance(controller.index, LookupIndex) and gate.index is controller.index
    return gate


def versioned(obj: dict[str, Any], version: str) -> dict[str, Any]:
    return {**obj, "metadata": {**obj["metadata"], "resourceVersion": version}}


def test_a_listing_older_than_a_deletion_does_not_bring_the_policy_back() -> None:
    gate = make_gate()
    policy = policy_manifest("p")
    gate.on_policy("ADDED", versioned(policy, "10"))
    gate.on_policy("DELETED", versioned(policy, "12"))
    gate.on_policy("ADDED", versioned(policy, "10"))  # the startup listing, late
    assert gate.gate.policies.names() == []
    gate.on_policy("ADDED", versioned(policy, "15"))  # created again
    assert gate.gate.policies.names() == ["p"]


def test_an_invalid_policy_is_reported_and_not_enforced() -> None:
    gate = make_gate()
    bad = policy_manifest("bad", rules={"allowedBaseImages": []})
    gate.on_policy("ADDED", versioned(bad, "3"))
    assert gate.gate.policies.names() == []
    assert "spec.rules.allowedBaseImages: needs at least one entry" in gate.invalid["bad"]
    status = gate.status_bodies({}, "2026-01-01T00:00:00Z")["bad"]
    assert status["conditions"][0]["reason"] == "InvalidSpec"
    assert status["conditions"][0]["message"].startswith("not enforced: AncestryPolicy bad")


def test_namespaces_and_workloads_bump_the_audit_version_only_on_change() -> None:
    gate = make_gate()
    ns = {"metadata": {"name": "team-a", "labels": {"policy": "strict"}}}
    gate.on_namespace("ADDED", ns)
    assert gate.namespaces["team-a"] == {
        "policy": "strict",
        "kubernetes.io/metadata.name": "team-a",
    }
    before = gate.version
    gate.on_namespace("MODIFIED", ns)
    workload = deployment("web", "team-a", "r.example/app:v1")
    gate.on_workload("Deployment", "ADDED", workload)
    gate.on_workload("Deployment", "MODIFIED", workload)
    assert gate.version == before + 1 and len(gate.workloads) == 1
    gate.on_workload("Deployment", "DELETED", workload)
    assert len(gate.workloads) == 0 and gate.version == before + 2


def test_the_importers_index_digest_annotation_names_the_image() -> None:
    gate = make_gate()
    index_digest = "sha256:" + "ab" * 32
    obj = {
        "metadata": {
            "namespace": "platform",
            "name": "app-amd64",
            "annotations": {"imageancestry.io/index-digest": index_digest},
        }
    }
    gate.index.upsert(
        ImageRecord(
            "platform",
            "app-amd64",
            ("sha256:" + "01" * 32,),
            "r.example/app:1",
            "sha256:" + "cd" * 32,
        )
    )
    gate.on_image("ADDED", obj)
    assert gate.index.lookup.resolve(f"r.example/app@{index_digest}").candidates == (
        ("platform", "app-amd64"),
    )
    gate.on_image(
        "MODIFIED",
        {"metadata": {**obj["metadata"], "annotations": {"imageancestry.io/index-digest": "junk"}}},
    )
    assert gate.index.lookup.resolve(f"r.example/app@{index_digest}").candidates == ()
