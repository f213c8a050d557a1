"""The test cluster backends behind the ``cluster`` fixture.

Every backend yields an object with the surface of pytest-kind's ``KindCluster`` that tests
use: ``name``, ``kubeconfig_path``, ``kubectl(*args) -> str`` and ``api`` (a kubernetes
``ApiClient``). ``local`` (the default) is the real control plane from
``image_ancestry.controlplane``; ``kind`` is pytest-kind's cluster, for machines with Docker;
``existing`` is the current ``KUBECONFIG`` context.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BACKENDS = ("local", "kind", "existing")


class KubectlError(RuntimeError):
    """kubectl exited non-zero; the message carries its stderr."""

    def __init__(self, args: list[str], returncode: int, stderr: str):
        super().__init__(f"kubectl {' '.join(args)} exited {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


@dataclass
class TestCluster:
    name: str
    kubeconfig_path: Path
    local: Any = None  # the LocalCluster when the backend is local (fault tests need it)
    _api: Any = field(default=None, repr=False)

    __test__ = False  # not a test class, despite the name

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        cmd = ["kubectl", f"--kubeconfig={self.kubeconfig_path}", *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise KubectlError(list(args), result.returncode, result.stderr)
        return result.stdout

    @property
    def api(self) -> Any:
        if self._api is None:
            from kubernetes import config

            self._api = config.new_client_from_config(config_file=str(self.kubeconfig_path))
        return self._api

    def env(self) -> dict[str, str]:
        """The environment for a subprocess that should talk to this cluster."""
        return dict(os.environ, KUBECONFIG=str(self.kubeconfig_path))


@contextmanager
def local_cluster(directory: Path) -> Iterator[TestCluster]:
    from image_ancestry.controlplane.cluster import LocalCluster

    cluster = LocalCluster(directory)
    cluster.start(audit=True)
    try:
        yield TestCluster("local", cluster.kubeconfig, local=cluster)
    finally:
        cluster.stop()


@contextmanager
def kind_cluster(directory: Path) -> Iterator[TestCluster]:
    from pytest_kind import KindCluster

    kind = KindCluster("image-ancestry-tests", kubeconfig=directory / "kubeconfig")
    kind.create()
    try:
        yield TestCluster(kind.name, Path(kind.kubeconfig_path))
    finally:
        kind.delete()


@contextmanager
def existing_cluster() -> Iterator[TestCluster]:
    path = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if not Path(path).is_file():
        raise RuntimeError(f"--cluster-backend existing: no kubeconfig at {path}")
    yield TestCluster("existing", Path(path))
