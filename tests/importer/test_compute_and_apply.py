"""Imported manifests as the rest of the product reads them: ``compute`` and the cluster."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from image_ancestry.cli import main
from tests.conftest import REPO
from tests.importer.conftest import LAYOUT_NAMES, Images, Result
from tests.importer.registries import LocalRegistry

Cli = Callable[..., Result]
CRD = REPO / "crds" / "containerimages.yaml"


def _compute(paths: list[Path], capsys: pytest.CaptureFixture[str]) -> dict[tuple[str, str], dict]:
    capsys.readouterr()
    code = main(["compute", "-o", "json", *map(str, paths)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    return {(i["namespace"], i["name"]): i["status"] for i in report["items"]}


def test_imported_app_has_the_imported_base_as_parent(
    cli: Cli,
    registry: LocalRegistry,
    images: Images,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A GitOps directory: the base from the registry, the app from a layout, then compute."""
    gitops = tmp_path / "gitops"
    gitops.mkdir()
    base = cli("--insecure", "-n", "platform", f"docker://{registry.host}/platform/base:base-1")
    app = cli("-n", "team-a", f"oci:{images.layout}:app-1")
    assert base.code == 0 and app.code == 0, base.err + app.err
    (gitops / "base.yaml").write_text(base.out)
    (gitops / "app.yaml").write_text(app.out)

    statuses = _compute([gitops], capsys)
    app_status = statuses[("team-a", "shop-app-1")]
    assert app_status["parent"]["name"] == "base-base-1"
    assert app_status["parent"]["namespace"] == "platform"
    assert app_status["parent"]["image"] == f"{registry.host}/platform/base:base-1"
    assert app_status["baseImage"]["name"] == "base-base-1"
    assert app_status["baseImage"]["reason"] == "ClosestAncestor"
    assert statuses[("platform", "base-base-1")]["parent"] is None


def test_compressed_digests_do_not_match_diff_ids(
    cli: Cli, images: Images, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Why diff ids are the default: mix the two and the app has no parent at all."""
    (tmp_path / "base.yaml").write_text(cli(f"oci:{images.layout}:base-1").out)
    (tmp_path / "app.yaml").write_text(
        cli("--layers", "manifest", f"oci:{images.layout}:app-1").out
    )
    statuses = _compute([tmp_path], capsys)
    assert statuses[("default", "shop-app-1")]["parent"] is None


@pytest.mark.cluster
def test_apply_server_side(cli: Cli, images: Images, cluster: object, namespace: str) -> None:
    if not CRD.exists():
        pytest.skip(f"{CRD.relative_to(REPO)} is not in the tree yet")
    kubectl = cluster.kubectl  # type: ignore[attr-defined]
    kubeconfig = str(cluster.kubeconfig_path)  # type: ignore[attr-defined]
    kubectl("apply", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "crd/containerimages.imageancestry.io")

    source = f"oci:{images.layout}"
    result = cli("--apply", "--kubeconfig", kubeconfig, "-n", namespace, source)
    assert result.code == 0, result.err
    assert "containerimage.imageancestry.io/shop-app-1 serverside-applied" in result.out

    objects = yaml.safe_load(
        kubectl("get", "containerimages", "-n", namespace, "-o", "yaml", "--show-managed-fields")
    )
    by_name = {o["metadata"]["name"]: o for o in objects["items"]}
    assert sorted(by_name) == LAYOUT_NAMES
    app = by_name["shop-app-1"]
    assert app["spec"]["layers"] == images.app.diff_ids
    assert app["metadata"]["annotations"]["imageancestry.io/declared-base-digest"] == (
        images.base.digest
    )
    managers = {entry["manager"] for entry in app["metadata"]["managedFields"]}
    assert "image-ancestry-import" in managers
    assert {e["operation"] for e in app["metadata"]["managedFields"]} == {"Apply"}

    # Applying again is a no-op for the same field manager: no conflict, same generation.
    again = cli("--apply", "--kubeconfig", kubeconfig, "-n", namespace, f"{source}:app-1")
    assert again.code == 0, again.err
    after = yaml.safe_load(
        kubectl("get", "containerimage", "shop-app-1", "-n", namespace, "-o", "yaml")
    )
    assert after["metadata"]["generation"] == app["metadata"]["generation"]
