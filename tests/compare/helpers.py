"""Building VulnerabilityReport and ContainerImage objects for the base-comparison tests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHARED_REPORT_CRD = (
    REPO.parent / "shared/data/trivy-operator/aquasecurity.github.io_vulnerabilityreports.yaml"
)
OWN_REPORT_CRD = REPO / "tests/data/vulnerabilityreports-crd.yaml"


def report_crd() -> Path:
    """trivy-operator's CRD from ``../shared`` when it is there, else the project's copy."""
    return SHARED_REPORT_CRD if SHARED_REPORT_CRD.is_file() else OWN_REPORT_CRD


def digest(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def layers(*seeds: str) -> list[str]:
    return [digest(f"layer-{seed}") for seed in seeds]


def container_image(
    namespace: str,
    name: str,
    layer_list: Sequence[str],
    *,
    image: str | None = None,
    image_digest: str | None = None,
    marked: bool = False,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if marked:
        metadata["annotations"] = {"anchore.user/marked_base_image": "true"}
    spec: dict[str, Any] = {"layers": list(layer_list)}
    if image is not None:
        spec["image"] = image
    if image_digest is not None:
        spec["digest"] = image_digest
    return {
        "apiVersion": "imageancestry.io/v1alpha1",
        "kind": "ContainerImage",
        "metadata": metadata,
        "spec": spec,
    }


def finding(
    cve: str, resource: str, severity: str = "HIGH", installed: str = "1.0", fixed: str = "1.1"
) -> dict[str, Any]:
    return {
        "vulnerabilityID": cve,
        "resource": resource,
        "installedVersion": installed,
        "fixedVersion": fixed,
        "severity": severity,
        "title": f"{cve} in {resource}",
        "publishedDate": "2024-01-01T00:00:00Z",
        "lastModifiedDate": "2024-01-02T00:00:00Z",
    }


def findings(
    prefix: str, count: int, severities: Iterable[str] = ("HIGH",)
) -> list[dict[str, Any]]:
    cycle = list(severities)
    return [
        finding(f"CVE-2024-{prefix}{i:03d}", f"pkg-{prefix}{i}", cycle[i % len(cycle)])
        for i in range(count)
    ]


def vulnerability_report(
    namespace: str,
    name: str,
    vulnerabilities: list[dict[str, Any]],
    *,
    server: str = "registry.example",
    repository: str = "app",
    tag: str = "v1",
    artifact_digest: str | None = None,
    updated: str = "2026-01-01T00:00:00Z",
) -> dict[str, Any]:
    counts = {s: 0 for s in ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")}
    for item in vulnerabilities:
        severity = str(item["severity"]).upper()
        counts[severity if severity in counts else "UNKNOWN"] += 1
    artifact: dict[str, Any] = {"repository": repository, "tag": tag}
    if artifact_digest is not None:
        artifact["digest"] = artifact_digest
    return {
        "apiVersion": "aquasecurity.github.io/v1alpha1",
        "kind": "VulnerabilityReport",
        "metadata": {"name": name, "namespace": namespace},
        "report": {
            "artifact": artifact,
            "os": {"family": "debian", "name": "12.5"},
            "registry": {"server": server},
            "scanner": {"name": "Trivy", "vendor": "Aqua Security", "version": "0.58.0"},
            "summary": {
                "criticalCount": counts["CRITICAL"],
                "highCount": counts["HIGH"],
                "mediumCount": counts["MEDIUM"],
                "lowCount": counts["LOW"],
                "unknownCount": counts["UNKNOWN"],
            },
            "updateTimestamp": updated,
            "vulnerabilities": vulnerabilities,
        },
    }
