"""The pure base-comparison logic: reading reports, matching, the split, the changed sets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from image_ancestry.compare.feed import ReportFeed
from image_ancestry.compare.vulnerabilities import (
    SEVERITIES,
    Finding,
    ImageTarget,
    ReportRecord,
    VulnerabilityIndex,
    choose_report,
    classify,
    merge_patch_value,
    report_from_manifest,
    stored_form,
    vulnerabilities_status,
)
from image_ancestry.engine import AncestryIndex, ImageRecord
from image_ancestry.model import ManifestError
from tests.compare.helpers import digest, finding, findings, vulnerability_report

D1, D2 = digest("one"), digest("two")


def record(
    name: str,
    digest_: str | None = None,
    reference: str | None = None,
    updated: str | None = "2026-01-01T00:00:00Z",
    pairs: tuple[tuple[str, str], ...] = (),
    namespace: str = "ns",
) -> ReportRecord:
    when = None if updated is None else datetime.fromisoformat(updated)
    found = tuple(Finding(cve, pkg, "HIGH") for cve, pkg in pairs)
    return ReportRecord(namespace, name, digest_, reference, when, found)


# --- reading reports ---------------------------------------------------------------------------


def test_report_from_manifest_reads_the_trivy_shape() -> None:
    obj = vulnerability_report(
        "team-a",
        "replicaset-app-1",
        [
            finding("CVE-1", "openssl", "LOW"),
            finding("CVE-1", "openssl", "CRITICAL"),  # the same pair in a second target
            finding("CVE-2", "zlib", "medium"),
            finding("CVE-3", "x", "NEGLIGIBLE"),
        ],
        server="index.docker.io",
        repository="library/nginx",
        tag="1.25",
        artifact_digest=D1,
        updated="2026-03-01T10:00:00Z",
    )
    report = report_from_manifest(obj)
    assert report.key == ("team-a", "replicaset-app-1")
    assert report.digest == D1
    assert report.reference == "docker.io/library/nginx:1.25"
    assert report.updated == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert [(f.vulnerability_id, f.resource, f.severity) for f in report.findings] == [
        ("CVE-1", "openssl", "CRITICAL"),
        ("CVE-2", "zlib", "MEDIUM"),
        ("CVE-3", "x", "UNKNOWN"),
    ]
    assert report.findings[0].installed_version == "1.0"
    assert report.findings[0].fixed_version == "1.1"


def test_a_report_without_tag_matches_by_digest_only() -> None:
    obj = vulnerability_report("ns", "r", [], tag="", artifact_digest=D1)
    assert report_from_manifest(obj).reference is None


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda o: o["metadata"].pop("name"), "metadata.name"),
        (lambda o: o.pop("report"), "report"),
        (lambda o: o["report"].update(vulnerabilities="x"), "report.vulnerabilities"),
        (lambda o: o["report"]["vulnerabilities"].append(7), "report.vulnerabilities[1]"),
        (
            lambda o: o["report"]["vulnerabilities"][0].pop("resource"),
            "report.vulnerabilities[0].resource",
        ),
    ],
)
def test_bad_reports_name_the_field(mutate: Any, field: str) -> None:
    obj = vulnerability_report("ns", "r", [finding("CVE-1", "a")])
    mutate(obj)
    with pytest.raises(ManifestError) as caught:
        report_from_manifest(obj, "reports.yaml")
    assert caught.value.field == field
    assert str(caught.value).startswith("reports.yaml: ")
    assert "VulnerabilityReport" in str(caught.value) or caught.value.obj == "document"


# --- matching ----------------------------------------------------------------------------------


def test_image_target_from_spec() -> None:
    def target(image: str | None, digest_: str | None = None) -> ImageTarget:
        return ImageTarget.from_record(ImageRecord("ns", "n", ("l",), image, digest_))

    assert target("nginx") == ImageTarget(None, "docker.io/library/nginx:latest")
    assert target("nginx:1", D1) == ImageTarget(D1, "docker.io/library/nginx:1")
    assert target(f"r.example/app:1@{D2}") == ImageTarget(D2, "r.example/app:1")
    assert target(f"r.example/app@{D2}") == ImageTarget(D2, None)
    assert target(f"r.example/app@{D2}", D1) == ImageTarget(D1, None)
    assert target("Not A Reference") == ImageTarget(None, None)
    assert target(None, D1) == ImageTarget(D1, None)


def test_digest_matches_win_over_newer_reference_matches() -> None:
    target = ImageTarget(D1, "r.example/app:1")
    by_digest = record("old", D1, None, "2026-01-01T00:00:00Z")
    by_reference = record("new", D2, "r.example/app:1", "2026-06-01T00:00:00Z")
    assert choose_report(target, [by_reference, by_digest]) == by_digest
    assert choose_report(ImageTarget(None, "r.example/app:1"), [by_digest, by_reference]) == (
        by_reference
    )
    assert choose_report(ImageTarget(D2, None), [by_digest]) is None


def test_the_newest_report_wins_and_a_missing_timestamp_is_oldest() -> None:
    target = ImageTarget(D1, None)
    a = record("a", D1, updated="2026-01-01T00:00:00Z")
    b = record("b", D1, updated="2026-01-01T00:00:01+00:00")
    c = record("c", D1, updated=None)
    assert choose_report(target, [a, b, c]) == b
    assert choose_report(target, [c]) == c


# --- the split ---------------------------------------------------------------------------------


def test_worked_example_thirty_inherited_three_introduced() -> None:
    base_items = findings("b", 30, ("CRITICAL", "HIGH", "MEDIUM"))
    app_items = base_items + findings("a", 3, ("CRITICAL", "LOW", "LOW"))
    base = report_from_manifest(vulnerability_report("platform", "golden", base_items))
    app = report_from_manifest(vulnerability_report("team-a", "app", app_items))
    status = vulnerabilities_status(app, base)
    assert status is not None
    assert status["report"] == {"namespace": "team-a", "name": "app"}
    assert status["baseReport"] == {"namespace": "platform", "name": "golden"}
    assert (status["total"], status["introduced"], status["inheritedFromBase"]) == (33, 3, 30)
    assert status["bySeverity"]["CRITICAL"] == {
        "total": 11,
        "introduced": 1,
        "inheritedFromBase": 10,
    }
    assert status["bySeverity"]["LOW"] == {"total": 2, "introduced": 2, "inheritedFromBase": 0}
    assert list(status["bySeverity"]) == list(SEVERITIES)
    assert sum(v["total"] for v in status["bySeverity"].values()) == 33


def test_a_pair_is_the_identity_not_the_id_alone() -> None:
    base = record("base", pairs=(("CVE-1", "openssl"),))
    app = record("app", pairs=(("CVE-1", "openssl"), ("CVE-1", "libssl3")))
    assert [(f.resource, inherited) for f, inherited in classify(app, base)] == [
        ("openssl", True),
        ("libssl3", False),
    ]


def test_no_base_report_gives_nulls_and_no_report_gives_none() -> None:
    app = record("app", pairs=(("CVE-1", "a"),))
    status = vulnerabilities_status(app, None)
    assert status is not None
    assert (status["baseReport"], status["introduced"], status["inheritedFromBase"]) == (
        None,
        None,
        None,
    )
    assert status["total"] == 1
    assert status["bySeverity"]["HIGH"] == {
        "total": 1,
        "introduced": None,
        "inheritedFromBase": None,
    }
    assert [inherited for _, inherited in classify(app, None)] == [None]
    assert vulnerabilities_status(None, app) is None


# --- the index ---------------------------------------------------------------------------------


def test_index_follows_reports_images_and_bases() -> None:
    index = VulnerabilityIndex()
    base_key, app_key = ("platform", "golden"), ("team-a", "app")
    assert index.upsert_image(app_key, ImageTarget(D2, None), base_key) == set()
    base_report = record("golden-r", D1, pairs=(("CVE-1", "a"),), namespace="platform")
    assert index.upsert_report(base_report) == set()  # nothing matches D1 yet
    app_report = record("app-r", D2, pairs=(("CVE-1", "a"), ("CVE-2", "b")))
    assert index.upsert_report(app_report) == {app_key}
    assert index.status(app_key)["introduced"] is None  # type: ignore[index]
    # the base image appears: its report now counts for the app too
    assert index.upsert_image(base_key, ImageTarget(D1, None), None) == {base_key, app_key}
    assert index.status(app_key)["introduced"] == 1  # type: ignore[index]
    # the base's report changes: both images move
    grown = record("golden-r", D1, pairs=(("CVE-1", "a"), ("CVE-2", "b")), namespace="platform")
    assert index.upsert_report(grown) == {base_key, app_key}
    assert index.status(app_key)["introduced"] == 0  # type: ignore[index]
    assert index.upsert_report(grown) == set()  # the same report again: nothing moved
    # the app's base becomes nothing
    assert index.upsert_image(app_key, ImageTarget(D2, None), None) == {app_key}
    assert index.remove_report(("ns", "app-r")) == {app_key}
    assert index.status(app_key) is None
    assert index.remove_image(base_key) == {base_key}
    assert index.remove_image(base_key) == set()


def test_sync_images_follows_the_engine() -> None:
    ancestry = AncestryIndex()
    base = ImageRecord("p", "base", ("l1",), digest=D1)
    app = ImageRecord("t", "app", ("l1", "l2"), digest=D2)
    index = VulnerabilityIndex()
    index.upsert_report(record("rb", D1, pairs=(("CVE-1", "a"),)))
    index.upsert_report(record("ra", D2, pairs=(("CVE-1", "a"), ("CVE-2", "a"))))
    changed = index.sync_images(ancestry, ancestry.upsert(app))
    assert changed == {app.key}
    assert index.status(app.key)["introduced"] is None  # type: ignore[index]
    assert index.sync_images(ancestry, ancestry.upsert(base)) == {base.key, app.key}
    assert index.base_of(app.key) == base.key
    assert index.status(app.key)["introduced"] == 1  # type: ignore[index]
    assert index.sync_images(ancestry, ancestry.remove(base.key) | {base.key}) == {
        base.key,
        app.key,
    }
    assert index.status(app.key)["baseReport"] is None  # type: ignore[index]


# Against a naive model: after every operation, the index's statuses equal a recomputation
# from scratch, and the changed set is exactly the images whose status differs from before.

IMAGE_KEYS = [("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")]
REPORT_KEYS = [("r", "1"), ("r", "2"), ("s", "1"), ("s", "2")]
DIGESTS = [None, D1, D2]
REFERENCES = [None, "x/a:1", "x/b:1"]
TIMES = [None, "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"]
PAIRS = [("CVE-1", "a"), ("CVE-2", "a"), ("CVE-1", "b")]

report_op = st.tuples(
    st.just("report"),
    st.sampled_from(REPORT_KEYS),
    st.sampled_from(DIGESTS),
    st.sampled_from(REFERENCES),
    st.sampled_from(TIMES),
    st.sets(st.sampled_from(PAIRS)).map(lambda s: tuple(sorted(s))),
)
image_op = st.tuples(
    st.just("image"),
    st.sampled_from(IMAGE_KEYS),
    st.sampled_from(DIGESTS),
    st.sampled_from(REFERENCES),
    st.sampled_from([None, *IMAGE_KEYS]),
)
remove_op = st.tuples(
    st.sampled_from(["unreport", "unimage"]), st.sampled_from(REPORT_KEYS + IMAGE_KEYS)
)


def naive(
    reports: dict[Any, ReportRecord], images: dict[Any, tuple[ImageTarget, Any]]
) -> dict[Any, Any]:
    def report_of(key: Any) -> ReportRecord | None:
        if key not in images:
            return None
        return choose_report(images[key][0], reports.values())

    result = {}
    for key, (_, base) in images.items():
        status = vulnerabilities_status(report_of(key), None if base is None else report_of(base))
        if status is not None:
            result[key] = status
    return result


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(report_op, image_op, remove_op), max_size=25))
def test_index_matches_a_naive_recomputation(operations: list[tuple[Any, ...]]) -> None:
    index = VulnerabilityIndex()
    reports: dict[Any, ReportRecord] = {}
    images: dict[Any, tuple[ImageTarget, Any]] = {}
    before: dict[Any, Any] = {}
    for op in operations:
        if op[0] == "report":
            _, key, dig, ref, when, pairs = op
            rec = record(key[1], dig, ref, when, pairs, namespace=key[0])
            reports[key] = rec
            changed = index.upsert_report(rec)
        elif op[0] == "image":
            _, key, dig, ref, base = op
            base = None if base == key else base
            images[key] = (ImageTarget(dig, ref), base)
            changed = index.upsert_image(key, ImageTarget(dig, ref), base)
        elif op[0] == "unreport":
            reports.pop(op[1], None)
            changed = index.remove_report(op[1])
        else:
            images.pop(op[1], None)
            changed = index.remove_image(op[1])
        after = naive(reports, images)
        for key in IMAGE_KEYS:
            assert index.status(key) == after.get(key)
        moved = {k for k in IMAGE_KEYS if before.get(k) != after.get(k)}
        assert changed == moved
        before = after


# --- the stored form and the operator's feed ---------------------------------------------------


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies it."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


maybe_report = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(["r1", "r2"]), st.sets(st.sampled_from(PAIRS))).map(
        lambda t: record(t[0], pairs=tuple(sorted(t[1])))
    ),
)


@given(maybe_report, maybe_report, maybe_report, maybe_report)
def test_the_merge_patch_turns_any_stored_value_into_the_new_one(
    old: ReportRecord | None,
    old_base: ReportRecord | None,
    new: ReportRecord | None,
    new_base: ReportRecord | None,
) -> None:
    before = stored_form(vulnerabilities_status(old, old_base))
    after = stored_form(vulnerabilities_status(new, new_base))
    stored = {} if before is None else {"vulnerabilities": before}
    patched = merge(stored, {"vulnerabilities": merge_patch_value(after)})
    assert patched.get("vulnerabilities") == after
    if after is not None:
        assert None not in after.values()


def test_the_feed_keeps_the_newest_version_and_drops_bad_reports() -> None:
    feed = ReportFeed()
    image = ("t", "app")
    feed.index.upsert_image(image, ImageTarget(D1, None), None)
    obj = vulnerability_report("t", "r", [finding("CVE-1", "a")], artifact_digest=D1)
    obj["metadata"]["resourceVersion"] = "10"
    assert feed.on_event(None, obj) == {image}
    assert feed.status(image)["total"] == 1  # type: ignore[index]
    assert "introduced" not in feed.status(image)  # type: ignore[operator]
    stale = vulnerability_report("t", "r", [], artifact_digest=D1)
    stale["metadata"]["resourceVersion"] = "9"
    assert feed.on_event("MODIFIED", stale) == set()  # a late event of an older state
    broken = vulnerability_report("t", "r", [{"severity": "LOW"}], artifact_digest=D1)
    broken["metadata"]["resourceVersion"] = "11"
    assert feed.on_event("MODIFIED", broken) == {image}  # unreadable: counts for nothing
    assert feed.status(image) is None
    obj["metadata"]["resourceVersion"] = "12"
    assert feed.on_event("MODIFIED", obj) == {image}
    assert feed.on_event("DELETED", obj) == {image}
    assert feed.status(image) is None
