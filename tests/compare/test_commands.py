"""``image-ancestry compare --from``: manifests of both kinds, offline."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from image_ancestry.cli import main
from tests.compare.helpers import (
    REPO,
    container_image,
    digest,
    finding,
    findings,
    layers,
    vulnerability_report,
)
from tests.test_offline_cli import run, write

WORKED_EXAMPLE = REPO / "docs/examples/vulnerabilities"
APP = "team-a/shop-api-1-4-0"


def test_worked_example_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "compare", APP, "--from", str(WORKED_EXAMPLE))
    assert (code, err) == (0, "")
    assert "base image:  platform/golden-node-20 (" in out
    assert "33 findings: 3 introduced, 30 inherited from the base image" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("CVE-")]
    assert rows == [
        ["CVE-2099-2001", "express", "4.18.2", "4.19.2", "CRITICAL"],
        ["CVE-2099-2002", "semver", "7.5.1", "7.5.2", "HIGH"],
        ["CVE-2099-2003", "tough-cookie", "4.1.2", "4.1.3", "MEDIUM"],
    ]
    assert "inherited from the base image: 30 (CRITICAL 2, HIGH 8, MEDIUM 12, LOW 8" in out


def test_worked_example_json_marks_every_finding(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "compare", APP, "--from", str(WORKED_EXAMPLE), "-o", "json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["apiVersion"], doc["kind"]) == ("imageancestry.io/v1alpha1", "BaseComparison")
    assert doc["baseImage"]["reason"] == "MarkedBaseImage"
    vulns = doc["vulnerabilities"]
    assert (vulns["total"], vulns["introduced"], vulns["inheritedFromBase"]) == (33, 3, 30)
    assert vulns["baseReport"] == {
        "namespace": "platform",
        "name": "replicaset-golden-node-5c1b7-app",
    }
    flags = [f["inheritedFromBase"] for f in doc["findings"]]
    assert (len(flags), flags.count(True), flags.count(False)) == (33, 30, 3)
    introduced = {f["vulnerabilityID"] for f in doc["findings"] if not f["inheritedFromBase"]}
    assert introduced == {"CVE-2099-2001", "CVE-2099-2002", "CVE-2099-2003"}


def test_a_requested_base_without_report_gives_nulls(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["compare", APP, "--base", "platform/debian-12", "--from", str(WORKED_EXAMPLE)]
    code, out, _ = run(capsys, *argv, "-o", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["baseImage"]["reason"] == "Requested"
    vulns = doc["vulnerabilities"]
    assert (vulns["baseReport"], vulns["introduced"], vulns["inheritedFromBase"]) == (
        None,
        None,
        None,
    )
    assert {f["inheritedFromBase"] for f in doc["findings"]} == {None}
    code, out, _ = run(capsys, *argv)
    assert "33 findings, not compared: the base image has no report" in out
    assert sum(line.startswith("CVE-") for line in out.splitlines()) == 33


def test_both_kinds_in_one_stream(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base_digest, app_digest = digest("base"), digest("app")
    docs = [
        container_image("p", "base", layers("a"), image="registry.example/base:1", marked=True),
        container_image("t", "app", layers("a", "b"), image="registry.example/app:2"),
        # base matched by reference (no digest anywhere), app by digest despite another tag
        vulnerability_report("p", "rb", findings("b", 4), repository="base", tag="1"),
        vulnerability_report(
            "t",
            "ra",
            [*findings("b", 4), finding("CVE-9", "x")],
            tag="other",
            artifact_digest=app_digest,
        ),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ignored"}},
    ]
    docs[1]["spec"]["digest"] = app_digest
    assert base_digest != app_digest
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump_all(docs)))
    code, out, _ = run(capsys, "compare", "t/app", "--from", "-", "-o", "json")
    assert code == 0
    vulns = json.loads(out)["vulnerabilities"]
    assert vulns["report"]["name"] == "ra"
    assert vulns["baseReport"]["name"] == "rb"
    assert (vulns["introduced"], vulns["inheritedFromBase"]) == (1, 4)


def test_the_flag_off_compares_with_the_parent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = [
        container_image("p", "golden", layers("a"), image="registry.example/golden:1", marked=True),
        container_image("p", "mid", layers("a", "b"), image="registry.example/mid:1"),
        container_image("t", "app", layers("a", "b", "c"), image="registry.example/app:1"),
        vulnerability_report("p", "rg", findings("g", 2), repository="golden", tag="1"),
        vulnerability_report("p", "rm", findings("g", 3), repository="mid", tag="1"),
        vulnerability_report("t", "ra", findings("g", 5), repository="app", tag="1"),
    ]
    path = write(tmp_path / "all.yaml", docs)
    _, on, _ = run(capsys, "compare", "t/app", "--from", str(path), "-o", "json")
    _, off, _ = run(
        capsys, "compare", "t/app", "--from", str(path), "-o", "json", "--disable-user-base-image"
    )
    assert json.loads(on)["vulnerabilities"]["introduced"] == 3
    assert json.loads(off)["vulnerabilities"]["introduced"] == 2
    assert json.loads(off)["baseImage"]["reason"] == "ClosestAncestor"


def test_an_image_without_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "i.yaml", [container_image("t", "app", layers("a"), image="x:1")])
    code, out, _ = run(capsys, "compare", "t/app", "--from", str(path), "-o", "json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["vulnerabilities"], doc["findings"], doc["baseImage"]) == (None, [], None)
    code, out, _ = run(capsys, "compare", "t/app", "--from", str(path))
    assert "no VulnerabilityReport matches this image" in out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["nonsense"], 2, "expected NAMESPACE/NAME"),
        (["t/missing"], 1, "ContainerImage t/missing not found"),
        (["t/app", "--base", "p/missing"], 1, "base ContainerImage p/missing not found"),
        (["t/app", "--base", "a/b/c"], 2, "expected NAMESPACE/NAME"),
    ],
)
def test_bad_arguments(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    message: str,
) -> None:
    path = write(tmp_path / "i.yaml", [container_image("t", "app", layers("a"))])
    with pytest.raises(SystemExit) if code == 2 else _no_exit() as caught:
        got = main(["compare", *argv, "--from", str(path)])
    _, err = capsys.readouterr()
    assert message in err
    if code == 2:
        assert caught.value.code == 2  # type: ignore[union-attr]
    else:
        assert got == code


class _no_exit:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            vulnerability_report("t", "r", [{"vulnerabilityID": "CVE-1", "severity": "LOW"}]),
            "VulnerabilityReport t/r: report.vulnerabilities[0].resource",
        ),
        ({"kind": "VulnerabilityReport", "metadata": {"name": "r"}}, "report: null"),
    ],
)
def test_bad_reports_exit_2_naming_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], doc: dict[str, Any], message: str
) -> None:
    path = write(tmp_path / "r.yaml", [container_image("t", "app", layers("a")), doc])
    code, out, err = run(capsys, "compare", "t/app", "--from", str(path))
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {path}: ")
    assert message in err


def test_duplicate_reports_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = vulnerability_report("t", "r", [])
    path = write(tmp_path / "r.yaml", [container_image("t", "app", layers("a")), report, report])
    code, _, err = run(capsys, "compare", "t/app", "--from", str(path))
    assert code == 2
    assert "duplicate: t/r is also defined in" in err
