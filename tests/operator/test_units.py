"""The operator's pure parts, without a cluster: the CRD against the model, the flag,
the status shape and patch, and the writer's coalescing and bounds."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from image_ancestry.model import DIGEST_PATTERN, LAYER_CAP
from image_ancestry.operator import status as st
from image_ancestry.operator.config import read_flag
from image_ancestry.operator.controller import _older
from image_ancestry.operator.kube import ApiError
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
    assert '"yes" marks nothing' in desired["conditions"][0]["message"]


def test_a_huge_invalid_mark_is_quoted_short() -> None:
    desired = st.desired_status(
        ENGINE_STATUS,
        generation=1,
        stored={},
        annotations={"anchore.user/marked_base_image": "x" * 40000},
    )
    message = desired["conditions"][0]["message"]
    assert len(message) < 300 and '="xxx' in message and "x... marks nothing" in message


def test_a_refused_status_is_ready_false_and_nothing_else() -> None:
    other = {"type": "Scanned", "status": "True"}
    stored = st.compact({"layerCount": 3, "conditions": [other]})
    desired = st.refused_status(
        code=422, reason="Invalid", message="y" * 5000, generation=4, stored=stored
    )
    assert {k for k, v in desired.items() if v is not None} == {"observedGeneration", "conditions"}
    assert desired["observedGeneration"] == 4
    assert desired["conditions"][0] == other
    ready = desired["conditions"][1]
    assert (ready["type"], ready["status"], ready["reason"]) == (
        "Ready",
        "False",
        st.STATUS_WRITE_REFUSED,
    )
    assert "422 Invalid" in ready["message"] and len(ready["message"]) < 400
    assert st.merge_patch(desired)["status"]["layerCount"] is None  # the stale one removed


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


def sending_writer(
    send: Callable[[Job], Awaitable[None]],
    send_refused: Callable[[Job, ApiError], Awaitable[None]] | None,
    **retries: float,
) -> StatusWriter:
    """A writer with no debounce whose every look is a job for ``send``."""
    return StatusWriter(
        compute=lambda k: Job(key=k, patch={}, desired={}, stored={}),
        send=send,
        send_refused=send_refused,
        can_write=lambda: True,
        debounce=0,
        **retries,
    )


def test_a_refused_status_is_replaced_and_retried_less_often() -> None:
    key = ("ns", "refused")
    sent: list[tuple[str, float]] = []
    allowed = False

    async def main() -> None:
        started = time.monotonic()

        async def send(job: Job) -> None:
            if job.key != key:
                return
            sent.append(("full", time.monotonic() - started))
            if not allowed:
                raise ApiError(403, "PATCH", "/x", '{"reason": "Forbidden", "message": "no"}')

        async def send_refused(job: Job, refusal: ApiError) -> None:
            assert refusal.status == 403 and refusal.reason == "Forbidden"
            sent.append(("minimal", time.monotonic() - started))
            raise ApiError(403, "PATCH", "/x", '{"reason": "Forbidden", "message": "no"}')

        writer = sending_writer(send, send_refused, retry_after=0.05, retry_cap=0.2)
        task = asyncio.create_task(writer.run())
        writer.gate.set()
        writer.mark([key, ("ns", "other")])
        await asyncio.sleep(0.6)
        assert writer.stats.written == 1  # the other one, not held up meanwhile
        assert writer.stats.refused >= 3
        nonlocal allowed
        allowed = True
        await asyncio.sleep(0.4)  # at most retry_cap later
        assert writer.stats.written == 2
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    fulls = [t for kind, t in sent if kind == "full"]
    gaps = [b - a for a, b in itertools.pairwise(fulls)]
    assert gaps[0] < gaps[-1] and max(gaps) < 0.3  # growing, bounded


def test_a_refusal_is_logged_once_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    key = ("ns", "refused")

    async def main() -> None:
        async def send(job: Job) -> None:
            raise ApiError(422, "PATCH", "/x", '{"reason": "Invalid", "message": "too long"}')

        async def send_refused(job: Job, refusal: ApiError) -> None:
            await send(job)

        writer = sending_writer(send, send_refused, retry_after=0.02, retry_cap=0.05)
        task = asyncio.create_task(writer.run())
        writer.gate.set()
        writer.mark([key])
        await asyncio.sleep(0.3)
        assert writer.stats.refused >= 3
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.DEBUG, logger="image_ancestry.operator.writer"):
        asyncio.run(main())
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert warnings[0].exc_info is None
    assert "writing the status of ns/refused failed" in warnings[0].getMessage()
    assert "422 Invalid" in warnings[0].getMessage()


def test_an_outage_is_one_warning_line(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async def send(job: Job) -> None:
            raise ApiError(503, "PATCH", "/x", "unavailable")

        writer = sending_writer(send, None, retry_after=10)
        task = asyncio.create_task(writer.run())
        writer.gate.set()
        writer.mark([("ns", "a")])
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.WARNING, logger="image_ancestry.operator.writer"):
        asyncio.run(main())
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "writing the status of ns/a failed" in record.getMessage()
