"""``image-ancestry compare``: one image's findings, split by its base image.

Against the cluster, ContainerImages and VulnerabilityReports are listed with the
``kubernetes`` client (imported inside the handler); with ``--from PATH...`` both kinds are
read from manifests, as ``compute`` reads them. Either way the ancestry engine finds the base
image (``--base auto``, rule 4), unless ``--base NAMESPACE/NAME`` names one, and
:mod:`.vulnerabilities` does the split the operator writes into ``status.vulnerabilities``.

Output is built whole before it is printed. Exit codes: 0 done (also when the image has no
report: there is nothing to split); 1 the image or the base is not found, or the cluster
cannot be read; 2 bad arguments or bad manifests.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from image_ancestry import API_VERSION, GROUP, VERSION
from image_ancestry.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from image_ancestry.compare.vulnerabilities import (
    REPORT_GROUP,
    REPORT_KIND,
    REPORT_PLURAL,
    REPORT_VERSION,
    ReportRecord,
    VulnerabilityIndex,
    classify,
    report_from_manifest,
    vulnerabilities_status,
)
from image_ancestry.engine import AncestryIndex, ImageKey, ImageRecord
from image_ancestry.engine import _reference as reference_of  # the shape statuses use
from image_ancestry.manifests import STDIN, load_container_images, load_documents
from image_ancestry.model import ContainerImage, ManifestError

COMPARISON_KIND = "BaseComparison"
AUTO = "auto"
REQUESTED = "Requested"  # baseImage.reason when --base names the base
TABLE_COLUMNS = ("ID", "PACKAGE", "INSTALLED", "FIXED", "SEVERITY")
_PAGE = 500


class NotFound(Exception):
    """An image the command was asked about is not there; exits 1."""


def image_key(text: str) -> ImageKey:
    """``NAMESPACE/NAME`` as an argparse type."""
    namespace, slash, name = text.partition("/")
    if not slash or not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAMESPACE/NAME")
    return (namespace, name)


def base_choice(text: str) -> str | ImageKey:
    return AUTO if text == AUTO else image_key(text)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="split an image's vulnerabilities into introduced and inherited from its base",
        description="Find the VulnerabilityReport of NAMESPACE/NAME and of its base image, "
        "and print the findings the image introduces (ID, package, installed and fixed "
        "versions, severity) and how many it inherits from the base. Reads the cluster, or "
        "manifests of both kinds with --from.",
    )
    parser.add_argument("image", type=image_key, metavar="NAMESPACE/NAME")
    parser.add_argument(
        "--base",
        type=base_choice,
        default=AUTO,
        metavar="auto|NAMESPACE/NAME",
        help="the image to compare with: auto (default) is the base image the operator "
        "computes (rule 4); NAMESPACE/NAME names any ContainerImage",
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default="table",
        help="table (default): the introduced findings and the inherited counts; json: a "
        "BaseComparison marking every finding with inheritedFromBase true|false|null",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--from",
        dest="paths",
        nargs="+",
        metavar="PATH",
        help="read ContainerImages and VulnerabilityReports from manifests (files, "
        "directories, - for stdin) instead of the cluster",
    )
    source.add_argument("--kubeconfig", default=None, help="kubeconfig file for the cluster")
    parser.add_argument(
        "--disable-user-base-image",
        action="store_true",
        help="with --base auto, ignore anchore.user/marked_base_image (the base is the parent)",
    )
    parser.set_defaults(func=run)


@dataclass
class Inputs:
    images: list[ImageRecord]
    reports: list[ReportRecord]


def run(args: argparse.Namespace) -> int:
    try:
        inputs = read_files(args.paths) if args.paths else read_cluster(args.kubeconfig)
        comparison = compare(inputs, args.image, args.base, not args.disable_user_base_image)
        text = render(comparison, args.output)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (NotFound, ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        return EXIT_FAILURE
    return EXIT_OK


# --- reading ----------------------------------------------------------------------------------


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def read_files(paths: Sequence[str]) -> Inputs:
    """Both kinds from manifests; standard input is read once and parsed for each kind."""
    stdin_text = sys.stdin.read() if STDIN in paths else ""
    images = load_container_images(paths, stdin=io.StringIO(stdin_text), warn=_warn)
    reports: list[ReportRecord] = []
    seen: dict[tuple[str, str], str] = {}
    for document in load_documents(paths, io.StringIO(stdin_text)):
        if document.kind != REPORT_KIND:
            continue
        report = report_from_manifest(document.obj, document.source, label=document.where)
        if report.key in seen:
            raise ManifestError(
                f"duplicate: {report.namespace}/{report.name} is also defined in "
                f"{seen[report.key]}",
                source=document.source,
                obj=f"{report.namespace}/{report.name}",
                field="metadata.name",
                kind=REPORT_KIND,
            )
        seen[report.key] = f"{document.source} ({document.where})"
        reports.append(report)
    return Inputs([image.to_record() for image in images], reports)


class ClusterError(Exception):
    """The cluster could not be read; exits 1."""


def read_cluster(kubeconfig: str | None) -> Inputs:
    """Every ContainerImage and VulnerabilityReport, listed in pages.

    Invalid objects are skipped with a warning (the API server admitted them; one bad
    object should not hide the comparison). No VulnerabilityReport CRD: no reports.
    """
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    try:
        api_client = _api_client(config, kubeconfig)
    except Exception as exc:
        raise ClusterError(f"cannot load Kubernetes credentials: {exc}") from None
    api = client.CustomObjectsApi(api_client)
    images: list[ImageRecord] = []
    reports: list[ReportRecord] = []
    try:
        for obj in _list(api, GROUP, VERSION, "containerimages"):
            try:
                images.append(ContainerImage.from_manifest(obj, "cluster").to_record())
            except ManifestError as exc:
                _warn(f"skipping {exc}")
        try:
            for obj in _list(api, REPORT_GROUP, REPORT_VERSION, REPORT_PLURAL):
                try:
                    reports.append(report_from_manifest(obj, "cluster"))
                except ManifestError as exc:
                    _warn(f"skipping {exc}")
        except ApiException as exc:
            if exc.status != 404:
                raise
            _warn(f"{REPORT_PLURAL}.{REPORT_GROUP} is not served: no VulnerabilityReports")
    except ApiException as exc:
        raise ClusterError(f"listing failed: {exc.status} {exc.reason}") from None
    except OSError as exc:  # urllib3's connection errors are OSErrors
        raise ClusterError(f"cannot reach the cluster: {exc}") from None
    finally:
        api_client.close()
    return Inputs(images, reports)


def _api_client(config: Any, kubeconfig: str | None) -> Any:
    try:
        return config.new_client_from_config(config_file=kubeconfig)
    except config.ConfigException:
        if kubeconfig is not None:
            raise
        config.load_incluster_config()
        from kubernetes import client

        return client.ApiClient()


def _list(api: Any, group: str, version: str, plural: str) -> Iterator[dict[str, Any]]:
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"limit": _PAGE}
        if token:
            kwargs["_continue"] = token
        page = api.list_cluster_custom_object(group, version, plural, **kwargs)
        yield from page.get("items") or []
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return


# --- comparing --------------------------------------------------------------------------------


def compare(
    inputs: Inputs, key: ImageKey, base: str | ImageKey, user_base_image_enabled: bool = True
) -> dict[str, Any]:
    """The BaseComparison document of image ``key`` (``base``: ``auto`` or an image key)."""
    try:
        ancestry = AncestryIndex.build(inputs.images, user_base_image_enabled)
    except ValueError as exc:  # two images with one key: only possible from the cluster
        raise NotFound(str(exc)) from None
    record = ancestry.get(key)
    if record is None:
        raise NotFound(f"ContainerImage {key[0]}/{key[1]} not found")
    index = VulnerabilityIndex()
    for item in inputs.reports:
        index.upsert_report(item)
    if base == AUTO:
        base_ref = ancestry.status(key)["baseImage"]
        base_key = None if base_ref is None else (base_ref["namespace"], base_ref["name"])
    else:
        assert isinstance(base, tuple)
        base_key = base
        base_record = ancestry.get(base_key)
        if base_record is None:
            raise NotFound(f"base ContainerImage {base_key[0]}/{base_key[1]} not found")
        base_ref = {**reference_of(base_record), "reason": REQUESTED}
    index.sync_images(ancestry, [key] if base_key is None else [key, base_key])
    report = index.report_for(key)
    base_report = None if base_key is None else index.report_for(base_key)
    findings = (
        []
        if report is None
        else [
            {**finding.to_dict(), "inheritedFromBase": inherited}
            for finding, inherited in classify(report, base_report)
        ]
    )
    return {
        "apiVersion": API_VERSION,
        "kind": COMPARISON_KIND,
        "image": reference_of(record),
        "baseImage": base_ref,
        "vulnerabilities": vulnerabilities_status(report, base_report),
        "findings": findings,
    }


# --- rendering --------------------------------------------------------------------------------


def render(comparison: dict[str, Any], output: str) -> str:
    if output == "json":
        return json.dumps(comparison, indent=2) + "\n"
    return render_table(comparison)


def _named(ref: dict[str, Any] | None) -> str:
    if ref is None:
        return "<none>"
    text = f"{ref['namespace']}/{ref['name']}"
    details = [ref[k] for k in ("image", "reason") if ref.get(k)]
    return f"{text} ({', '.join(details)})" if details else text


def _table(rows: Iterable[Sequence[str]]) -> list[str]:
    rows = [TABLE_COLUMNS, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    return [
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _row(finding: dict[str, Any]) -> tuple[str, ...]:
    return (
        finding["vulnerabilityID"],
        finding["resource"],
        finding["installedVersion"] or "-",
        finding["fixedVersion"] or "-",
        finding["severity"],
    )


def render_table(comparison: dict[str, Any]) -> str:
    """A header naming the image, its base and their reports, the introduced findings
    (all findings when there is nothing to compare with), and the inherited counts."""
    image, base = comparison["image"], comparison["baseImage"]
    vulnerabilities = comparison["vulnerabilities"]
    lines = [f"image:       {_named(image)}", f"base image:  {_named(base)}"]
    if vulnerabilities is None:
        lines.append("report:      <none>: no VulnerabilityReport matches this image")
        return "\n".join(lines) + "\n"
    report, base_report = vulnerabilities["report"], vulnerabilities["baseReport"]
    lines.append(f"report:      {_named(report)}")
    if base is not None:
        lines.append(f"base report: {_named(base_report)}")
    lines.append("")
    findings = comparison["findings"]
    if vulnerabilities["introduced"] is None:
        why = "there is no base image" if base is None else "the base image has no report"
        lines.append(f"{vulnerabilities['total']} findings, not compared: {why}")
        shown_findings = findings
    else:
        lines.append(
            f"{vulnerabilities['total']} findings: {vulnerabilities['introduced']} introduced, "
            f"{vulnerabilities['inheritedFromBase']} inherited from the base image"
        )
        shown_findings = [f for f in findings if f["inheritedFromBase"] is False]
    if shown_findings:
        lines.append("")
        lines.extend(_table(_row(f) for f in shown_findings))
    if vulnerabilities["introduced"] is not None:
        counts = ", ".join(
            f"{severity} {counts['inheritedFromBase']}"
            for severity, counts in vulnerabilities["bySeverity"].items()
        )
        inherited = vulnerabilities["inheritedFromBase"]
        lines.extend(["", f"inherited from the base image: {inherited} ({counts})"])
    return "\n".join(lines) + "\n"
