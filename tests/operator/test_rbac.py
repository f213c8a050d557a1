"""The operator under deploy/rbac's rules only: a ServiceAccount token, not system:masters."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from tests.operator.conftest import REPO, Images, Operator, set_flag, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def service_account_kubeconfig(images: Images, namespace: str, path: Path) -> Path:
    """A kubeconfig for ServiceAccount ``image-ancestry`` in ``namespace``, bound to
    deploy/rbac's ClusterRole and Role (the binding's subject namespace rewritten)."""
    cluster = images.cluster
    rbac = REPO / "deploy" / "rbac"
    cluster.kubectl("create", "serviceaccount", "image-ancestry", "-n", namespace)
    cluster.kubectl("apply", "-f", str(rbac / "cluster_role.yaml"))
    cluster.kubectl("apply", "-n", namespace, "-f", str(rbac / "role.yaml"))
    subject = [{"kind": "ServiceAccount", "name": "image-ancestry", "namespace": namespace}]
    for file, kind in (("cluster_role_binding.yaml", "ClusterRole"), ("role_binding.yaml", "Role")):
        binding = yaml.safe_load((rbac / file).read_text())
        assert binding["roleRef"]["kind"] == kind
        binding["metadata"] = {"name": f"image-ancestry-{namespace}", "namespace": namespace}
        binding["subjects"] = subject
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(binding))
    token = cluster.kubectl(
        "create", "token", "image-ancestry", "-n", namespace, "--duration=1h"
    ).strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig_path).read_text())
    server = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": server}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_operator_needs_nothing_beyond_deploy_rbac(
    images: Images,
    namespace: str,
    make_namespace: Callable[[str], str],
    start_operator: Callable[..., Operator],
    tmp_path: Path,
) -> None:
    system = make_namespace("ia-rbac")
    kubeconfig = service_account_kubeconfig(images, system, tmp_path / "sa.kubeconfig")
    images.apply(
        images.manifest(namespace, "golden", ["a"], marked="true"),
        images.manifest(namespace, "runtime", ["a", "b"]),
        images.manifest(namespace, "app", ["a", "b", "c"]),
    )
    op = start_operator(namespace=system, kubeconfig=kubeconfig)
    images.wait_base(namespace, "app", (namespace, "golden"), "MarkedBaseImage")  # watch, patch
    set_flag(images.cluster, system, "false")  # the ConfigMap, by name
    images.wait_base(namespace, "app", (namespace, "runtime"), "ClosestAncestor")
    wait_for(lambda: images.events(namespace, "app", "BaseImageChanged"), what="an Event")
    set_flag(images.cluster, system, "nope")  # a Warning Event in the operator's namespace
    wait_for(
        lambda: images.events(system, "image-ancestry-config", "InvalidConfig"),
        what="the InvalidConfig Event",
    )
    holder = images.cluster.kubectl(
        "get", "lease", "image-ancestry", "-n", system, "-o", "jsonpath={.spec.holderIdentity}"
    )
    assert holder == op.identity  # the Lease, created and renewed
    # the operator's own requests and kopf's (the ancestry gate, image_ancestry.policy, is
    # another component sharing the process, with its own rules)
    refused = [
        line
        for line in op.log().splitlines()
        if "forbidden" in line.lower() and "image_ancestry.polic" not in line
    ]
    assert refused == []
