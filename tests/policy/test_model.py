"""AncestryPolicy validation: what is refused, and that the message names the field."""

from __future__ import annotations

from typing import Any

import pytest

from image_ancestry.policy.model import Action, AncestryPolicy, PolicyError, UnknownImages
from tests.policy.forest import image_digest, policy_manifest


def test_defaults_are_deny_and_fail_closed() -> None:
    policy = AncestryPolicy.from_manifest(policy_manifest("p"))
    assert policy.spec.action is Action.DENY
    assert policy.spec.unknown_images is UnknownImages.DENY
    rules = policy.spec.rules
    assert rules.allowed_base_images is None and rules.denied_ancestors is None
    assert rules.require_ancestors is False
    assert policy.spec.namespace_selector.describe() == "<all>"


def test_a_full_policy_reads() -> None:
    manifest = policy_manifest(
        "golden-bases",
        {
            "matchLabels": {"policy": "strict"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["dev"]}],
        },
        action="Warn",
        unknownImages="Allow",
        rules={
            "allowedBaseImages": [{"image": "r.example/golden:*"}, {"digest": image_digest("g")}],
            "deniedAncestors": [{"image": "r.example/debian:9*"}],
            "requireAncestors": True,
        },
    )
    manifest["metadata"]["generation"] = 4
    policy = AncestryPolicy.from_manifest(manifest)
    assert policy.generation == 4 and policy.spec.action is Action.WARN
    assert policy.spec.namespace_selector.describe() == "policy=strict,tier notin (dev)"
    assert [m.describe() for m in policy.spec.rules.allowed_base_images or []] == [
        "image r.example/golden:*",
        f"digest {image_digest('g')}",
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, "spec.namespaceSelector: required"),
        (
            {"namespaceSelector": {}, "action": "Block"},
            "spec.action: \"Block\": expected 'Deny' or 'Warn'",
        ),
        (
            {"namespaceSelector": {}, "rules": {"allowedBaseImages": []}},
            "spec.rules.allowedBaseImages: needs at least one entry",
        ),
        (
            {
                "namespaceSelector": {},
                "rules": {"allowedBaseImages": [{"image": "a", "digest": image_digest("x")}]},
            },
            "spec.rules.allowedBaseImages[0]: give either image (a glob on spec.image) or "
            "digest (spec.digest), got both",
        ),
        (
            {"namespaceSelector": {}, "rules": {"deniedAncestors": [{}]}},
            "spec.rules.deniedAncestors[0]: give either image",
        ),
        (
            {"namespaceSelector": {}, "rules": {"deniedAncestors": [{"digest": "sha256:abc"}]}},
            'spec.rules.deniedAncestors[0].digest: "sha256:abc" is not a valid digest: '
            "sha256 needs 64",
        ),
        (
            {"namespaceSelector": {}, "rules": {"requireAncestors": "yes"}},
            "spec.rules.requireAncestors:",
        ),
        (
            {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "spec.namespaceSelector.matchExpressions[0]: operator In needs at least one value",
        ),
        (
            {"namespaceSelector": {}, "rules": {"allowedBaseImage": [{"image": "x"}]}},
            "spec.rules.allowedBaseImage: unknown field",
        ),
    ],
)
def test_invalid_specs_name_the_policy_and_the_field(spec: dict[str, Any], expected: str) -> None:
    manifest = policy_manifest("bad")
    manifest["spec"] = spec
    with pytest.raises(PolicyError) as caught:
        AncestryPolicy.from_manifest(manifest)
    assert str(caught.value).startswith("AncestryPolicy bad: ")
    assert expected in str(caught.value)


def test_a_policy_without_a_name_or_spec_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"metadata\.name: required"):
        AncestryPolicy.from_manifest({"kind": "AncestryPolicy", "metadata": {}, "spec": {}})
    with pytest.raises(PolicyError, match="AncestryPolicy p: spec: required"):
        AncestryPolicy.from_manifest({"metadata": {"name": "p"}, "spec": None})
