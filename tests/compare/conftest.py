"""Cluster fixtures for base comparison: both CRDs installed, reports created for real.

The VulnerabilityReport CRD is trivy-operator's own, unchanged, from ``../shared`` when this
checkout has it, else the project's copy (``tests/data/``); the test ids and a printed line
say which one a run used.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.clusters import TestCluster
from tests.compare.helpers import REPO, SHARED_REPORT_CRD, report_crd

REPORT_CRD_NAME = "vulnerabilityreports.aquasecurity.github.io"
CRD_LABEL = "trivy-operator-crd" if report_crd() == SHARED_REPORT_CRD else "project-own-crd"


def install_report_crd(cluster: TestCluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(report_crd()))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", f"crd/{REPORT_CRD_NAME}"
    )


def uninstall_report_crd(cluster: TestCluster) -> None:
    cluster.kubectl("delete", "crd", REPORT_CRD_NAME, "--ignore-not-found", "--wait=true")


@pytest.fixture(params=[CRD_LABEL])
def report_crds(request: pytest.FixtureRequest, cluster: TestCluster) -> TestCluster:
    """Both CRDs installed (again, if a test removed the report CRD)."""
    cluster.kubectl("apply", "-f", str(REPO / "crds/containerimages.yaml"))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/containerimages.imageancestry.io",
    )
    install_report_crd(cluster)
    print(f"VulnerabilityReport CRD used: {report_crd()} ({request.param})")
    return cluster


@pytest.fixture
def namespace(namespace: str, cluster: TestCluster) -> Iterator[str]:
    """The shared ``namespace``, emptied of this suite's objects afterwards: a deleted
    namespace stays Terminating here (no controller-manager), and the operators of later
    tests, which watch every namespace, must not find these images and act on them."""
    yield namespace
    for kind in ("containerimages", "vulnerabilityreports"):
        cluster.kubectl("delete", kind, "--all", "-n", namespace, "--wait=false", check=False)


@pytest.fixture
def salt() -> str:
    """Makes this test's digests and image references its own: the cluster is shared."""
    return uuid.uuid4().hex[:10]


def apply(cluster: TestCluster, *docs: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
