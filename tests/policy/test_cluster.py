"""The gate on the real API server, through the operator's webhook.

Every decision here is the API server's answer to a ``kubectl create``: the webhook
configuration the operator registered, kopf's admission server, the gate. Waits poll until
a known-bad object is refused (the policy is in force); nothing asserts how long that took.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.clusters import KubectlError
from tests.policy.conftest import GateEnv, wait_for
from tests.policy.forest import deployment, digest, pod

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def golden_rule(env: GateEnv) -> dict[str, Any]:
    return {"allowedBaseImages": [{"image": f"{env.registry}/golden:*"}]}


def test_allowed_base_by_tag_glob(gate: GateEnv) -> None:
    ns, label = gate.namespace()
    gate.policy("golden-glob", label, rules=golden_rule(gate))
    gate.wait_denied(pod("probe", ns, gate.image("legacy")))
    assert gate.create(pod("app", ns, gate.image("app"))).ok
    refused = gate.create(pod("legacy", ns, gate.image("legacy")))
    assert not refused.ok
    assert "rule allowedBaseImages" in refused.stderr
    assert gate.cluster.kubectl("get", "pod", "-n", ns, "-o", "name").split() == ["pod/app"]


def test_allowed_base_by_digest(gate: GateEnv) -> None:
    ns, label = gate.namespace()
    gate.policy(
        "golden-digest", label, rules={"allowedBaseImages": [{"digest": gate.digest("golden")}]}
    )
    refused = gate.wait_denied(pod("probe", ns, gate.image("legacy")))
    assert f"allowed: digest {gate.digest('golden')}" in refused.stderr
    assert gate.create(pod("app", ns, gate.image("app"))).ok


def test_the_denial_message(gate: GateEnv) -> None:
    ns, label = gate.namespace()
    name = gate.policy("golden-bases", label, rules=golden_rule(gate))
    refused = gate.wait_denied(pod("web", ns, gate.image("legacy")))
    expected = (
        f'admission webhook "workloads.ancestry.imageancestry.io" denied the request: '
        f'denied by the ancestry gate: container "c0" (image "{gate.image("legacy")}", '
        f"ContainerImage {gate.platform}/legacy): AncestryPolicy {name}, rule "
        f"allowedBaseImages: base image {gate.platform}/debian-9 ({gate.image('debian-9')}, "
        f"{gate.digest('debian-9')}) is not allowed (ClosestAncestor); allowed: image "
        f"{gate.registry}/golden:*"
    )
    # kubectl puts its own prefix before the API server's message.
    text = refused.stderr.strip()
    assert text.startswith("Error from server") and text.endswith(": " + expected)
    assert text.count("denied by the ancestry gate") == 1


def test_a_denied_ancestor(gate: GateEnv) -> None:
    ns, label = gate.namespace()
    gate.policy(
        "no-stretch", label, rules={"deniedAncestors": [{"image": f"{gate.registry}/debian:9*"}]}
    )
    refused = gate.wait_denied(pod("legacy", ns, gate.image("legacy")))
    assert (
        f"rule deniedAncestors: ancestor {gate.platform}/debian-9 ({gate.image('debian-9')}"
        in refused.stderr
    )
    assert gate.create(pod("app", ns, gate.image("app"))).ok  # built on debian 10


def test_no_ancestors(gate: GateEnv) -> None:
    ns, label = gate.namespace()
    gate.policy("analysed", label, rules={"requireAncestors": True})
    refused = gate.wait_denied(pod("scratch", ns, gate.image("scratch")))
    assert "rule requireAncestors: the image has no ancestors" in refused.stderr
    assert gate.create(pod("app", ns, gate.image("app"))).ok


def test_unknown_image_with_deny_and_with_allow(gate: GateEnv) -> None:
    strict_ns, strict = gate.namespace()
    lenient_ns, lenient = gate.namespace()
    unknown = f"{gate.registry}/never-described:1"
    gate.policy("unknown-deny", strict, unknownImages="Deny")
    gate.policy("unknown-allow", lenient, unknownImages="Allow", rules={"requireAncestors": True})
    refused = gate.wait_denied(pod("u", strict_ns, unknown))
    assert "rule unknownImages: the image is described by no ContainerImage" in refused.stderr
    # The Allow policy is in force too (it refuses an image without ancestors)...
    gate.wait_denied(pod("s", lenient_ns, gate.image("scratch")))
    # ...and lets the unknown image in.
    assert gate.create(pod("u", lenient_ns, unknown)).ok


def test_warn_admits_with_warnings_on_stderr(gate: GateEnv) -> None:
    ns, label = gate.namespace()
    gate.policy("warn-base", label, action="Warn", rules=golden_rule(gate))
    attempts: list[str] = []

    def warned() -> str | None:
        code, stderr = gate.create_with_stderr(
            pod(f"legacy-{len(attempts)}", ns, gate.image("legacy"))
        )
        assert code == 0, stderr  # Warn admits: every attempt is created
        attempts.append(stderr)
        return stderr if "Warning:" in stderr else None

    stderr = wait_for(warned, what="an admission warning")
    assert "AncestryPolicy warn-base" in stderr and "rule allowedBaseImages" in stderr
    assert stderr.rstrip().endswith("(action Warn)")


def test_two_policies_on_one_namespace(gate: GateEnv) -> None:
    ns, label = gate.namespace()
    gate.policy(
        "two-a", label, rules={"deniedAncestors": [{"image": f"{gate.registry}/debian:9*"}]}
    )
    second = gate.policy("two-b", label, rules={"requireAncestors": True})
    gate.wait_denied(pod("legacy", ns, gate.image("legacy")))
    refused = gate.wait_denied(pod("scratch", ns, gate.image("scratch")))
    assert f"AncestryPolicy {second}, rule requireAncestors" in refused.stderr
    assert "two-a" not in refused.stderr  # scratch has no ancestor two-a denies
    assert gate.create(pod("app", ns, gate.image("app"))).ok


def test_a_namespace_no_policy_selects(gate: GateEnv) -> None:
    selected, label = gate.namespace()
    other, _ = gate.namespace()
    gate.policy("selective", label, rules=golden_rule(gate))
    gate.wait_denied(pod("legacy", selected, gate.image("legacy")))
    assert gate.create(pod("legacy", other, gate.image("legacy"))).ok


def test_kube_system_and_the_operator_namespace_are_never_gated(gate: GateEnv) -> None:
    ns, label = gate.namespace()
    for exempt in ("kube-system", gate.operator_namespace):
        gate.cluster.kubectl("label", "namespace", exempt, f"ancestry-test={label}", "--overwrite")
    try:
        gate.policy("everything", label)
        unknown = f"{gate.registry}/never-described:2"
        gate.wait_denied(pod("u", ns, unknown))
        for exempt in ("kube-system", gate.operator_namespace):
            assert gate.create(pod("u", exempt, unknown), dry_run=True).ok, exempt
    finally:
        for exempt in ("kube-system", gate.operator_namespace):
            gate.cluster.kubectl("label", "namespace", exempt, "ancestry-test-", check=False)


def test_a_deployment_whose_template_fails(gate: GateEnv) -> None:
    ns, label = gate.namespace()
    gate.policy("templates", label, rules=golden_rule(gate))
    refused = gate.wait_denied(deployment("legacy", ns, gate.image("legacy")))
    assert 'container "c0" (image "' + gate.image("legacy") in refused.stderr
    assert gate.create(deployment("app", ns, gate.image("app"))).ok
    # An update that swaps the image in is refused as well.
    with pytest.raises(KubectlError) as caught:
        gate.cluster.kubectl(
            "set", "image", "-n", ns, "deployment/app", f"c0={gate.image('legacy')}"
        )
    assert "rule allowedBaseImages" in caught.value.stderr
    cronjob = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly", "namespace": ns},
        "spec": {
            "schedule": "0 3 * * *",
            "jobTemplate": {
                "spec": {
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "job", "image": gate.image("legacy")}],
                        }
                    }
                }
            },
        },
    }
    assert 'container "job"' in gate.create(cronjob).stderr


def test_a_pod_referenced_by_digest(gate: GateEnv) -> None:
    ns, label = gate.namespace()
    gate.policy("by-digest", label, rules=golden_rule(gate))
    # The digest decides, whatever the name says.
    refused = gate.wait_denied(pod("p", ns, f"{gate.registry}/app:v1@{gate.digest('legacy')}"))
    assert f"ContainerImage {gate.platform}/legacy" in refused.stderr
    assert gate.create(pod("by-digest", ns, f"mirror.example/any@{gate.digest('app')}")).ok
    unknown = gate.create(pod("nope", ns, f"{gate.registry}/app:v1@{digest('unbuilt')}"))
    assert not unknown.ok and "rule unknownImages" in unknown.stderr


def test_audit_counts_move_when_an_images_base_changes(gate: GateEnv) -> None:
    ns, label = gate.namespace()
    # An image chain of this test's own: base (marked) -> mid -> top.
    chain = {"base": ["b1"], "mid": ["b1", "m1"], "top": ["b1", "m1", "t1"]}
    refs = {name: f"{gate.registry}/audit-{name}:1" for name in chain}
    images = []
    for name, layer_names in chain.items():
        metadata: dict[str, Any] = {"name": f"audit-{name}", "namespace": gate.platform}
        if name == "base":
            metadata["annotations"] = {"anchore.user/marked_base_image": "true"}
        images.append(
            {
                "apiVersion": "imageancestry.io/v1alpha1",
                "kind": "ContainerImage",
                "metadata": metadata,
                "spec": {
                    "image": refs[name],
                    "layers": [digest(f"{gate.salt}-audit-{x}") for x in layer_names],
                },
            }
        )
    gate.cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": images})
    )
    # Workloads that exist before the policy: the audit is what reports them.
    for i in range(3):
        assert gate.create(deployment(f"top-{i}", ns, refs["top"])).ok
    assert gate.create(pod("on-mid", ns, refs["mid"])).ok
    name = gate.policy("audited", label, rules={"allowedBaseImages": [{"image": refs["base"]}]})

    def audit() -> dict[str, Any]:
        return gate.policy_status(name).get("audit") or {}

    wait_for(lambda: audit().get("checkedWorkloads") == 4, what="the first audit")
    assert audit()["violatingWorkloads"] == 0  # base is marked: every base is audit-base
    # Unmark base: top's base becomes its parent, mid; mid's becomes base (its parent).
    gate.cluster.kubectl(
        "annotate", "cimg", "-n", gate.platform, "audit-base",
        "anchore.user/marked_base_image=false", "--overwrite",
    )  # fmt: skip
    moved = wait_for(
        lambda: (a := audit()).get("violatingWorkloads") == 3 and a, what="3 violations"
    )
    assert sorted(e["name"] for e in moved["examples"]) == ["top-0", "top-1", "top-2"]
    assert f"base image {gate.platform}/audit-mid" in moved["examples"][0]["message"]
    printed = gate.cluster.kubectl("get", "apol", name, "-o", "wide", "--no-headers").split()
    assert printed[0] == name and printed[1] == "Deny" and printed[3] == "3"
    # Mark it again: the count goes back.
    gate.cluster.kubectl(
        "annotate", "cimg", "-n", gate.platform, "audit-base",
        "anchore.user/marked_base_image=true", "--overwrite",
    )  # fmt: skip
    wait_for(lambda: audit().get("violatingWorkloads") == 0, what="no violations")


def test_a_pod_pinned_to_a_multi_arch_index_digest(gate: GateEnv) -> None:
    ns, label = gate.namespace()
    index_digest = digest(f"{gate.salt}-index")
    # What the importer writes for a platform image taken from an image index.
    gate.cluster.kubectl(
        "annotate", "cimg", "-n", gate.platform, "app",
        f"imageancestry.io/index-digest={index_digest}", "--overwrite",
    )  # fmt: skip
    try:
        gate.policy("index", label, rules=golden_rule(gate))
        gate.wait_denied(pod("probe", ns, gate.image("legacy")))
        pinned = pod("pinned", ns, f"{gate.registry}/app:v1@{index_digest}")
        wait_for(lambda: gate.create(pinned, dry_run=True).ok, what="the index digest to resolve")
        assert gate.create(pinned).ok
    finally:
        gate.cluster.kubectl(
            "annotate", "cimg", "-n", gate.platform, "app", "imageancestry.io/index-digest-"
        )
