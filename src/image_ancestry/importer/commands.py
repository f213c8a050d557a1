"""``image-ancestry import``: ContainerImage manifests from OCI layouts, archives, registries.

Prints multi-document YAML on standard output, or with ``--apply`` server-side-applies the
manifests with field manager ``image-ancestry-import``. Every source is imported and every
manifest validated before anything is printed or applied: on any failure, each failed source
is named on standard error, standard output stays empty, and the exit code is 1 (2 for bad
usage: an unknown transport, a malformed reference, a bad option).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from image_ancestry.importer.errors import ImportFailure, SourceSyntaxError
from image_ancestry.importer.images import ImportedImage
from image_ancestry.importer.manifests import LAYER_MODES, build_manifest, to_yaml
from image_ancestry.importer.naming import (
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    NameRequest,
    assign_names,
)
from image_ancestry.importer.progress import Progress
from image_ancestry.importer.sources import (
    ArchiveSource,
    OciSource,
    RegistrySource,
    Source,
    is_loopback_host,
    parse_source,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
FIELD_MANAGER = "image-ancestry-import"
_PLATFORM = re.compile(r"[a-z0-9_.-]+/[a-z0-9_.-]+(?:/[a-z0-9_.-]+)?")


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "import",
        help="make ContainerImage manifests from OCI layouts, docker archives and registries",
        description=(
            "Print ContainerImage manifests (multi-document YAML) for the images SOURCE names, "
            "or server-side-apply them with --apply. Sources: oci:DIR[:TAG] (all tagged images "
            "without TAG), docker-archive:FILE[:REF], docker://HOST/REPO:TAG or "
            "docker://HOST/REPO@sha256:... . An index yields one ContainerImage per platform."
        ),
    )
    parser.add_argument("sources", nargs="+", metavar="SOURCE")
    parser.add_argument("-n", "--namespace", help="metadata.namespace of every manifest")
    parser.add_argument(
        "--name", help="metadata.name (with -OS-ARCH per platform of an index); one SOURCE only"
    )
    parser.add_argument(
        "--layers",
        choices=LAYER_MODES,
        default="diff-ids",
        help="diff-ids: uncompressed layer digests from the image config (default, they "
        "survive recompression); manifest: the manifest's (compressed) layer digests",
    )
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="pick one platform")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plain HTTP to registries on loopback (localhost, 127.0.0.0/8, [::1]) only",
    )
    parser.add_argument(
        "--apply",
        action="store_true",
        help=f"server-side-apply to the cluster (field manager {FIELD_MANAGER})",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig for --apply (default: the usual one)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run)


def _usage(message: str) -> int:
    print(f"image-ancestry import: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    try:
        sources = [parse_source(text) for text in args.sources]
    except SourceSyntaxError as exc:
        return _usage(str(exc))
    if args.namespace is not None and not DNS1123_LABEL.fullmatch(args.namespace):
        return _usage(f"--namespace {args.namespace!r} is not a DNS-1123 label")
    if args.name is not None:
        if not DNS1123_SUBDOMAIN.fullmatch(args.name):
            return _usage(f"--name {args.name!r} is not a DNS-1123 name")
        if len(sources) > 1:
            return _usage(f"--name names the images of one SOURCE, got {len(sources)}")
    if args.platform is not None and not _PLATFORM.fullmatch(args.platform):
        return _usage(f"--platform {args.platform!r}: expected OS/ARCH or OS/ARCH/VARIANT")
    for source in sources:
        if (
            isinstance(source, RegistrySource)
            and args.insecure
            and not is_loopback_host(source.api_host)
        ):
            return _usage(
                f"{source.text}: --insecure allows plain HTTP only to loopback registries"
            )

    imported, failures = _import_all(sources, args)
    if failures:
        for failure in failures:
            print(f"image-ancestry import: {failure}", file=sys.stderr)
        return EXIT_FAILURE

    flat = [image for images in imported for image in images]
    if (
        args.name is not None
        and len(flat) > 1
        and (
            flat[0].index_digest is None
            or any(i.index_digest != flat[0].index_digest for i in flat)
        )
    ):
        return _usage(
            f"--name names one image, or the platforms of one index; {flat[0].source} holds "
            f"{len(flat)} images"
        )
    manifests: list[dict[str, Any]] = []
    try:
        manifests = _manifests(flat, args)
    except ImportFailure as exc:
        print(f"image-ancestry import: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.apply:
        return _apply(manifests, args)
    sys.stdout.write(to_yaml(manifests))
    return EXIT_OK


def _import_all(
    sources: list[Source], args: argparse.Namespace
) -> tuple[list[list[ImportedImage]], list[str]]:
    registries: dict[str, Any] = {}
    auth: Any = None
    progress = Progress(len(sources), sys.stderr, enabled=not args.quiet)
    results: list[list[ImportedImage]] = []
    failures: list[str] = []
    for source in sources:
        try:
            if isinstance(source, OciSource):
                from image_ancestry.importer.oci import read_layout

                images = read_layout(source, platform=args.platform)
            elif isinstance(source, ArchiveSource):
                from image_ancestry.importer.archive import read_archive

                images = read_archive(source, layers=args.layers, platform=args.platform)
            else:
                from image_ancestry.importer.registry import AuthConfig, Registry, read_registry

                if auth is None:
                    try:
                        auth = AuthConfig.load()
                    except ValueError as exc:
                        raise ImportFailure(source.text, "unauthorized", str(exc)) from None
                registry = registries.get(source.api_host)
                if registry is None:
                    registry = Registry(source.host, insecure=args.insecure, auth=auth)
                    registries[source.api_host] = registry
                images = read_registry(source, registry, platform=args.platform)
        except ImportFailure as exc:
            failures.append(str(exc))
            progress.advance(source.text, None)
            continue
        results.append(images)
        progress.advance(source.text, len(images))
    return results, failures


def _manifests(flat: list[ImportedImage], args: argparse.Namespace) -> list[dict[str, Any]]:
    requests: list[NameRequest] = []
    for image in flat:
        layers = image.manifest_layers if args.layers == "manifest" else image.diff_ids
        # What tells two images apart; the same image given twice (oci:DIR and oci:DIR:TAG)
        # is the same request, gets the same name and is written once.
        identity = "|".join((image.image or "", image.digest or "", ",".join(layers)))
        requests.append(
            NameRequest(
                identity=identity,
                components=image.components,
                tag=image.tag,
                digest=image.index_digest or image.digest,
                # Images picked out of an index are told apart by platform, unless
                # --platform already picked one per index.
                platform=image.platform if args.platform is None else None,
                override=args.name,
            )
        )
    names = assign_names(requests)
    manifests: list[dict[str, Any]] = []
    seen: set[str] = set()
    for image, name in zip(flat, names, strict=True):
        if name in seen:  # the very same image, given twice
            continue
        seen.add(name)
        manifests.append(
            build_manifest(image, name=name, namespace=args.namespace, layers=args.layers)
        )
    return manifests


def _apply(manifests: list[dict[str, Any]], args: argparse.Namespace) -> int:
    import kubernetes.config
    import kubernetes.dynamic
    from kubernetes.client.exceptions import ApiException
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    from image_ancestry import API_VERSION

    kube_config: Any = kubernetes.config  # untyped: keep mypy strict elsewhere
    dynamic: Any = kubernetes.dynamic
    try:
        try:
            api = kube_config.new_client_from_config(config_file=args.kubeconfig)
            _, context = kube_config.list_kube_config_contexts(config_file=args.kubeconfig)
            default_ns = (context or {}).get("context", {}).get("namespace") or "default"
        except kube_config.ConfigException:
            if args.kubeconfig:
                raise
            kube_config.load_incluster_config()
            from kubernetes import client as kube_client

            api = kube_client.ApiClient()
            default_ns = "default"
        client = dynamic.DynamicClient(api)
        resource = client.resources.get(api_version=API_VERSION, kind="ContainerImage")
    except ResourceNotFoundError:
        print(
            "image-ancestry import: --apply: the ContainerImage CRD is not installed "
            "(kubectl apply -f crds/containerimages.yaml)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except Exception as exc:  # config, connection and discovery failures alike
        print(f"image-ancestry import: --apply: cannot reach the cluster: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for applied, manifest in enumerate(manifests):
        metadata = manifest["metadata"]
        namespace = metadata.setdefault("namespace", args.namespace or default_ns)
        name = metadata["name"]
        try:
            resource.server_side_apply(
                body=manifest, name=name, namespace=namespace, field_manager=FIELD_MANAGER
            )
        except ApiException as exc:
            print(
                f"image-ancestry import: --apply {namespace}/{name}: {exc.status} {exc.reason}: "
                f"{_api_message(exc)} ({applied} of {len(manifests)} applied before it)",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        print(f"containerimage.imageancestry.io/{name} serverside-applied ({namespace})")
    return EXIT_OK


def _api_message(exc: Any) -> str:
    import json

    try:
        return str(json.loads(exc.body).get("message", exc.body))
    except (TypeError, ValueError, AttributeError):
        return str(exc.body)
