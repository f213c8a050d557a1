"""The pure gate: every rule, resolution, selection and message, without a cluster."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from image_ancestry.engine import AncestryIndex, ImageRecord
from image_ancestry.policy.gate import (
    Decision,
    Gate,
    ImageLookup,
    LookupIndex,
    PolicySet,
    containers_of,
    normalise_glob,
)
from image_ancestry.policy.model import AncestryPolicy
from tests.policy.forest import (
    PLATFORM,
    deployment,
    digest,
    image_digest,
    layers,
    pod,
    policy_manifest,
    records,
)

NS = "team-a"
LABELS = {"kubernetes.io/metadata.name": NS, "policy": "strict"}
OPERATOR_NS = "image-ancestry-system"


def make_gate(*policies: dict[str, Any], extra: list[ImageRecord] | None = None) -> Gate:
    index = AncestryIndex.build([*records(), *(extra or [])])
    return Gate(
        index,
        ImageLookup.from_index(index),
        PolicySet(AncestryPolicy.from_manifest(p) for p in policies),
        frozenset({OPERATOR_NS}),
    )


def decide(gate: Gate, *images: str, namespace: str = NS, **kw: Any) -> Decision:
    labels = {**LABELS, "kubernetes.io/metadata.name": namespace}
    return gate.decide(namespace, labels, pod("p", namespace, *images, **kw))


GOLDEN_ONLY = policy_manifest(
    "golden-bases",
    {"matchLabels": {"policy": "strict"}},
    rules={"allowedBaseImages": [{"image": "r.example/golden:*"}]},
)


# --- allowedBaseImages ---------------------------------------------------------------------


def test_allowed_base_by_tag_glob_admits_an_image_built_on_it() -> None:
    decision = decide(make_gate(GOLDEN_ONLY), "r.example/app:v1")
    assert decision.allowed and not decision.violations and decision.message == ""


def test_allowed_base_by_tag_glob_refuses_another_base_naming_base_and_allowed() -> None:
    decision = decide(make_gate(GOLDEN_ONLY), "r.example/legacy:1")
    assert not decision.allowed
    assert decision.message == (
        'denied by the ancestry gate: container "c0" (image "r.example/legacy:1", '
        "ContainerImage platform/legacy): AncestryPolicy golden-bases, rule allowedBaseImages: "
        f"base image platform/debian-9 (r.example/debian:9, {image_digest('debian-9')}) "
        "is not allowed (ClosestAncestor); allowed: image r.example/golden:*"
    )


def test_allowed_base_by_digest() -> None:
    policy = policy_manifest(
        "by-digest", rules={"allowedBaseImages": [{"digest": image_digest("golden")}]}
    )
    gate = make_gate(policy)
    assert decide(gate, "r.example/app:v1").allowed
    refused = decide(gate, "r.example/legacy:1")
    assert not refused.allowed
    assert f"allowed: digest {image_digest('golden')}" in refused.message


def test_the_base_is_the_marked_ancestor_not_the_parent() -> None:
    # app's parent is node; its base is golden, which is marked. A rule allowing only
    # node as a base therefore refuses app.
    policy = policy_manifest(
        "node-base", rules={"allowedBaseImages": [{"image": "r.example/node:*"}]}
    )
    decision = decide(make_gate(policy), "r.example/app:v1")
    assert not decision.allowed
    assert "base image platform/golden (r.example/golden:1.0" in decision.message
    assert "(MarkedBaseImage)" in decision.message


def test_an_image_without_a_base_fails_an_allowed_base_rule() -> None:
    decision = decide(make_gate(GOLDEN_ONLY), "r.example/scratch:1")
    assert not decision.allowed
    assert "the image has no base image; allowed: image r.example/golden:*" in decision.message


def test_glob_in_short_docker_hub_form_matches_the_normalised_image() -> None:
    extra = ImageRecord(PLATFORM, "on-nginx", layers("a", "c", "ng", "z"), "r.example/web:1")
    short = policy_manifest("short", rules={"allowedBaseImages": [{"image": "nginx"}]})
    full = policy_manifest(
        "full", rules={"allowedBaseImages": [{"image": "docker.io/library/nginx:*"}]}
    )
    gate = make_gate(short, full, extra=[extra])
    assert decide(gate, "r.example/web:1").allowed


@pytest.mark.parametrize(
    ("glob", "normalised"),
    [
        ("debian:9*", "docker.io/library/debian:9*"),
        ("bitnami/*", "docker.io/bitnami/*"),
        ("r.example/golden", "r.example/golden:latest"),
        ("r.example/golden:*", "r.example/golden:*"),
        ("index.docker.io/library/nginx", "docker.io/library/nginx:latest"),
        ("localhost/x:1", "localhost/x:1"),
        ("*", "*"),
        ("*/golden:*", "*/golden:*"),
    ],
)
def test_normalise_glob(glob: str, normalised: str) -> None:
    assert normalise_glob(glob) == normalised


# --- deniedAncestors -----------------------------------------------------------------------


def test_denied_ancestor_by_tag_glob() -> None:
    policy = policy_manifest(
        "no-stretch", rules={"deniedAncestors": [{"image": "r.example/debian:9*"}]}
    )
    gate = make_gate(policy)
    assert decide(gate, "r.example/app:v1").allowed
    decision = decide(gate, "r.example/legacy:1")
    assert not decision.allowed
    assert (
        f"rule deniedAncestors: ancestor platform/debian-9 (r.example/debian:9, "
        f"{image_digest('debian-9')}) is denied (matches image r.example/debian:9*)"
    ) in decision.message


def test_denied_ancestor_by_digest_looks_past_the_parent() -> None:
    # debian-10 is app's fourth ancestor, far from its parent.
    policy = policy_manifest(
        "no-buster", rules={"deniedAncestors": [{"digest": image_digest("debian-10")}]}
    )
    decision = decide(make_gate(policy), "r.example/app:v1")
    assert not decision.allowed
    assert "ancestor platform/debian-10" in decision.message


def test_denied_ancestors_sees_ancestors_past_the_listed_cap() -> None:
    # 120 retags of one base: the status lists 100 ancestors; the denied one sorts last.
    base = layers("q")
    retags = [
        ImageRecord(PLATFORM, f"retag-{i:03d}", base, f"r.example/ok:{i}") for i in range(120)
    ]
    retags.append(ImageRecord(PLATFORM, "zzz-bad", base, "r.example/bad:1"))
    child = ImageRecord(PLATFORM, "child", (*base, digest("top")), "r.example/child:1")
    policy = policy_manifest("no-bad", rules={"deniedAncestors": [{"image": "r.example/bad:*"}]})
    gate = make_gate(policy, extra=[*retags, child])
    assert gate.index.status(child.key)["ancestorCount"] == 121
    decision = decide(gate, "r.example/child:1")
    assert not decision.allowed
    assert "ancestor platform/zzz-bad" in decision.message


# --- requireAncestors and unknownImages ----------------------------------------------------


def test_require_ancestors() -> None:
    policy = policy_manifest("analysed", rules={"requireAncestors": True})
    gate = make_gate(policy)
    assert decide(gate, "r.example/app:v1").allowed
    decision = decide(gate, "r.example/scratch:1")
    assert not decision.allowed
    assert "rule requireAncestors: the image has no ancestors" in decision.message


def test_unknown_image_denied_by_default_and_allowed_when_asked() -> None:
    deny = make_gate(policy_manifest("strict"))
    decision = decide(deny, "r.example/mystery:1")
    assert not decision.allowed
    assert decision.message == (
        'denied by the ancestry gate: container "c0" (image "r.example/mystery:1"): '
        "AncestryPolicy strict, rule unknownImages: the image is described by no "
        "ContainerImage (by digest or by reference); unknownImages is Deny"
    )
    allow = make_gate(
        policy_manifest("lenient", unknownImages="Allow", rules={"requireAncestors": True})
    )
    assert decide(allow, "r.example/mystery:1").allowed
    # Allow only covers unknown images: a known one still meets the rules.
    assert not decide(allow, "r.example/scratch:1").allowed


def test_text_that_is_no_reference_is_an_unknown_image() -> None:
    decision = decide(make_gate(policy_manifest("strict")), "Not A Reference")
    assert not decision.allowed
    assert "the image is no valid image reference" in decision.message


# --- resolution ----------------------------------------------------------------------------


def test_resolution_by_digest_wins_over_the_tag() -> None:
    gate = make_gate(GOLDEN_ONLY)
    # The tag says legacy, the digest says app: the runtime pulls the digest.
    assert decide(gate, f"r.example/legacy:1@{image_digest('app')}").allowed
    assert decide(gate, f"elsewhere.example/copy@{image_digest('app')}").allowed
    assert not decide(gate, f"r.example/app:v1@{image_digest('legacy')}").allowed


def test_unknown_digest_falls_back_only_to_images_that_declare_no_digest() -> None:
    gate = make_gate(policy_manifest("strict"))
    unknown = digest("never-built")
    # app declares another digest: it is certainly not this image.
    assert gate.lookup.resolve(f"r.example/app:v1@{unknown}").candidates == ()
    # node declares none: it may be.
    resolution = gate.lookup.resolve(f"r.example/node:20@{unknown}")
    assert resolution.candidates == ((PLATFORM, "node"),) and resolution.by == "reference"
    assert gate.lookup.resolve(f"r.example/node@{unknown}").candidates == ()


def test_resolution_normalises_as_the_runtime() -> None:
    gate = make_gate()
    expected = ((PLATFORM, "nginx"),)
    for text in ("nginx", "nginx:latest", "docker.io/library/nginx", "index.docker.io/nginx"):
        assert gate.lookup.resolve(text).candidates == expected, text
    assert gate.lookup.resolve("nginx:1.25").candidates == ()
    assert gate.lookup.resolve("r.example/app").candidates == ()  # :latest, not :v1


def test_every_container_image_describing_the_reference_must_pass() -> None:
    # A stale description of app:v1 in another namespace, built on debian-9.
    stale = ImageRecord("team-b", "app-old", layers("a", "b", "old"), "r.example/app:v1")
    gate = make_gate(GOLDEN_ONLY, extra=[stale])
    decision = decide(gate, "r.example/app:v1")
    assert not decision.allowed
    assert [v.image for v in decision.violations] == [("team-b", "app-old")]


def test_lookup_follows_upserts_and_removals() -> None:
    gate = make_gate(GOLDEN_ONLY)
    app = gate.index.get((PLATFORM, "app"))
    assert app is not None
    moved = dataclasses.replace(app, image="r.example/app:v2", digest=None)
    for structure in (gate.index, gate.lookup):
        structure.upsert(moved)
    assert gate.lookup.resolve("r.example/app:v1").candidates == ()
    assert gate.lookup.resolve(f"x/y@{image_digest('app')}").candidates == ()
    assert gate.lookup.resolve("r.example/app:v2").candidates == ((PLATFORM, "app"),)
    gate.index.remove(app.key)
    gate.lookup.remove(app.key)
    assert len(gate.lookup) == len(gate.index)
    assert not decide(gate, "r.example/app:v2").allowed


# --- actions, several policies, selection --------------------------------------------------


def test_warn_admits_with_warnings() -> None:
    policy = {**GOLDEN_ONLY, "spec": {**GOLDEN_ONLY["spec"], "action": "Warn"}}
    decision = decide(make_gate(policy), "r.example/legacy:1")
    assert decision.allowed and decision.message == ""
    assert len(decision.warnings) == 1
    assert decision.warnings[0].startswith('container "c0" (image "r.example/legacy:1"')
    assert decision.warnings[0].endswith("(action Warn)")


def test_two_policies_on_one_namespace_both_must_pass() -> None:
    no_stretch = policy_manifest(
        "no-stretch", {}, rules={"deniedAncestors": [{"image": "r.example/debian:9*"}]}
    )
    analysed = policy_manifest("analysed", {}, rules={"requireAncestors": True})
    gate = make_gate(no_stretch, analysed)
    assert decide(gate, "r.example/app:v1").allowed
    legacy = decide(gate, "r.example/legacy:1")
    assert [v.policy for v in legacy.violations] == ["no-stretch"]
    scratch = decide(gate, "r.example/scratch:1")
    assert [v.policy for v in scratch.violations] == ["analysed"]
    both = decide(gate, "r.example/legacy:1", "r.example/scratch:1")
    assert sorted(v.policy for v in both.violations) == ["analysed", "no-stretch"]
    assert "AncestryPolicy analysed" in both.message and "AncestryPolicy no-stretch" in both.message


def test_a_warn_policy_and_a_deny_policy_together() -> None:
    warn = policy_manifest("warn-base", {}, action="Warn", rules=GOLDEN_ONLY["spec"]["rules"])
    deny = policy_manifest("deny-unknown", {})
    gate = make_gate(warn, deny)
    decision = decide(gate, "r.example/legacy:1", "r.example/mystery:1")
    assert not decision.allowed
    assert "AncestryPolicy deny-unknown" in decision.message
    assert "warn-base" not in decision.message
    # warn-base fails twice (a base it does not allow, an unknown image): warnings only.
    assert len(decision.warnings) == 2
    assert all("AncestryPolicy warn-base" in warning for warning in decision.warnings)


def test_a_namespace_no_policy_selects_is_not_gated() -> None:
    gate = make_gate(GOLDEN_ONLY)
    decision = gate.decide(
        "team-b",
        {"kubernetes.io/metadata.name": "team-b"},
        pod("p", "team-b", "r.example/legacy:1"),
    )
    assert decision.allowed and not decision.violations


@pytest.mark.parametrize("namespace", ["kube-system", OPERATOR_NS])
def test_kube_system_and_the_operator_namespace_are_never_gated(namespace: str) -> None:
    gate = make_gate(policy_manifest("everywhere", {}))
    decision = decide(gate, "r.example/mystery:1", namespace=namespace)
    assert decision.allowed and decision.exempt


def test_match_expressions_select_namespaces() -> None:
    policy = policy_manifest(
        "prod",
        {
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod"]},
                {"key": "legacy", "operator": "DoesNotExist"},
            ]
        },
    )
    gate = make_gate(policy)
    selecting = gate.policies.selecting
    assert [p.name for p in selecting({"env": "prod"})] == ["prod"]
    assert selecting({"env": "dev"}) == ()
    assert selecting({"env": "prod", "legacy": "yes"}) == ()
    gate.policies.remove("prod")
    assert selecting({"env": "prod"}) == ()


# --- what is checked -----------------------------------------------------------------------


def test_init_and_ephemeral_containers_are_checked() -> None:
    gate = make_gate(GOLDEN_ONLY)
    decision = decide(gate, "r.example/app:v1", init=("r.example/legacy:1",))
    assert not decision.allowed
    assert decision.message.startswith('denied by the ancestry gate: init container "init0"')
    obj = pod("p", NS, "r.example/app:v1")
    obj["spec"]["ephemeralContainers"] = [{"name": "debug", "image": "r.example/legacy:1"}]
    ephemeral = gate.decide(NS, LABELS, obj)
    assert not ephemeral.allowed and 'ephemeral container "debug"' in ephemeral.message


def test_pod_templates_of_every_workload_kind() -> None:
    template = deployment("d", NS, "r.example/legacy:1")["spec"]["template"]
    objects = {
        "Deployment": {"spec": {"template": template}},
        "StatefulSet": {"spec": {"template": template}},
        "DaemonSet": {"spec": {"template": template}},
        "ReplicaSet": {"spec": {"template": template}},
        "Job": {"spec": {"template": template}},
        "CronJob": {"spec": {"jobTemplate": {"spec": {"template": template}}}},
    }
    gate = make_gate(GOLDEN_ONLY)
    for kind, body in objects.items():
        obj = {"kind": kind, "metadata": {"name": "w", "namespace": NS}, **body}
        assert [c.image for c in containers_of(obj)] == ["r.example/legacy:1"], kind
        assert not gate.decide(NS, LABELS, obj).allowed, kind
    assert containers_of({"kind": "ConfigMap", "data": {}}) == ()


def test_an_update_checks_only_containers_whose_image_changed() -> None:
    gate = make_gate(GOLDEN_ONLY)
    old = deployment("d", NS, "r.example/legacy:1")
    relabelled = deployment("d", NS, "r.example/legacy:1")
    relabelled["metadata"]["labels"] = {"touched": "yes"}
    assert gate.decide(NS, LABELS, relabelled, old).allowed
    swapped = deployment("d", NS, "r.example/scratch:1")
    assert not gate.decide(NS, LABELS, swapped, old).allowed
    assert not gate.decide(NS, LABELS, relabelled).allowed  # a create checks everything


def test_many_violations_are_summarised() -> None:
    gate = make_gate(policy_manifest("strict"))
    decision = decide(gate, *(f"r.example/unknown-{i}:1" for i in range(13)))
    assert decision.message.endswith("; and 3 more")
    assert len(decision.violations) == 13


def test_lookup_index_keeps_its_lookup_in_step() -> None:
    index = LookupIndex.build(records())
    assert len(index.lookup) == len(index) and index.version == 0
    assert index.lookup.resolve("r.example/app:v1").candidates == ((PLATFORM, "app"),)
    app = index.get((PLATFORM, "app"))
    assert app is not None
    index.upsert(dataclasses.replace(app, image="r.example/app:v9"))
    assert index.lookup.resolve("r.example/app:v9").candidates == ((PLATFORM, "app"),)
    assert index.lookup.resolve("r.example/app:v1").candidates == ()
    index.remove(app.key)
    assert index.lookup.resolve("r.example/app:v9").candidates == ()
    assert index.set_user_base_image_enabled(False)  # app is gone; node still has golden above
    assert index.version == 3
    index.remove(app.key)  # unknown now: nothing changes
    assert index.version == 3


def test_an_image_index_digest_resolves_to_the_platform_images_imported_from_it() -> None:
    gate = make_gate(GOLDEN_ONLY)
    index_digest = digest("multi-arch-index")
    pinned = f"r.example/app:v1@{index_digest}"
    assert gate.lookup.resolve(pinned).candidates == ()  # app declares another digest
    gate.lookup.set_extra_digests((PLATFORM, "app"), [index_digest])
    assert gate.lookup.resolve(pinned).candidates == ((PLATFORM, "app"),)
    assert decide(gate, pinned).allowed
    app = gate.index.get((PLATFORM, "app"))
    assert app is not None
    gate.lookup.upsert(dataclasses.replace(app, image="r.example/app:v2"))  # kept on upsert
    assert gate.lookup.resolve(f"x/y@{index_digest}").candidates == ((PLATFORM, "app"),)
    gate.lookup.set_extra_digests((PLATFORM, "app"), [])
    assert gate.lookup.resolve(f"x/y@{index_digest}").candidates == ()
    assert gate.lookup.resolve(f"x/y@{image_digest('app')}").candidates == ((PLATFORM, "app"),)
