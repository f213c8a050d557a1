"""Shared fixtures: the ``cluster`` (a real API server) and a fresh ``namespace`` per test.

Tests that use neither start no cluster: the session fixture is created on first use.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clusters import BACKENDS, TestCluster, existing_cluster, kind_cluster, local_cluster

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cluster-backend",
        choices=BACKENDS,
        default=os.environ.get("IMAGE_ANCESTRY_CLUSTER", "local"),
        help="where cluster tests run: local (kube-apiserver+etcd here, the default), "
        "kind (pytest-kind, needs Docker) or existing (the current KUBECONFIG context); "
        "also IMAGE_ANCESTRY_CLUSTER",
    )


@pytest.fixture(scope="session")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestCluster]:
    backend = request.config.getoption("--cluster-backend")
    directory = tmp_path_factory.mktemp("cluster")
    if backend == "local":
        manager = local_cluster(directory)
    elif backend == "kind":
        manager = kind_cluster(directory)
    else:
        manager = existing_cluster()
    with manager as c:
        yield c


@pytest.fixture
def namespace(cluster: TestCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of this test's own, deleted afterwards.

    Without kube-controller-manager a deleted namespace stays Terminating, which is harmless
    here because every name is unique.
    """
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
