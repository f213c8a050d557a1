"""The operator's pure parts, without a cluster: the CRD against the model, the flag,
the status shape and patch, and the writer's coalescing and bounds."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from image_ancestry.model import DIGEST_PATTERN, LAYER_CAP
from image_ancestry.operator import status as st
from image_ancestry.operator.config import read_flag
from image_ancestry.operator.controller import _older
from image_ancestry.operator.writer import Job, StatusWriter

CRD = Path(__file__).resolve().parents[2] / "crds" / "containerimages.yaml"


def crd_version() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    [version] = crd["spec"]["versions"]
    assert crd["spec"]["names"]["shortNames"] == ["cimg"]
    assert crd["spec"]["names"]["categories"] == ["images"]
    assert crd["spec"]["scope"] == "Namespaced"
    return dict(version)


def test_crd_schema_follows_the_model() -> None:
    version = crd_version()
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    layers = spec["properties"]["layers"]
    assert spec["required"] == ["layers"]
    assert layers["minItems"] == 1 and layers["maxItems"] == LAYER_CAP
    assert layers["items"]["pattern"] == DIGEST_PATTERN
    assert spec["properties"]["digest"]["pattern"] == DIGEST_PATTERN
    rules = [r["rule"] for r in layers["items"]["x-kubernetes-validations"]]
    assert any("sha256" in r and "{64}" in r for r in rules)
    assert any("sha512" in r and "{128}" in r for r in rules)
    assert version["subresources"] == {"status": {}}


def test_crd_printer_columns() -> None:
    columns = {c["name"]: c for c in crd_version()["additionalPrinterColumns"]}
    assert columns["Image"]["jsonPath"] == ".spec.image"
    assert columns["Layers"]["jsonPath"] == ".status.layerCount"
    assert columns["Parent"]["jsonPath"] == ".status.parent.image"
    assert columns["Base"]["jsonPath"] == ".status.baseImage.image"
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp"
    assert columns["Reason"]["jsonPath"] == ".status.baseImage.reason"
    assert columns["Reason"]["priority"] == 1
    assert all(
        c.get("priority", 0) == 0 for n, c in columns.items() if n not in ("Reason", "Introduced")
    )


@pytest.mark.parametrize(
    ("configmap", "value"),
    [
        (None, True),
        ({"data": {}}, True),
        ({"data": {"enable_user_base_image": "false"}}, False),
        ({"data": {"enable_user_base_image": " FALSE "}}, False),
        ({"data": {"enable_user_base_image": "True"}}, True),
        ({"data": {"enable_user_base_image": "maybe"}}, None),
        ({"data": {"enable_user_base_image": ""}}, None),
    ],
)
def test_read_flag(configmap: dict[str, Any] | None, value: bool | None) -> None:
    reading = read_flag(configmap)
    assert reading.value is value
    assert (reading.error is None) == (value is not None)


ENGINE_STATUS = {
    "layerCount": 3,
    "ancestorCount": 1,
    "ancestors": [{"namespace": "p", "name": "debian", "layerCount": 2}],
    "parent": {"namespace": "p", "name": "debian"},
    "baseImage": {"namespace": "p", "name": "debian", "reason": "ClosestAncestor"},
}


def test_desired_status_and_its_patch() -> None:
    desired = st.desired_status(ENGINE_STATUS, generation=4, annotations={}, stored={})
    [ready] = desired["conditions"]
    assert ready["type"] == "Ready" and ready["status"] == "True"
    assert ready["reason"] == "Computed" and ready["observedGeneration"] == 4
    assert ready["message"] == "1 ancestor; base image p/debian (ClosestAncestor)"
    patch = st.merge_patch(desired)["status"]
    # every reference sub-key is named, so a stale parent.image cannot survive the merge
    assert patch["parent"] == {"namespace": "p", "name": "debian", "image": None, "digest": None}
    assert patch["declaredBase"] is None and patch["observedGeneration"] == 4

    stored = st.compact({k: v for k, v in desired.items() if v is not None})
    again = st.desired_status(ENGINE_STATUS, generation=4, annotations={}, stored=stored)
    assert st.matches(again, stored)  # same transition time kept: nothing to write
    moved = dict(ENGINE_STATUS, layerCount=5)
    assert not st.matches(
        st.desired_status(moved, generation=4, annotations={}, stored=stored), stored
    )
    assert not st.matches(
        st.desired_status(ENGINE_STATUS, generation=5, annotations={}, stored=stored), stored
    )


def test_an_invalid_object_gets_ready_false_and_no_ancestry() -> None:
    stored = st.compact(
        {
            "layerCount": 2,
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}
            ],
        }
    )
    desired = st.desired_status(
        None, generation=2, annotations={}, stored=stored, error="spec.image: bad"
    )
    assert desired["layerCount"] is None and desired["baseImage"] is None
    [ready] = desired["conditions"]
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        "InvalidSpec",
        "spec.image: bad",
    )
    assert ready["lastTransitionTime"] != "2020-01-01T00:00:00Z"  # it did transition


def test_other_conditions_are_kept() -> None:
    other = {"type": "Scanned", "status": "True"}
    stored = st.compact({"conditions": [other]})
    desired = st.desired_status(ENGINE_STATUS, generation=1, annotations={}, stored=stored)
    assert desired["conditions"][0] == other and desired["conditions"][1]["type"] == "Ready"


def test_an_invalid_mark_is_named_in_the_message() -> None:
    desired = st.desired_status(
        ENGINE_STATUS,
        generation=1,
        stored={},
        annotations={"anchore.user/marked_base_image": "yes"},
    )
    assert "'yes' marks nothing" in desired["conditions"][0]["message"]


@pytest.mark.parametrize(
    ("annotations", "base", "expected"),
    [
        ({}, {"image": "x"}, None),
        ({st.DECLARED_BASE_DIGEST: "sha256:1"}, {"digest": "sha256:1"}, True),
        ({st.DECLARED_BASE_DIGEST: "sha256:1"}, {"digest": "sha256:2"}, False),
        ({st.DECLARED_BASE_DIGEST: "sha256:1"}, None, False),
        ({st.DECLARED_BASE_NAME: "debian:10"}, {"image": "docker.io/library/debian:10"}, True),
        ({st.DECLARED_BASE_NAME: "debian:10"}, {"image": "debian:11"}, False),
        ({st.DECLARED_BASE_NAME: "debian"}, {}, False),
    ],
)
def test_declared_base(
    annotations: dict[str, str], base: dict[str, Any] | None, expected: bool | None
) -> None:
    result = st.declared_base(annotations, base)
    assert (
        (result is None)
        if expected is None
        else (result is not None and result["agrees"] is expected)
    )


def test_resource_versions_compare_as_revisions() -> None:
    assert _older("9", "10") and not _older("10", "9") and not _older("10", "10")
    assert not _older("abc", "10") and not _older("9", "")


def run_writer(
    marks: list[list[tuple[str, str]]], *, concurrency: int, send_time: float = 0.01
) -> dict[str, Any]:
    """Drive a StatusWriter whose sends only record what they were given."""
    looked: list[tuple[str, str]] = []
    in_flight = 0
    most = 0

    async def send(job: Job) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(send_time)
        in_flight -= 1

    def compute(key: tuple[str, str]) -> Job:
        looked.append(key)
        return Job(key=key, patch={}, desired={}, stored={})

    async def main() -> None:
        writer = StatusWriter(
            compute=compute,
            send=send,
            can_write=lambda: True,
            concurrency=concurrency,
            debounce=0.05,
        )
        task = asyncio.create_task(writer.run())
        writer.gate.set()
        for batch in marks:
            writer.mark(batch)
            await asyncio.sleep(0)
        for _ in range(500):
            await asyncio.sleep(0.01)
            if writer.pending == 0:
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    return {"looked": looked, "most": most}


def test_a_burst_of_marks_is_one_look_per_image() -> None:
    keys = [("ns", f"i{i}") for i in range(20)]
    result = run_writer([keys] * 50, concurrency=4)
    assert sorted(result["looked"]) == sorted(keys)


def test_writes_in_flight_are_bounded() -> None:
    keys = [("ns", f"i{i}") for i in range(40)]
    result = run_writer([keys], concurrency=3, send_time=0.02)
    assert result["most"] == 3 and len(result["looked"]) == 40


def test_nothing_is_written_while_the_gate_is_closed() -> None:
    looked: list[tuple[str, str]] = []

    async def main() -> None:
        async def send(job: Job) -> None:
            pass

        def compute(key: tuple[str, str]) -> None:
            looked.append(key)

        writer = StatusWriter(compute=compute, send=send, can_write=lambda: True, debounce=0)
        task = asyncio.create_task(writer.run())
        writer.mark([("ns", "a")])
        await asyncio.sleep(0.1)
        assert looked == []
        writer.gate.set()
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert looked == [("ns", "a")]
