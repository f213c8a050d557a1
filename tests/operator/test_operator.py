"""The operator end to end on the real API server: the seed's forest and how it moves."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from tests.operator.conftest import Images, Operator, load_examples, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def ref(doc: dict[str, Any], **extra: Any) -> dict[str, Any]:
    out = {
        "namespace": doc["metadata"]["namespace"],
        "name": doc["metadata"]["name"],
        "image": doc["spec"]["image"],
        "digest": doc["spec"]["digest"],
    }
    out.update(extra)
    return out


def converged(images: Images, namespace: str, name: str) -> dict[str, Any] | None:
    status = images.status(namespace, name)
    ready = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
    return status if ready and ready[0]["status"] == "True" else None


def test_seed_examples_end_to_end(
    images: Images, make_namespace: Callable[[str], str], start_operator: Callable[..., Operator]
) -> None:
    ns = {"platform": make_namespace("platform"), "team-a": make_namespace("team-a")}
    docs = {d["metadata"]["name"]: d for d in load_examples(images, ns)}
    assert set(docs) == {"debian-10", "mynode-latest", "myapp-v1", "mypython-latest"}
    images.apply(*docs.values())
    start_operator()
    debian, mynode, myapp = (docs[n] for n in ("debian-10", "mynode-latest", "myapp-v1"))

    status = images.wait_base(ns["team-a"], "myapp-v1", (ns["platform"], "mynode-latest"))
    ready = status.pop("conditions")
    assert status == {
        "observedGeneration": 1,
        "layerCount": 4,
        "ancestorCount": 2,
        "ancestors": [ref(mynode, layerCount=3), ref(debian, layerCount=2)],
        "parent": ref(mynode),
        "baseImage": ref(mynode, reason="MarkedBaseImage"),
    }
    assert [(c["type"], c["status"], c["reason"], c["observedGeneration"]) for c in ready] == [
        ("Ready", "True", "Computed", 1)
    ]

    python = images.wait_base(ns["team-a"], "mypython-latest", (ns["platform"], "debian-10"))
    assert python["parent"] == ref(debian)
    assert python["baseImage"] == ref(debian, reason="ClosestAncestor")
    node = images.wait_base(ns["platform"], "mynode-latest", (ns["platform"], "debian-10"))
    assert node["ancestorCount"] == 1 and node["baseImage"]["reason"] == "ClosestAncestor"

    root = wait_for(lambda: converged(images, ns["platform"], "debian-10"), what="debian-10")
    assert root["layerCount"] == 2 and root["ancestorCount"] == 0 and root["ancestors"] == []
    assert "parent" not in root and "baseImage" not in root  # null: no ancestor, no base

    # kubectl's columns come from the CRD: NAME IMAGE LAYERS PARENT BASE AGE, wide adds REASON
    # and INTRODUCED (base comparison; empty here: no VulnerabilityReports)
    table = images.cluster.kubectl("get", "cimg", "-n", ns["team-a"], "-o", "wide")
    header, *rows = table.splitlines()
    columns = ["NAME", "IMAGE", "LAYERS", "PARENT", "BASE", "AGE", "REASON", "INTRODUCED"]
    assert header.split() == columns
    row = next(r.split() for r in rows if r.startswith("myapp-v1"))
    assert row[1:5] == [
        myapp["spec"]["image"],
        "4",
        mynode["spec"]["image"],
        mynode["spec"]["image"],
    ]
    assert row[-1] == "MarkedBaseImage"

    # kopf left no trace on the objects: no finalizers, no annotations of its own.
    obj = images.get(ns["team-a"], "myapp-v1")
    assert not obj["metadata"].get("finalizers")
    assert not [a for a in obj["metadata"].get("annotations", {}) if "kopf" in a]
    assert "kopf" not in obj.get("status", {})


def test_deleting_an_ancestor_moves_descendants_up(
    images: Images, namespace: str, start_operator: Callable[..., Operator]
) -> None:
    images.apply(
        images.manifest(namespace, "base", ["a"]),
        images.manifest(namespace, "golden", ["a", "b"], marked="true"),
        images.manifest(namespace, "middle", ["a", "b", "c"]),
        images.manifest(namespace, "app", ["a", "b", "c", "d"]),
    )
    start_operator()
    images.wait_base(namespace, "app", (namespace, "golden"), "MarkedBaseImage")
    status = images.status(namespace, "app")
    assert status["parent"]["name"] == "middle"

    images.delete(namespace, "middle")  # the parent goes: golden is parent and base
    status = images.wait_base(namespace, "app", (namespace, "golden"), "MarkedBaseImage")
    wait_for(
        lambda: images.status(namespace, "app")["parent"]["name"] == "golden", what="parent golden"
    )
    assert images.status(namespace, "app")["ancestorCount"] == 2

    images.delete(namespace, "golden")  # the marked base goes: the closest ancestor is base
    status = images.wait_base(namespace, "app", (namespace, "base"), "ClosestAncestor")
    assert status["parent"]["name"] == "base" and status["ancestorCount"] == 1
    events = wait_for(
        lambda: images.events(namespace, "app", "BaseImageChanged"), what="a BaseImageChanged event"
    )
    assert any(f"from {namespace}/golden to {namespace}/base" in e["message"] for e in events)

    images.delete(namespace, "base")  # no ancestor left: no parent, no base
    status = images.wait_base(namespace, "app", None)
    assert status["ancestorCount"] == 0 and "parent" not in status


def test_marking_and_unmarking_an_ancestor(
    images: Images, namespace: str, start_operator: Callable[..., Operator]
) -> None:
    images.apply(
        images.manifest(namespace, "distro", ["a"]),
        images.manifest(namespace, "runtime", ["a", "b"]),
        images.manifest(namespace, "app", ["a", "b", "c"]),
    )
    start_operator()
    images.wait_base(namespace, "app", (namespace, "runtime"), "ClosestAncestor")

    images.mark(namespace, "distro", "true")  # the only marked ancestor wins over the parent
    images.wait_base(namespace, "app", (namespace, "distro"), "MarkedBaseImage")
    images.mark(namespace, "runtime", " TRUE ")  # trimmed, case-insensitive; closest marked
    images.wait_base(namespace, "app", (namespace, "runtime"), "MarkedBaseImage")
    images.mark(namespace, "runtime", "false")
    images.wait_base(namespace, "app", (namespace, "distro"), "MarkedBaseImage")
    images.mark(namespace, "distro", "yes")  # marks nothing: back to the parent
    images.wait_base(namespace, "app", (namespace, "runtime"), "ClosestAncestor")
    status = wait_for(
        lambda: "marks nothing" in images.status(namespace, "distro")["conditions"][-1]["message"],
        what="the Ready message naming the bad annotation value",
    )
    assert status
    images.mark(namespace, "distro", None)  # removed: unmarked
    images.wait_base(namespace, "app", (namespace, "runtime"), "ClosestAncestor")


def test_a_layer_edit_moves_an_image_within_the_forest(
    images: Images, namespace: str, start_operator: Callable[..., Operator]
) -> None:
    images.apply(
        images.manifest(namespace, "debian", ["a", "b"]),
        images.manifest(namespace, "node", ["a", "b", "n"]),
        images.manifest(namespace, "python", ["a", "b", "p"]),
        images.manifest(namespace, "app", ["a", "b", "n", "x"]),
    )
    start_operator()
    images.wait_base(namespace, "app", (namespace, "node"))

    # app is rebuilt FROM python: it leaves node's subtree for python's
    images.patch(namespace, "app", {"spec": {"layers": [images.layer(x) for x in "abpx"]}})
    status = images.wait_base(namespace, "app", (namespace, "python"), "ClosestAncestor")
    assert [a["name"] for a in status["ancestors"]] == ["python", "debian"]
    assert status["observedGeneration"] == 2
    assert status["conditions"][-1]["observedGeneration"] == 2

    # python is rebuilt on top of node: it moves below node, and app (below python) follows
    images.patch(namespace, "python", {"spec": {"layers": [images.layer(x) for x in "abnp"]}})
    images.patch(namespace, "app", {"spec": {"layers": [images.layer(x) for x in "abnpx"]}})
    status = wait_for(
        lambda: (
            images.status(namespace, "app").get("ancestorCount") == 3
            and images.status(namespace, "app")
        ),
        what="app below python below node",
    )
    assert [a["name"] for a in status["ancestors"]] == ["python", "node", "debian"]
    assert status["baseImage"]["name"] == "python" and status["observedGeneration"] == 3
    python = images.wait_base(namespace, "python", (namespace, "node"), "ClosestAncestor")
    assert [a["name"] for a in python["ancestors"]] == ["node", "debian"]
    # identical layer lists are not ancestors of each other
    images.patch(namespace, "debian", {"spec": {"layers": [images.layer(x) for x in "abn"]}})
    node = wait_for(
        lambda: (
            images.status(namespace, "node").get("ancestorCount") == 0
            and images.status(namespace, "node")
        ),
        what="node and debian twins: neither an ancestor",
    )
    assert "parent" not in node


def test_ancestry_across_namespaces(
    images: Images, make_namespace: Callable[[str], str], start_operator: Callable[..., Operator]
) -> None:
    platform, team_a, team_b = (make_namespace(s) for s in ("platform", "team-a", "team-b"))
    images.apply(
        images.manifest(platform, "golden", ["g1", "g2"], marked="true"),
        images.manifest(team_a, "golden", ["g1", "g2"]),  # a same-named twin elsewhere
        images.manifest(team_a, "svc", ["g1", "g2", "s"]),
        images.manifest(team_b, "job", ["g1", "g2", "s", "j"]),
    )
    start_operator()
    status = images.wait_base(team_b, "job", (platform, "golden"), "MarkedBaseImage")
    # equal layer counts are ordered by namespace, then name
    expected = sorted([(platform, "golden"), (team_a, "golden")])
    assert [(a["namespace"], a["name"]) for a in status["ancestors"]] == [
        (team_a, "svc"),
        *expected,
    ]
    assert (status["parent"]["namespace"], status["parent"]["name"]) == (team_a, "svc")
    svc = images.wait_base(team_a, "svc", (platform, "golden"), "MarkedBaseImage")
    assert (svc["parent"]["namespace"], svc["parent"]["name"]) == expected[0]


def test_a_bad_object_is_reported_and_does_not_stop_the_operator(
    images: Images, namespace: str, start_operator: Callable[..., Operator]
) -> None:
    images.apply(
        images.manifest(namespace, "base", ["a"]),
        # the CRD lets this through (a non-empty string); the model refuses white space
        images.manifest(namespace, "bad", ["a", "b"], image="not a reference"),
        images.manifest(namespace, "app", ["a", "b", "c"]),
    )
    op = start_operator()

    def bad_reported() -> dict[str, Any] | None:
        status = images.status(namespace, "bad")
        ready = status.get("conditions", [{}])[-1]
        return ready if ready.get("status") == "False" else None

    ready = wait_for(bad_reported, what="Ready=False on the bad image")
    assert ready["reason"] == "InvalidSpec"
    assert "spec.image" in ready["message"] and "not a reference" in ready["message"]
    assert f"{namespace}/bad" in ready["message"]
    # the bad image is nobody's ancestor; the others are computed as if it did not exist
    images.wait_base(namespace, "app", (namespace, "base"), "ClosestAncestor")

    images.patch(namespace, "bad", {"spec": {"image": "registry.example.com/fixed:1"}})
    images.wait_base(namespace, "app", (namespace, "bad"), "ClosestAncestor")
    fixed = wait_for(lambda: converged(images, namespace, "bad"), what="bad fixed")
    assert fixed["observedGeneration"] == 2 and fixed["parent"]["name"] == "base"
    assert op.alive()


def test_declared_base_is_compared_with_the_computed_base(
    images: Images, namespace: str, start_operator: Callable[..., Operator]
) -> None:
    golden = images.manifest(namespace, "golden", ["a", "b"])
    golden["spec"]["digest"] = images.layer("golden-manifest")
    images.apply(
        golden,
        images.manifest(
            namespace,
            "agrees",
            ["a", "b", "c"],
            annotations={"imageancestry.io/declared-base-digest": golden["spec"]["digest"]},
        ),
        images.manifest(
            namespace,
            "disagrees",
            ["a", "b", "d"],
            annotations={"imageancestry.io/declared-base-name": "docker.io/library/debian:12"},
        ),
        images.manifest(namespace, "silent", ["a", "b", "e"]),
    )
    start_operator()
    agrees = images.wait_base(namespace, "agrees", (namespace, "golden"))
    assert agrees["declaredBase"] == {"digest": golden["spec"]["digest"], "agrees": True}
    disagrees = images.wait_base(namespace, "disagrees", (namespace, "golden"))
    assert disagrees["declaredBase"] == {"name": "docker.io/library/debian:12", "agrees": False}
    assert "declaredBase" not in images.wait_base(namespace, "silent", (namespace, "golden"))

    # the name form is compared normalised: "debian:12" is docker.io/library/debian:12
    images.patch(namespace, "golden", {"spec": {"image": "debian:12"}})
    wait_for(
        lambda: images.status(namespace, "disagrees").get("declaredBase", {}).get("agrees"),
        what="declaredBase.agrees after the base's image became debian:12",
    )


def test_no_write_when_the_stored_status_is_right(
    images: Images, namespace: str, start_operator: Callable[..., Operator]
) -> None:
    images.apply(
        images.manifest(namespace, "base", ["a"]),
        images.manifest(namespace, "app", ["a", "b"]),
    )
    first = start_operator()
    images.wait_base(namespace, "app", (namespace, "base"))
    wait_for(lambda: converged(images, namespace, "base"), what="base computed")
    before = {n: images.get(namespace, n)["metadata"]["resourceVersion"] for n in ("base", "app")}
    first.stop()

    second = start_operator(namespace=first.namespace)
    wait_for(lambda: "listing (start) done" in second.log(), what="second operator listed")
    # a change after its start proves it is live and writing; the unchanged ones stay put
    images.apply(images.manifest(namespace, "probe", ["a", "b", "c"]))
    images.wait_base(namespace, "probe", (namespace, "app"))
    after = {n: images.get(namespace, n)["metadata"]["resourceVersion"] for n in ("base", "app")}
    assert after == before, json.dumps({"before": before, "after": after})
