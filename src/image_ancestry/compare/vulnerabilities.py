"""Vulnerability findings split by the base image, as the contract's "Base comparison" says.

Reports are trivy-operator's ``VulnerabilityReport`` objects (group
``aquasecurity.github.io``), or any scanner's in that shape. Everything here is pure: no
Kubernetes client, no I/O, so the operator, ``image-ancestry compare`` and tests share it.

- A report belongs to an image when ``report.artifact.digest`` equals the image's digest,
  else when ``report.registry.server/report.artifact.repository:report.artifact.tag`` equals
  its ``spec.image``, both normalised as the container runtime does
  (:mod:`image_ancestry.references`). Reports matched by digest win over reports matched by
  reference; among several of one kind, the newest ``report.updateTimestamp`` counts.
- A finding is the pair (``vulnerabilityID``, ``resource``): a report that lists one pair
  twice (two targets, two paths) counts it once, at its highest severity. A finding is
  inherited when the base image's report has the same pair, introduced when not.

:class:`VulnerabilityIndex` keeps reports and images indexed by digest and by reference, and,
like the ancestry engine, returns from each change the images whose
``status.vulnerabilities`` changed, and only those.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from image_ancestry.engine import AncestryIndex, ImageKey, ImageRecord
from image_ancestry.model import ManifestError, quote
from image_ancestry.references import ReferenceError, parse_reference, try_normalise

REPORT_GROUP = "aquasecurity.github.io"
REPORT_VERSION = "v1alpha1"
REPORT_API_VERSION = f"{REPORT_GROUP}/{REPORT_VERSION}"
REPORT_KIND = "VulnerabilityReport"
REPORT_PLURAL = "vulnerabilityreports"
REPORT_CRD = f"{REPORT_PLURAL}.{REPORT_GROUP}"

SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")
"""trivy's severities, most severe first; any other value counts as ``UNKNOWN``."""

_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}
_OLDEST = datetime.min.replace(tzinfo=UTC)

ReportKey = tuple[str, str]
"""(namespace, name) of a VulnerabilityReport."""

Pair = tuple[str, str]
"""(vulnerabilityID, resource): what makes two findings the same finding."""


@dataclass(frozen=True, slots=True)
class Finding:
    vulnerability_id: str
    resource: str
    severity: str
    installed_version: str = ""
    fixed_version: str = ""
    title: str = ""

    @property
    def pair(self) -> Pair:
        return (self.vulnerability_id, self.resource)

    def to_dict(self) -> dict[str, Any]:
        return {
            "vulnerabilityID": self.vulnerability_id,
            "resource": self.resource,
            "installedVersion": self.installed_version,
            "fixedVersion": self.fixed_version,
            "severity": self.severity,
            "title": self.title,
        }


@dataclass(frozen=True, slots=True)
class ImageTarget:
    """What matching needs of an image: its digest and its normalised ``name:tag``."""

    digest: str | None
    reference: str | None

    @classmethod
    def from_record(cls, record: ImageRecord) -> ImageTarget:
        """``spec.digest``, else the digest of a ``ref@digest`` ``spec.image``.

        The reference is ``spec.image`` normalised without its digest; None when it names
        the image by digest alone (adding ``:latest`` to it would name another image) or is
        no reference at all.
        """
        if record.image is None:
            return cls(record.digest, None)
        try:
            ref = parse_reference(record.image)
        except ReferenceError:
            return cls(record.digest, None)
        return cls(record.digest or ref.digest, ref.tagged)


@dataclass(frozen=True, slots=True)
class ReportRecord:
    """One VulnerabilityReport, reduced to what base comparison needs.

    ``findings`` holds one entry per distinct pair, most severe first, then by ID and
    resource. ``updated`` is ``report.updateTimestamp`` (None when absent or unreadable:
    older than any report that has one).
    """

    namespace: str
    name: str
    digest: str | None
    reference: str | None
    updated: datetime | None
    findings: tuple[Finding, ...]
    # Derived from ``findings`` once: every image whose base this report is looks it up.
    pairs: frozenset[Pair] = field(default=frozenset(), init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        pairs = frozenset((f.vulnerability_id, f.resource) for f in self.findings)
        object.__setattr__(self, "pairs", pairs)

    @property
    def key(self) -> ReportKey:
        return (self.namespace, self.name)

    def reference_dict(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def parse_timestamp(value: object) -> datetime | None:
    """An RFC 3339 time as an aware datetime; None for anything else."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def report_reference(report: Mapping[str, Any]) -> str | None:
    """``registry.server/artifact.repository:artifact.tag`` normalised; None without a tag.

    A report without a tag was made by digest: giving it ``:latest`` would match it to
    whatever image ``latest`` names.
    """
    artifact = _mapping(report.get("artifact"))
    repository = _text(artifact.get("repository"))
    tag = _text(artifact.get("tag"))
    if not repository or not tag:
        return None
    server = _text(_mapping(report.get("registry")).get("server"))
    text = f"{server}/{repository}:{tag}" if server else f"{repository}:{tag}"
    return try_normalise(text)


def severity_of(value: object) -> str:
    word = value.strip().upper() if isinstance(value, str) else ""
    return word if word in _RANK else "UNKNOWN"


def report_from_manifest(
    obj: Mapping[str, Any], source: str = "<cluster>", *, label: str | None = None
) -> ReportRecord:
    """Read one VulnerabilityReport object; raises :class:`ManifestError` naming the spot.

    Lenient where scanners differ (missing versions, titles, an absent timestamp), strict
    where a finding would be meaningless (no ``vulnerabilityID`` or ``resource``).
    """
    metadata = _mapping(obj.get("metadata"))
    name = metadata.get("name")
    namespace = metadata.get("namespace") or "default"
    where = f"{namespace}/{name}" if isinstance(name, str) and name else (label or "document")

    def fail(field: str | None, value: object, reason: str) -> ManifestError:
        return ManifestError(
            reason, source=source, obj=where, field=field, value=value, kind=REPORT_KIND
        )

    if not isinstance(name, str) or not name:
        raise fail("metadata.name", name, f"{quote(name)}: expected a non-empty string")
    if not isinstance(namespace, str):
        raise fail("metadata.namespace", namespace, f"{quote(namespace)}: expected a string")
    report = obj.get("report")
    if not isinstance(report, Mapping):
        raise fail("report", report, f"{quote(report)}: expected a mapping")
    items = report.get("vulnerabilities")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise fail("report.vulnerabilities", items, f"{quote(items)}: expected a list")
    by_pair: dict[Pair, Finding] = {}
    for position, item in enumerate(items):
        field = f"report.vulnerabilities[{position}]"
        if not isinstance(item, Mapping):
            raise fail(field, item, f"{quote(item)}: expected a mapping")
        for required in ("vulnerabilityID", "resource"):
            value = item.get(required)
            if not isinstance(value, str) or not value:
                raise fail(f"{field}.{required}", value, f"{quote(value)}: expected a string")
        finding = Finding(
            vulnerability_id=item["vulnerabilityID"],
            resource=item["resource"],
            severity=severity_of(item.get("severity")),
            installed_version=_text(item.get("installedVersion")),
            fixed_version=_text(item.get("fixedVersion")),
            title=_text(item.get("title")),
        )
        known = by_pair.get(finding.pair)
        if known is None or _RANK[finding.severity] < _RANK[known.severity]:
            by_pair[finding.pair] = finding
    findings = tuple(
        sorted(by_pair.values(), key=lambda f: (_RANK[f.severity], f.vulnerability_id, f.resource))
    )
    digest = _text(_mapping(report.get("artifact")).get("digest")) or None
    updated = parse_timestamp(report.get("updateTimestamp"))
    return ReportRecord(namespace, name, digest, report_reference(report), updated, findings)


def newest(reports: Iterable[ReportRecord]) -> ReportRecord | None:
    """The report with the latest ``updated``; equal times: the last by namespace, name."""
    return max(reports, key=lambda r: (r.updated or _OLDEST, r.namespace, r.name), default=None)


def choose_report(target: ImageTarget, reports: Iterable[ReportRecord]) -> ReportRecord | None:
    """The report that counts for ``target`` among ``reports`` (the rules in the module doc)."""
    by_digest: list[ReportRecord] = []
    by_reference: list[ReportRecord] = []
    for report in reports:
        if target.digest is not None and report.digest == target.digest:
            by_digest.append(report)
        elif target.reference is not None and report.reference == target.reference:
            by_reference.append(report)
    return newest(by_digest) or newest(by_reference)


def classify(
    report: ReportRecord, base_report: ReportRecord | None
) -> list[tuple[Finding, bool | None]]:
    """Every finding of ``report`` with ``inheritedFromBase``: None when there is no base
    report to compare with (Anchore's null), else whether the base report has its pair."""
    if base_report is None:
        return [(finding, None) for finding in report.findings]
    base_pairs = base_report.pairs
    return [(finding, finding.pair in base_pairs) for finding in report.findings]


def _counts(total: int, inherited: int, compared: bool) -> dict[str, int | None]:
    return {
        "total": total,
        "introduced": total - inherited if compared else None,
        "inheritedFromBase": inherited if compared else None,
    }


def vulnerabilities_status(
    report: ReportRecord | None, base_report: ReportRecord | None
) -> dict[str, Any] | None:
    """``status.vulnerabilities``: None without a report; counts split by ``base_report``.

    ``introduced`` and ``inheritedFromBase`` (overall and per severity) are null when there
    is no base report, whether the image has no base or its base has no report. ``bySeverity``
    always holds the five severities, so ``kubectl`` paths into it always resolve.
    """
    if report is None:
        return None
    compared = base_report is not None
    base_pairs = base_report.pairs if base_report is not None else frozenset()
    totals = dict.fromkeys(SEVERITIES, 0)
    inherited = dict.fromkeys(SEVERITIES, 0)
    for finding in report.findings:  # classify(), inlined: this runs for every image
        totals[finding.severity] += 1
        if (finding.vulnerability_id, finding.resource) in base_pairs:
            inherited[finding.severity] += 1
    return {
        "report": report.reference_dict(),
        "baseReport": None if base_report is None else base_report.reference_dict(),
        **_counts(sum(totals.values()), sum(inherited.values()), compared),
        "bySeverity": {s: _counts(totals[s], inherited[s], compared) for s in SEVERITIES},
    }


def _add(index: dict[str, set[Any]], value: str | None, key: Any) -> None:
    if value is not None:
        index.setdefault(value, set()).add(key)


def _discard(index: dict[str, set[Any]], value: str | None, key: Any) -> None:
    if value is None:
        return
    keys = index.get(value)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[value]


class VulnerabilityIndex:
    """Reports and images, indexed so that each change recomputes only what it can touch.

    An image's ``status.vulnerabilities`` depends on its own report and on its base image's
    report. So a report change can move the images it matches (before or after the change)
    and the images whose base those are; an image change (digest, reference, base) can move
    the image and the images whose base it is. Those are recomputed and compared with the
    last result; every mutating call returns the keys whose :meth:`status` changed (an
    unknown image's status counts as None). Not thread-safe: one writer at a time.
    """

    def __init__(self) -> None:
        self._reports: dict[ReportKey, ReportRecord] = {}
        self._reports_by_digest: dict[str, set[ReportKey]] = {}
        self._reports_by_reference: dict[str, set[ReportKey]] = {}
        self._targets: dict[ImageKey, ImageTarget] = {}
        self._bases: dict[ImageKey, ImageKey | None] = {}
        self._images_by_digest: dict[str, set[ImageKey]] = {}
        self._images_by_reference: dict[str, set[ImageKey]] = {}
        self._dependents: dict[ImageKey, set[ImageKey]] = {}
        self._statuses: dict[ImageKey, dict[str, Any] | None] = {}

    # --- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._targets)

    def reports(self) -> list[ReportRecord]:
        return list(self._reports.values())

    def report_for(self, key: ImageKey) -> ReportRecord | None:
        """The report that counts for image ``key`` (None for an unknown image)."""
        target = self._targets.get(key)
        if target is None:
            return None
        candidates: set[ReportKey] = set()
        if target.digest is not None:
            candidates = self._reports_by_digest.get(target.digest, set())
        if candidates:
            return newest(self._reports[k] for k in candidates)
        if target.reference is not None:
            candidates = self._reports_by_reference.get(target.reference, set())
        return newest(self._reports[k] for k in candidates)

    def base_of(self, key: ImageKey) -> ImageKey | None:
        return self._bases.get(key)

    def status(self, key: ImageKey) -> dict[str, Any] | None:
        """``status.vulnerabilities`` of image ``key`` (None: no report, or unknown image)."""
        return self._statuses.get(key)

    def _compute(self, key: ImageKey) -> dict[str, Any] | None:
        report = self.report_for(key)
        if report is None:
            return None
        base = self._bases.get(key)
        return vulnerabilities_status(report, None if base is None else self.report_for(base))

    # --- writing ---------------------------------------------------------------------------

    def upsert_report(self, report: ReportRecord) -> set[ImageKey]:
        """Add ``report`` or replace the report with its key."""
        old = self._reports.get(report.key)
        if old == report:
            return set()
        touched = self._images_matching(report)
        if old is not None:
            touched |= self._images_matching(old)
            self._unindex_report(old)
        self._reports[report.key] = report
        _add(self._reports_by_digest, report.digest, report.key)
        _add(self._reports_by_reference, report.reference, report.key)
        return self._refresh(touched)

    def remove_report(self, key: ReportKey) -> set[ImageKey]:
        old = self._reports.get(key)
        if old is None:
            return set()
        touched = self._images_matching(old)
        self._unindex_report(old)
        return self._refresh(touched)

    def upsert_image(
        self, key: ImageKey, target: ImageTarget, base: ImageKey | None
    ) -> set[ImageKey]:
        """Add image ``key`` or replace what is known of it: its target and its base image."""
        old_target = self._targets.get(key)
        if key in self._targets and old_target == target and self._bases.get(key) == base:
            return set()
        if old_target is not None:
            self._unindex_image(key, old_target)
        self._targets[key] = target
        self._bases[key] = base
        _add(self._images_by_digest, target.digest, key)
        _add(self._images_by_reference, target.reference, key)
        if base is not None:
            self._dependents.setdefault(base, set()).add(key)
        return self._refresh({key})

    def remove_image(self, key: ImageKey) -> set[ImageKey]:
        target = self._targets.get(key)
        if target is None:
            return set()
        self._unindex_image(key, target)
        return self._refresh({key})

    def sync_images(self, ancestry: AncestryIndex, keys: Iterable[ImageKey]) -> set[ImageKey]:
        """Bring images ``keys`` in line with ``ancestry``: the engine's changed set goes in,
        the images whose vulnerabilities changed come out. A key the engine does not know is
        removed."""
        changed: set[ImageKey] = set()
        for key in keys:
            record = ancestry.get(key)
            if record is None:
                changed |= self.remove_image(key)
                continue
            base = ancestry.status(key)["baseImage"]
            base_key = None if base is None else (base["namespace"], base["name"])
            changed |= self.upsert_image(key, ImageTarget.from_record(record), base_key)
        return changed

    # --- internals -------------------------------------------------------------------------

    def _images_matching(self, report: ReportRecord) -> set[ImageKey]:
        keys: set[ImageKey] = set()
        if report.digest is not None:
            keys |= self._images_by_digest.get(report.digest, set())
        if report.reference is not None:
            keys |= self._images_by_reference.get(report.reference, set())
        return keys

    def _unindex_report(self, report: ReportRecord) -> None:
        del self._reports[report.key]
        _discard(self._reports_by_digest, report.digest, report.key)
        _discard(self._reports_by_reference, report.reference, report.key)

    def _unindex_image(self, key: ImageKey, target: ImageTarget) -> None:
        del self._targets[key]
        _discard(self._images_by_digest, target.digest, key)
        _discard(self._images_by_reference, target.reference, key)
        base = self._bases.pop(key, None)
        if base is not None:
            dependents = self._dependents.get(base)
            if dependents is not None:
                dependents.discard(key)
                if not dependents:
                    del self._dependents[base]

    def _refresh(self, touched: set[ImageKey]) -> set[ImageKey]:
        """Recompute ``touched`` and the images whose base they are; return what moved."""
        keys = set(touched)
        for key in touched:
            keys |= self._dependents.get(key, set())
        changed: set[ImageKey] = set()
        for key in keys:
            before = self._statuses.get(key)
            after = self._compute(key) if key in self._targets else None
            if after is None:
                self._statuses.pop(key, None)
            else:
                self._statuses[key] = after
            if after != before:
                changed.add(key)
        return changed


# --- the stored form ---------------------------------------------------------------------------

_COUNT_KEYS = ("total", "introduced", "inheritedFromBase")


def stored_form(status: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``status.vulnerabilities`` as the API server keeps it after a JSON merge patch: a null
    removes its key, so the contract's ``introduced: null`` is stored as no ``introduced``.
    Comparing this form with a stored status tells whether a write is needed."""
    if status is None:
        return None
    result: dict[str, Any] = {
        key: value for key, value in status.items() if value is not None and key != "bySeverity"
    }
    result["bySeverity"] = {
        severity: {key: value for key, value in counts.items() if value is not None}
        for severity, counts in (status.get("bySeverity") or {}).items()
    }
    return result


def merge_patch_value(stored: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The merge-patch value that makes a stored ``status.vulnerabilities`` exactly
    ``stored``: every key of the shape named, absent ones as null, so that nothing of an
    earlier value (a ``baseReport``, an ``introduced`` count) survives the merge."""
    if stored is None:
        return None
    by_severity = stored.get("bySeverity") or {}
    return {
        "report": stored.get("report"),
        "baseReport": stored.get("baseReport"),
        **{key: stored.get(key) for key in _COUNT_KEYS},
        "bySeverity": {
            severity: {key: (by_severity.get(severity) or {}).get(key) for key in _COUNT_KEYS}
            for severity in (*SEVERITIES, *(s for s in by_severity if s not in _RANK))
        },
    }
