"""The webhook's answers as pure functions: every rule, its message, and who may mark."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from image_ancestry.model import MARK_ANNOTATION
from image_ancestry.webhook.config import AdminConfig, parse_admin_config, split_names
from image_ancestry.webhook.decisions import MARK_FIELD, decide
from tests.webhook.conftest import manifest

L1 = "sha256:" + "1" * 64
L2 = "sha256:" + "2" * 64
CONFIG = parse_admin_config({"admin_groups": "platform-admins", "admin_users": "bob"}, source="cm")
ALICE = {"username": "alice", "groups": ["devs", "system:authenticated"]}
BOB = {"username": "bob", "groups": ["system:authenticated"]}
ADMIN = {"username": "carol", "groups": ["platform-admins", "system:authenticated"]}


def image(mark: str | None = None, layers: list[Any] | None = None) -> dict[str, Any]:
    return manifest("team-a", "img", layers if layers is not None else [L1], mark)


def request(
    user: dict[str, Any], new: dict[str, Any], old: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "operation": "UPDATE" if old is not None else "CREATE",
        "userInfo": user,
        "object": new,
        "oldObject": old,
        "namespace": "team-a",
    }


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (None, None),  # create unmarked
        (None, "false"),  # create explicitly unmarked: the same as absent
        ("false", None),  # removing "false" changes nothing
        ("true", "true"),  # another field of a marked image
        ("true", " TRUE "),  # the same value, written differently
        ("bogus", None),  # cleaning up a value that marked nothing
        ("bogus", "false"),
    ],
)
def test_non_admin_may_make_changes_that_do_not_change_the_mark(
    old: str | None, new: str | None
) -> None:
    decision = decide(request(ALICE, image(new, layers=[L1, L2]), image(old)), CONFIG)
    assert decision.allowed, decision.message
    if old is None:  # and the same as a create
        assert decide(request(ALICE, image(new)), CONFIG).allowed


@pytest.mark.parametrize(
    ("old", "new", "verb"),
    [
        (None, "true", "mark this image"),
        ("false", "true", "mark this image"),
        ("true", "false", "unmark this base image"),
        ("true", None, "remove the base-image mark"),
        ("bogus", "true", "mark this image"),
    ],
)
def test_non_admin_may_not_change_the_mark(old: str | None, new: str | None, verb: str) -> None:
    decision = decide(request(ALICE, image(new), image(old)), CONFIG)
    assert not decision.allowed
    assert decision.rule == "rule 7" and decision.code == 403
    message = decision.message
    assert "rule 7" in message and verb in message and MARK_FIELD in message
    # It says who asked, and how to be allowed: which lists, of which ConfigMap.
    assert '"alice"' in message and "devs" in message
    assert "admin_groups (platform-admins)" in message and "admin_users (bob)" in message
    assert "of cm" in message


def test_non_admin_may_not_create_a_marked_image() -> None:
    decision = decide(request(ALICE, image("true")), CONFIG)
    assert not decision.allowed
    assert "create an image marked as a base image" in decision.message


@pytest.mark.parametrize("user", [BOB, ADMIN], ids=["admin-user", "admin-group"])
@pytest.mark.parametrize(("old", "new"), [(None, "true"), ("true", None), ("true", "false")])
def test_admins_may_change_the_mark(user: dict[str, Any], old: str | None, new: str | None) -> None:
    assert decide(request(user, image(new), image(old)), CONFIG).allowed
    assert decide(request(user, image(new)), CONFIG).allowed


@pytest.mark.parametrize("value", ["yes", "1", "", "  ", "truee", "True\n1"])
@pytest.mark.parametrize("user", [ALICE, ADMIN], ids=["non-admin", "admin"])
def test_values_other_than_true_or_false_are_denied_to_everyone(
    value: str, user: dict[str, Any]
) -> None:
    decision = decide(request(user, image(value)), CONFIG)
    assert not decision.allowed
    assert decision.rule == "rule 5" and decision.code == 422
    assert MARK_FIELD in decision.message and '"true"' in decision.message


def test_an_invalid_value_already_stored_says_how_to_clean_it_up() -> None:
    decision = decide(request(ALICE, image("yes", layers=[L1, L2]), image("yes")), CONFIG)
    assert not decision.allowed and decision.rule == "rule 5"
    assert "remove the annotation" in decision.message


@pytest.mark.parametrize(
    ("spec", "field", "shown"),
    [
        ({"layers": [L1, "sha256:abc"]}, "spec.layers[1]", '"sha256:abc"'),
        ({"layers": [L1, "sha256:" + "A" * 64]}, "spec.layers[1]", "lower-case hex"),
        ({"layers": [L1], "digest": "md5"}, "spec.digest", '"md5"'),
        ({"layers": []}, "spec.layers", "at least one layer"),
        ({"layers": [L1], "colour": "red"}, "spec.colour", "unknown field"),
    ],
)
def test_bad_specs_are_denied_naming_the_field_and_the_value(
    spec: dict[str, Any], field: str, shown: str
) -> None:
    obj = image()
    obj["spec"] = spec
    decision = decide(request(ADMIN, obj), CONFIG)
    assert not decision.allowed and decision.rule == "spec" and decision.code == 422
    assert f": {field}: " in decision.message and shown in decision.message


def test_unknown_admins_deny_mark_changes_only() -> None:
    """Before the ConfigMap is read nobody is known to be an admin: fail closed, say retry."""
    denied = decide(request(ADMIN, image("true")), None)
    assert not denied.allowed and denied.code == 503 and "Retry" in denied.message
    assert decide(request(ALICE, image()), None).allowed


def test_deleting_object_may_drop_finalizers_despite_old_content() -> None:
    old = image("yes")
    new = image("yes")
    new["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert decide(request(ALICE, new, old), CONFIG).allowed
    new["metadata"]["annotations"][MARK_ANNOTATION] = "true"
    assert not decide(request(ALICE, new, old), CONFIG).allowed


def test_a_non_canonical_value_is_admitted_with_a_warning() -> None:
    decision = decide(request(ADMIN, image(" True")), CONFIG)
    assert decision.allowed and decision.warnings
    assert '"true"' in decision.warnings[0]
    assert decide(request(ADMIN, image("true")), CONFIG).warnings == ()


def test_other_operations_and_subresources_are_not_judged() -> None:
    bad = image("yes", layers=[])
    assert decide({**request(ALICE, bad), "operation": "DELETE"}, CONFIG).allowed
    assert decide({**request(ALICE, bad, image()), "subResource": "status"}, CONFIG).allowed


def test_config_defaults_and_parsing() -> None:
    assert parse_admin_config(None, source="x") == AdminConfig(("system:masters",), (), "x")
    assert parse_admin_config({}, source="x").admin_groups == ("system:masters",)
    explicit = parse_admin_config({"admin_groups": "", "admin_users": " a ,b,, a,"}, source="x")
    assert explicit.admin_groups == () and explicit.admin_users == ("a", "b")
    assert not explicit.is_admin("c", ["system:masters"])
    assert explicit.is_admin("b", [])


@given(st.lists(st.text(alphabet="ab ,:-", max_size=6), max_size=6))
def test_split_names_trims_and_drops_empties(items: list[str]) -> None:
    names = split_names(",".join(items))
    assert all(n and n == n.strip() and "," not in n for n in names)
    assert len(set(names)) == len(names)
    assert set(names) == {i.strip() for part in items for i in part.split(",") if i.strip()}
