"""The webhook on the real API server: alice (group devs) against an admin (system:masters).

The operator runs as a subprocess and registers its webhook itself; every request here goes
through kube-apiserver, which calls it over HTTPS with the userInfo it authenticated.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
from cryptography import x509

from image_ancestry.model import MARK_ANNOTATION
from tests.clusters import TestCluster
from tests.webhook.conftest import (
    ALICE,
    Operator,
    kubectl_error,
    layer,
    manifest,
    wait_for,
)

pytestmark = pytest.mark.cluster

ANNOTATION = MARK_ANNOTATION


def _mark_of(cluster: TestCluster, namespace: str, name: str) -> str | None:
    obj = json.loads(cluster.kubectl("get", "cimg", name, "-n", namespace, "-o", "json"))
    value: str | None = (obj["metadata"].get("annotations") or {}).get(ANNOTATION)
    return value


def test_registration_is_https_fail_closed_with_a_short_timeout(
    cluster: TestCluster, operator: Operator
) -> None:
    config = json.loads(
        cluster.kubectl(
            "get", "validatingwebhookconfiguration", operator.configuration, "-o", "json"
        )
    )
    (hook,) = config["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] <= 5
    assert hook["sideEffects"] == "None"
    assert hook["clientConfig"]["url"].startswith("https://127.0.0.1:")
    assert hook["rules"] == [
        {
            "apiGroups": ["imageancestry.io"],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["containerimages"],
            "scope": "Namespaced",
        }
    ]
    ca = x509.load_pem_x509_certificate(base64.b64decode(hook["clientConfig"]["caBundle"]))
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca


def test_alice_may_create_and_edit_unmarked_images(
    cluster: TestCluster, operator: Operator, namespace: str, alice: Callable[..., str]
) -> None:
    alice("apply", "-f", "-", input=json.dumps(manifest(namespace, "app", [layer(1)])))
    alice("annotate", "cimg", "app", "team=payments")
    alice(
        "patch", "cimg", "app", "--type=merge", "-p", json.dumps({"spec": {"layers": [layer(2)]}})
    )
    # "false" and absent mean the same (rule 5): adding or removing "false" changes nothing.
    alice("annotate", "cimg", "app", f"{ANNOTATION}=false")
    alice("annotate", "cimg", "app", f"{ANNOTATION}-")
    spec = json.loads(alice("get", "cimg", "app", "-o", "json"))["spec"]
    assert spec == {"layers": [layer(2)]}


def test_alice_may_edit_other_fields_of_a_marked_image(
    cluster: TestCluster, operator: Operator, namespace: str, alice: Callable[..., str]
) -> None:
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps(manifest(namespace, "golden", [layer(1)], "true"))
    )
    alice("annotate", "cimg", "golden", "owner=platform")
    alice("patch", "cimg", "golden", "--type=merge", "-p", '{"spec": {"image": "r.example/g:2"}}')
    # Re-applying the same mark, spelled differently, is no change either.
    alice("annotate", "--overwrite", "cimg", "golden", f"{ANNOTATION}= TRUE")
    assert _mark_of(cluster, namespace, "golden") == " TRUE"


@pytest.mark.parametrize(
    ("start", "args", "verb"),
    [
        (None, ["annotate", "cimg", "img", f"{ANNOTATION}=true"], "mark this image"),
        ("false", ["annotate", "--overwrite", "cimg", "img", f"{ANNOTATION}=true"], "mark"),
        ("true", ["annotate", "--overwrite", "cimg", "img", f"{ANNOTATION}=false"], "unmark"),
        ("true", ["annotate", "cimg", "img", f"{ANNOTATION}-"], "remove the base-image mark"),
    ],
    ids=["mark", "false-to-true", "unmark", "remove"],
)
def test_alice_may_not_change_the_mark(
    cluster: TestCluster,
    operator: Operator,
    namespace: str,
    alice: Callable[..., str],
    start: str | None,
    args: list[str],
    verb: str,
) -> None:
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps(manifest(namespace, "img", [layer(1)], start))
    )
    stderr = kubectl_error(cluster, *ALICE, "-n", namespace, *args)
    assert "denied the request" in stderr and "rule 7" in stderr and verb in stderr
    assert '"alice"' in stderr and "admin_groups (system:masters)" in stderr
    assert f"ConfigMap {operator.namespace}/image-ancestry-config" in stderr
    assert _mark_of(cluster, namespace, "img") == start  # nothing was stored


def test_alice_may_not_create_a_marked_image(
    cluster: TestCluster, operator: Operator, namespace: str, alice: Callable[..., str]
) -> None:
    doc = json.dumps(manifest(namespace, "sneaky", [layer(1)], "true"))
    stderr = kubectl_error(cluster, *ALICE, "-n", namespace, "create", "-f", "-", input=doc)
    assert "rule 7" in stderr and "create an image marked as a base image" in stderr
    assert "sneaky" not in alice("get", "cimg", "-o", "name")


def test_an_admin_may_mark_unmark_and_remove(
    cluster: TestCluster, operator: Operator, namespace: str
) -> None:
    cluster.kubectl(
        "create", "-f", "-", input=json.dumps(manifest(namespace, "img", [layer(1)], "true"))
    )
    cluster.kubectl(
        "annotate", "--overwrite", "-n", namespace, "cimg", "img", f"{ANNOTATION}=false"
    )
    assert _mark_of(cluster, namespace, "img") == "false"
    cluster.kubectl("annotate", "--overwrite", "-n", namespace, "cimg", "img", f"{ANNOTATION}=true")
    cluster.kubectl("annotate", "-n", namespace, "cimg", "img", f"{ANNOTATION}-")
    assert _mark_of(cluster, namespace, "img") is None


@pytest.mark.parametrize("value", ["yes", "1", "", "truefalse"])
def test_other_values_are_denied_even_to_an_admin(
    cluster: TestCluster, operator: Operator, namespace: str, value: str
) -> None:
    doc = json.dumps(manifest(namespace, "odd", [layer(1)], value))
    stderr = kubectl_error(cluster, "create", "-f", "-", input=doc)
    assert "rule 5" in stderr and f'is "{value}"' in stderr
    assert f'metadata.annotations["{ANNOTATION}"]' in stderr


@pytest.mark.parametrize(
    ("spec", "field", "value"),
    [
        ({"layers": [layer(1), "sha256:abc"]}, "spec.layers[1]", "sha256:abc"),
        ({"layers": [layer(1)], "digest": "sha256:" + "F" * 64}, "spec.digest", "F" * 64),
        ({"layers": ["sha512:" + "a" * 64]}, "spec.layers[0]", "a" * 64),
        ({"layers": [layer(1)], "image": "not a reference"}, "spec.image", "not a reference"),
    ],
    ids=["short-sha256", "upper-case", "short-sha512", "image-with-spaces"],
)
def test_bad_specs_are_denied_with_the_field_named(
    cluster: TestCluster,
    operator: Operator,
    namespace: str,
    spec: dict[str, object],
    field: str,
    value: str,
) -> None:
    """Digests are refused by the CRD's schema already (pattern, CEL); what the schema lets
    through, such as white space in spec.image, the webhook refuses. Either way the message
    names the field and shows the bad value."""
    doc = manifest(namespace, "bad", [])
    doc["spec"] = spec
    stderr = kubectl_error(cluster, "create", "-f", "-", input=json.dumps(doc))
    assert field in stderr and value in stderr


def test_admin_groups_change_takes_effect_without_restart(
    cluster: TestCluster, operator: Operator, namespace: str, alice: Callable[..., str]
) -> None:
    pid = operator.proc.pid
    alice("create", "-f", "-", input=json.dumps(manifest(namespace, "img", [layer(1)])))
    mark = ["annotate", "--dry-run=server", "--overwrite", "cimg", "img", f"{ANNOTATION}=true"]

    try:
        operator.set_config(admin_groups="system:masters, devs")
        wait_for(lambda: _alice_allowed(alice, mark), what="devs to become admins")
        operator.set_config(admin_groups="system:masters", admin_users="alice")
        wait_for(lambda: _alice_allowed(alice, mark), what="alice in admin_users")
        operator.set_config(admin_groups="system:masters")
        wait_for(lambda: not _alice_allowed(alice, mark), what="devs to be admins no more")
        # The admin is still an admin, and the same process answered throughout.
        cluster.kubectl("annotate", "-n", namespace, "cimg", "img", f"{ANNOTATION}=true")
        assert operator.proc.pid == pid and operator.proc.poll() is None
    finally:
        cluster.kubectl(
            "delete",
            "configmap",
            "image-ancestry-config",
            "-n",
            operator.namespace,
            "--ignore-not-found",
        )


def _alice_allowed(alice: Callable[..., str], args: list[str]) -> bool:
    try:
        alice(*args)
    except Exception as exc:  # KubectlError: only a rule-7 denial counts as "not allowed"
        assert "rule 7" in str(exc), exc
        return False
    return True
