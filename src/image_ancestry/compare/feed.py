"""The operator's side of base comparison: VulnerabilityReport events into the index.

kopf watches VulnerabilityReports in every namespace when their CRD is served; kopf's CRD
observer starts that watch when the CRD is installed later, so the operator copes with it
missing at start. Events go to :meth:`ReportFeed.on_event`; ContainerImage changes, as the
engine's changed sets, to :meth:`ReportFeed.sync_images`. Both return the images whose
``status.vulnerabilities`` changed, which the controller marks for its status writer.

At every ContainerImage listing the controller also calls :meth:`ReportFeed.relist`: a full
list of the reports, read before statuses are written, so that a restarted operator does
not first write statuses without the vulnerabilities it has not been told about yet (and
then write them again); reports deleted while a watch was away are dropped there too.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from image_ancestry.compare.vulnerabilities import (
    REPORT_GROUP,
    REPORT_PLURAL,
    REPORT_VERSION,
    Finding,
    ReportKey,
    ReportRecord,
    VulnerabilityIndex,
    report_from_manifest,
    stored_form,
)
from image_ancestry.engine import AncestryIndex, ImageKey
from image_ancestry.model import ManifestError
from image_ancestry.operator.kube import ApiError, KubeClient

logger = logging.getLogger(__name__)

COLLECTION_PATH = f"/apis/{REPORT_GROUP}/{REPORT_VERSION}/{REPORT_PLURAL}"
_PAGE = "500"


def _older(version: str, than: str) -> bool:
    return version.isdigit() and than.isdigit() and int(version) < int(than)


def slim(report: ReportRecord) -> ReportRecord:
    """Only what a status needs of each finding, its strings interned: reports of images
    built on one base repeat the base's findings, and titles and versions are never shown
    by the operator (10k reports of 50 findings: 183 MiB peak RSS instead of 365)."""
    findings = tuple(
        Finding(sys.intern(f.vulnerability_id), sys.intern(f.resource), f.severity)
        for f in report.findings
    )
    return dataclasses.replace(report, findings=findings)


class ReportFeed:
    def __init__(self) -> None:
        self.index = VulnerabilityIndex()
        self._versions: dict[ReportKey, str] = {}

    def status(self, key: ImageKey) -> dict[str, Any] | None:
        """The image's ``status.vulnerabilities`` in stored form (nulls left out)."""
        return stored_form(self.index.status(key))

    def sync_images(self, ancestry: AncestryIndex, keys: Iterable[ImageKey]) -> set[ImageKey]:
        return self.index.sync_images(ancestry, keys)

    def on_event(self, event_type: str | None, obj: Mapping[str, Any]) -> set[ImageKey]:
        """One watch event (``event_type`` None: from kopf's listing)."""
        meta = obj.get("metadata") or {}
        key: ReportKey = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        version = str(meta.get("resourceVersion", ""))
        if event_type == "DELETED":
            self._versions.pop(key, None)
            return self.index.remove_report(key)
        known = self._versions.get(key)
        if known is not None and _older(version, known):
            return set()
        self._versions[key] = version
        try:
            report = report_from_manifest(obj, "cluster")
        except ManifestError as exc:
            logger.warning("ignoring %s", exc)
            return self.index.remove_report(key)
        return self.index.upsert_report(slim(report))

    async def relist(self, kube: KubeClient) -> set[ImageKey]:
        """List every report; forget those gone since. No CRD (404): nothing to do."""
        before = dict(self._versions)
        listed: set[ReportKey] = set()
        changed: set[ImageKey] = set()
        params = {"limit": _PAGE}
        try:
            while True:
                page = await kube.request("GET", COLLECTION_PATH, params=params)
                for obj in page.get("items") or []:
                    meta = obj.get("metadata") or {}
                    listed.add((str(meta.get("namespace", "")), str(meta.get("name", ""))))
                    changed |= self.on_event(None, obj)
                token = (page.get("metadata") or {}).get("continue")
                if not token:
                    break
                params = {"limit": _PAGE, "continue": token}
        except ApiError as exc:
            if exc.status == 404:
                logger.debug("%s is not served: no VulnerabilityReports", COLLECTION_PATH)
            else:
                logger.warning("listing VulnerabilityReports failed: %s", exc)
            return changed
        except Exception as exc:  # never block the listing that waits on this one
            logger.warning("listing VulnerabilityReports failed: %s", exc)
            return changed
        for key, version in before.items():
            # Gone from the list, and not re-delivered by the watch while it ran.
            if key not in listed and self._versions.get(key) == version:
                del self._versions[key]
                changed |= self.index.remove_report(key)
        return changed
