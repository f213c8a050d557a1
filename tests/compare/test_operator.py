"""The operator writes ``status.vulnerabilities``: on the real API server, with the real CRD.

Operators run as real subprocesses (``tests/operator``'s :class:`Operator`); they watch every
namespace, so each test's digests, layers and references carry its own salt.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.clusters import TestCluster
from tests.compare.conftest import apply, install_report_crd, uninstall_report_crd
from tests.compare.helpers import container_image, finding, findings, layers
from tests.compare.helpers import vulnerability_report as report
from tests.operator.conftest import Operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

GROUP, VERSION = "imageancestry.io", "v1alpha1"


@pytest.fixture
def start_operator(cluster: TestCluster, tmp_path: Path) -> Iterator[Callable[[], Operator]]:
    """Start one operator with a namespace of its own; stopped afterwards, its log shown
    (by pytest, on failure) in the teardown's stderr."""
    started: list[Operator] = []
    system = f"ia-system-{uuid.uuid4().hex[:6]}"

    def start() -> Operator:
        if not started:
            cluster.kubectl("create", "namespace", system)
        n = len(started)
        log = tmp_path / f"operator-{n}.log"
        started.append(Operator(cluster, system, log, f"compare-{n}").start())
        return started[-1]

    yield start
    for operator in started:
        operator.stop()
        sys.stderr.write(f"===== {operator.log_path} =====\n{operator.log()[-8000:]}\n")
    cluster.kubectl("delete", "namespace", system, "--wait=false", check=False)


def status(cluster: TestCluster, namespace: str, name: str) -> dict[str, Any]:
    api = client.CustomObjectsApi(cluster.api)
    obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "containerimages", name)
    result: dict[str, Any] = obj.get("status") or {}
    return result


def counts(cluster: TestCluster, namespace: str, name: str) -> tuple[Any, ...] | None:
    """(report name, base report name, total, introduced, inherited) as stored; None: none."""
    vulns = status(cluster, namespace, name).get("vulnerabilities")
    if vulns is None:
        return None
    base = vulns.get("baseReport")
    return (
        vulns["report"]["name"],
        None if base is None else base["name"],
        vulns["total"],
        vulns.get("introduced"),
        vulns.get("inheritedFromBase"),
    )


def wait_counts(cluster: TestCluster, namespace: str, name: str, expected: Any) -> None:
    def probe() -> bool:
        now = counts(cluster, namespace, name)
        assert now == expected, f"now {now}"
        return True

    wait_for(probe, timeout=60, what=f"{namespace}/{name} vulnerabilities {expected}")


def forest(namespace: str, salt: str) -> list[dict[str, Any]]:
    """debian <- golden (marked) <- app, each with a report of its own:
    debian 2 findings; golden those and 3 more; app golden's 5 and 2 more."""
    image = f"registry.example/{salt}"
    return [
        container_image(namespace, "debian", layers(salt, "d"), image=f"{image}/debian:12"),
        container_image(
            namespace, "golden", layers(salt, "d", "g"), image=f"{image}/golden:1", marked=True
        ),
        container_image(namespace, "app", layers(salt, "d", "g", "a"), image=f"{image}/app:1"),
        report(namespace, "debian-r", findings("d", 2), repository=f"{salt}/debian", tag="12"),
        report(
            namespace,
            "golden-r",
            [*findings("d", 2), *findings("g", 3)],
            repository=f"{salt}/golden",
            tag="1",
        ),
        report(
            namespace,
            "app-r",
            [*findings("d", 2), *findings("g", 3), *findings("a", 2)],
            repository=f"{salt}/app",
            tag="1",
        ),
    ]


def test_counts_follow_the_base_and_the_reports(
    report_crds: TestCluster,
    namespace: str,
    salt: str,
    start_operator: Callable[[], Operator],
) -> None:
    cluster = report_crds
    docs = forest(namespace, salt)
    apply(cluster, *docs)
    start_operator()
    wait_counts(cluster, namespace, "app", ("app-r", "golden-r", 7, 2, 5))
    wait_counts(cluster, namespace, "golden", ("golden-r", "debian-r", 5, 3, 2))
    wait_counts(cluster, namespace, "debian", ("debian-r", None, 2, None, None))  # no base
    by_severity = status(cluster, namespace, "app")["vulnerabilities"]["bySeverity"]
    assert by_severity["HIGH"] == {"total": 7, "introduced": 2, "inheritedFromBase": 5}
    wide = cluster.kubectl("get", "cimg", "-n", namespace, "-o", "wide")
    header, *rows = wide.splitlines()
    assert header.split()[-1] == "INTRODUCED"
    column = header.index("INTRODUCED")  # kubectl leaves an absent value's cell empty
    introduced = {row.split()[0]: row[column:].strip() for row in rows}
    assert introduced == {"app": "2", "golden": "3", "debian": ""}

    # A base change: debian is marked instead of golden; the app now compares with debian.
    cluster.kubectl(
        "annotate", "cimg", "-n", namespace, "golden", "anchore.user/marked_base_image-"
    )
    cluster.kubectl(
        "annotate", "cimg", "-n", namespace, "debian", "anchore.user/marked_base_image=true"
    )
    wait_counts(cluster, namespace, "app", ("app-r", "debian-r", 7, 5, 2))

    # A report update of the image's own: one more finding of its own.
    wait_for(
        lambda: status(cluster, namespace, "golden")["baseImage"]["reason"] == "MarkedBaseImage",
        what="golden's base reason after debian was marked",
    )
    golden_version = _version(cluster, namespace, "golden")
    app_report = docs[5]
    app_report["report"]["vulnerabilities"].append(finding("CVE-2099-7", "extra", "CRITICAL"))
    app_report["report"]["updateTimestamp"] = "2026-02-01T00:00:00Z"
    apply(cluster, app_report)
    wait_counts(cluster, namespace, "app", ("app-r", "debian-r", 8, 6, 2))

    # A report update of the base's: debian now has one of the app's own findings too.
    debian_report = docs[3]
    debian_report["report"]["vulnerabilities"].append(findings("a", 1)[0])
    apply(cluster, debian_report)
    wait_counts(cluster, namespace, "app", ("app-r", "debian-r", 8, 5, 3))
    # Golden's split did not move in either update (debian's new finding is none of its
    # own), so its status was not written again.
    assert counts(cluster, namespace, "golden") == ("golden-r", "debian-r", 5, 3, 2)
    assert _version(cluster, namespace, "golden") == golden_version

    # The app's report is gone: no vulnerabilities at all.
    cluster.kubectl("delete", "vulnerabilityreport", "-n", namespace, "app-r")
    wait_counts(cluster, namespace, "app", None)


def _version(cluster: TestCluster, namespace: str, name: str) -> str:
    api = client.CustomObjectsApi(cluster.api)
    obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "containerimages", name)
    return str(obj["metadata"]["resourceVersion"])


def test_the_report_crd_missing_at_start_and_installed_later(
    report_crds: TestCluster,
    namespace: str,
    salt: str,
    start_operator: Callable[[], Operator],
) -> None:
    cluster = report_crds
    uninstall_report_crd(cluster)
    docs = forest(namespace, salt)
    apply(cluster, *docs[:3])
    operator = start_operator()
    wait_for(
        lambda: status(cluster, namespace, "app").get("baseImage", {}).get("name") == "golden",
        timeout=60,
        what="the operator computing the app's base without the report CRD",
    )
    assert "vulnerabilities" not in status(cluster, namespace, "app")
    install_report_crd(cluster)
    apply(cluster, *docs[3:])
    wait_counts(cluster, namespace, "app", ("app-r", "golden-r", 7, 2, 5))
    assert operator.alive()


def status_patches(cluster: TestCluster, namespace: str, since: int) -> list[str]:
    """Names of the ContainerImages in ``namespace`` whose status was patched, from the local
    API server's audit log past byte ``since``: no-op patches too, which resourceVersions
    do not show."""
    names = []
    with _audit_log(cluster).open("rb") as log:
        log.seek(since)
        for line in log:
            event = json.loads(line)
            ref = event.get("objectRef") or {}
            if (
                event.get("verb") == "patch"
                and event.get("stage") == "ResponseComplete"
                and ref.get("resource") == "containerimages"
                and ref.get("subresource") == "status"
                and ref.get("namespace") == namespace
            ):
                names.append(ref["name"])
    return names


def _audit_log(cluster: TestCluster) -> Path:
    if cluster.local is None:
        pytest.skip("needs the local control plane's audit log")
    return Path(cluster.local.dir) / "logs" / "audit.log"


def test_a_restarted_operator_does_not_rewrite_what_is_right(
    report_crds: TestCluster,
    namespace: str,
    salt: str,
    start_operator: Callable[[], Operator],
) -> None:
    """A new operator sends no status patch, not even a no-op one, for images whose stored
    ``status.vulnerabilities`` is right: with and without a base report (the stored form
    leaves nulls out; comparing with nulls in would patch on every look)."""
    cluster = report_crds
    docs = forest(namespace, salt)
    apply(cluster, *docs)
    first = start_operator()
    wait_counts(cluster, namespace, "app", ("app-r", "golden-r", 7, 2, 5))
    wait_counts(cluster, namespace, "golden", ("golden-r", "debian-r", 5, 3, 2))
    wait_counts(cluster, namespace, "debian", ("debian-r", None, 2, None, None))
    first.stop()
    since = _audit_log(cluster).stat().st_size
    start_operator()
    # A sentinel: once its report's split is written, the new operator has had its listing
    # of images and of reports, and every status has been compared with what it should be.
    apply(
        cluster,
        container_image(
            namespace, "sentinel", layers(salt, "d", "s"), image=f"registry.example/{salt}/s:1"
        ),
        report(namespace, "sentinel-r", findings("s", 1), repository=f"{salt}/s", tag="1"),
    )
    wait_counts(cluster, namespace, "sentinel", ("sentinel-r", "debian-r", 1, 1, 0))
    assert set(status_patches(cluster, namespace, since)) == {"sentinel"}
