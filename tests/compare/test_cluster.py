"""``image-ancestry compare`` against a real API server with the VulnerabilityReport CRD."""

from __future__ import annotations

import json
from typing import Any

import pytest

from image_ancestry.cli import main
from tests.clusters import TestCluster
from tests.compare.conftest import apply
from tests.compare.helpers import container_image, digest, finding, findings, layers
from tests.compare.helpers import vulnerability_report as report

pytestmark = pytest.mark.cluster


def compare(cluster: TestCluster, capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = main(["compare", *argv, "--kubeconfig", str(cluster.kubeconfig_path), "-o", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def test_matched_by_digest_and_by_reference(
    report_crds: TestCluster, namespace: str, salt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    golden_digest = digest(f"{salt}-golden")
    apply(
        report_crds,
        # the golden image is known by digest; its report names another tag
        container_image(
            namespace, "golden", layers(salt, "g"), image_digest=golden_digest, marked=True
        ),
        # the app is known by a Docker Hub reference only: matched as the runtime names it
        container_image(namespace, "app", layers(salt, "g", "a"), image=f"{salt}/app:1.0"),
        report(
            namespace,
            "replicaset-golden",
            findings("g", 5),
            repository=f"{salt}/golden",
            tag="not-what-the-image-says",
            artifact_digest=golden_digest,
        ),
        report(
            namespace,
            "replicaset-app",
            [*findings("g", 5), finding("CVE-2099-1", "left-pad", "CRITICAL")],
            server="index.docker.io",
            repository=f"{salt}/app",
            tag="1.0",
        ),
    )
    result = compare(report_crds, capsys, f"{namespace}/app")
    vulns = result["vulnerabilities"]
    assert vulns["report"] == {"namespace": namespace, "name": "replicaset-app"}
    assert vulns["baseReport"] == {"namespace": namespace, "name": "replicaset-golden"}
    assert (vulns["total"], vulns["introduced"], vulns["inheritedFromBase"]) == (6, 1, 5)
    assert vulns["bySeverity"]["CRITICAL"] == {
        "total": 1,
        "introduced": 1,
        "inheritedFromBase": 0,
    }
    introduced = [
        f["vulnerabilityID"] for f in result["findings"] if f["inheritedFromBase"] is False
    ]
    assert introduced == ["CVE-2099-1"]


def test_the_newest_of_several_reports_wins(
    report_crds: TestCluster, namespace: str, salt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app_digest = digest(f"{salt}-app")
    apply(
        report_crds,
        container_image(namespace, "base", layers(salt, "b"), image=f"r.example/{salt}/base:1"),
        container_image(namespace, "app", layers(salt, "b", "a"), image_digest=app_digest),
        report(
            namespace,
            "base-r",
            findings("b", 2),
            server="r.example",
            repository=f"{salt}/base",
            tag="1",
        ),
        # one report per workload; the one written last is the older scan
        report(
            namespace,
            "deploy-new",
            [*findings("b", 2), finding("CVE-N", "pkg-new")],
            artifact_digest=app_digest,
            updated="2026-05-02T00:00:00Z",
        ),
    )
    apply(
        report_crds,
        report(
            namespace,
            "deploy-old",
            [*findings("b", 2), *findings("o", 4)],
            artifact_digest=app_digest,
            updated="2026-05-01T23:59:59Z",
        ),
    )
    vulns = compare(report_crds, capsys, f"{namespace}/app")["vulnerabilities"]
    assert vulns["report"]["name"] == "deploy-new"
    assert (vulns["introduced"], vulns["inheritedFromBase"]) == (1, 2)


def test_a_base_without_report_gives_nulls(
    report_crds: TestCluster, namespace: str, salt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    apply(
        report_crds,
        container_image(namespace, "base", layers(salt, "b"), image=f"r.example/{salt}/base:1"),
        container_image(namespace, "app", layers(salt, "b", "a"), image=f"r.example/{salt}/app:1"),
        report(
            namespace,
            "app-r",
            findings("a", 3),
            server="r.example",
            repository=f"{salt}/app",
            tag="1",
        ),
    )
    result = compare(report_crds, capsys, f"{namespace}/app")
    assert result["baseImage"]["name"] == "base"
    vulns = result["vulnerabilities"]
    assert vulns["total"] == 3
    assert (vulns["baseReport"], vulns["introduced"], vulns["inheritedFromBase"]) == (
        None,
        None,
        None,
    )
    assert all(v["introduced"] is None for v in vulns["bySeverity"].values())
    assert [f["inheritedFromBase"] for f in result["findings"]] == [None, None, None]
