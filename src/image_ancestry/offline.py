"""``compute`` and ``tree``: the operator's answers without a cluster.

Both read ContainerImage manifests the way kubectl does (see :mod:`image_ancestry.manifests`)
and run the same engine as the operator, so CI can check a change of layers or marks before
it is applied. Output is built whole before anything is printed: bad input exits 2 with one
message on stderr and nothing on stdout, never a partial report.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections.abc import Callable
from typing import Any

import yaml

from image_ancestry import API_VERSION
from image_ancestry.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from image_ancestry.engine import MARKED_BASE_IMAGE, AncestryIndex
from image_ancestry.manifests import load_container_images
from image_ancestry.model import KIND, ManifestError

REPORT_KIND = "AncestryReport"
NONE = "<none>"  # what kubectl prints for an empty column
TABLE_COLUMNS = ("NAMESPACE", "NAME", "IMAGE", "LAYERS", "PARENT", "BASE", "REASON")


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """libyaml's dumper when present; never ``&id001`` anchors for the shared parts."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def register(subparsers: Any) -> None:
    """Add ``compute`` and ``tree`` (called by :func:`image_ancestry.cli.build_parser`)."""
    compute = subparsers.add_parser(
        "compute",
        help="compute every image's ancestry from manifests, offline",
        description="Read ContainerImage manifests and print the status the operator "
        "would write for each image.",
    )
    _add_common(compute)
    compute.add_argument(
        "-o",
        "--output",
        choices=("json", "yaml", "table"),
        default="json",
        help="json (default) or yaml: an AncestryReport; table: like kubectl get -o wide",
    )
    compute.set_defaults(func=run_compute)

    tree = subparsers.add_parser(
        "tree",
        help="print the forest of images, descendants under their parents",
        description="Read ContainerImage manifests and print each root image with its "
        "descendants indented under their parents; marked base images are flagged.",
    )
    _add_common(tree)
    tree.set_defaults(func=run_tree)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="YAML or JSON manifest files, directories (read recursively), or - for stdin",
    )
    parser.add_argument(
        "--disable-user-base-image",
        action="store_true",
        help="ignore anchore.user/marked_base_image: the base image is always the parent "
        "(enable_user_base_image: false)",
    )


def _load_index(args: argparse.Namespace) -> AncestryIndex:
    """Read, validate and index the manifests; warnings about marks go to stderr."""
    images = load_container_images(args.paths, warn=_warn)
    if not images:  # not an error (an empty report is valid), but rarely what was meant
        _warn(f"no {KIND} manifests found in {' '.join(args.paths)}")
    return AncestryIndex.build(
        (image.to_record() for image in images),
        user_base_image_enabled=not args.disable_user_base_image,
    )


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _run(args: argparse.Namespace, render: Callable[[AncestryIndex], str]) -> int:
    """Load, render, print: the error handling both commands share."""
    # A short-lived process building a large object graph: the cyclic collector would only
    # rescan it, again and again (it is most of the run time at 30k images).
    collecting = gc.isenabled()
    gc.disable()
    try:
        text = render(_load_index(args))
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if collecting:  # main() may run inside a longer process (tests, scripts)
            gc.enable()
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into head: not our failure to report loudly
        return EXIT_FAILURE
    return EXIT_OK


# --- compute --------------------------------------------------------------------------------


def run_compute(args: argparse.Namespace) -> int:
    renderers = {"json": render_json, "yaml": render_yaml, "table": render_table}
    return _run(args, renderers[args.output])


def report(index: AncestryIndex) -> dict[str, Any]:
    """The AncestryReport: every image's status, sorted by namespace then name."""
    statuses = dict(index.statuses())  # shares equal parts between images: read-only here
    items = [
        {"namespace": key[0], "name": key[1], "status": statuses[key]} for key in sorted(statuses)
    ]
    return {"apiVersion": API_VERSION, "kind": REPORT_KIND, "items": items}


def render_json(index: AncestryIndex) -> str:
    return json.dumps(report(index), indent=2) + "\n"


def render_yaml(index: AncestryIndex) -> str:
    text: str = yaml.dump(report(index), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    return text


def _shown(ref: dict[str, Any] | None) -> str:
    """A reference in a table cell: its image, else namespace/name (an image without
    spec.image still has a parent worth showing), else ``<none>``."""
    if ref is None:
        return NONE
    image = ref.get("image")
    return image if isinstance(image, str) else f"{ref['namespace']}/{ref['name']}"


def render_table(index: AncestryIndex) -> str:
    """Columns as ``kubectl get containerimages -o wide`` prints them, padded the same way."""
    rows = [TABLE_COLUMNS]
    for key in sorted(index.keys()):
        record = index.get(key)
        status = index.status(key)
        base = status["baseImage"]
        rows.append(
            (
                key[0],
                key[1],
                (record.image if record is not None else None) or NONE,
                str(status["layerCount"]),
                _shown(status["parent"]),
                _shown(base),
                NONE if base is None else base["reason"],
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(TABLE_COLUMNS))]
    lines = [
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    return "".join(line.rstrip() + "\n" for line in lines)


# --- tree -----------------------------------------------------------------------------------


def run_tree(args: argparse.Namespace) -> int:
    return _run(args, render_tree)


def render_tree(index: AncestryIndex) -> str:
    """Each root, then its children indented beneath it, recursively (ASCII only, so any
    terminal encoding prints it).

    Each line: ``namespace/name  image  (N layers)``, then ``[marked base image]`` on marked
    images and, where the base image is a marked ancestor, which one (otherwise the base is
    the parent, the line above).
    Images with identical layers are siblings (rule 1: neither is the other's ancestor); the
    first by key is the one their descendants hang under (rule 2's tie order), and the
    others say ``(same layers as ...)`` so that the empty branch is no surprise.
    """
    enabled = index.user_base_image_enabled
    lines: list[str] = []
    marked = 0
    first_with_layers: dict[tuple[str, ...], tuple[str, str]] = {}
    for key in sorted(index.keys()):
        record = index.get(key)
        if record is not None:
            first_with_layers.setdefault(record.layers, key)
    # (key, prefix for this line, prefix for its children); a stack, so deep chains are fine.
    roots = index.roots()
    stack = [(key, "", "") for key in reversed(roots)]
    while stack:
        key, prefix, child_prefix = stack.pop()
        record = index.get(key)
        assert record is not None
        status = index.status(key)
        parts = [
            f"{prefix}{key[0]}/{key[1]}",
            record.image or NONE,
            f"({status['layerCount']} layers)",
        ]
        twin = first_with_layers[record.layers]
        if twin != key:
            parts.append(f"(same layers as {twin[0]}/{twin[1]})")
        if record.marked:
            marked += 1
            parts.append("[marked base image]" if enabled else "[marked base image, ignored]")
        base = status["baseImage"]
        if base is not None and base["reason"] == MARKED_BASE_IMAGE:
            parts.append(f"base: {base['namespace']}/{base['name']} ({MARKED_BASE_IMAGE})")
        lines.append("  ".join(parts))
        children = index.children(key)
        for position in range(len(children) - 1, -1, -1):
            last = position == len(children) - 1
            stack.append(
                (
                    children[position],
                    child_prefix + ("`-- " if last else "|-- "),
                    child_prefix + ("    " if last else "|   "),
                )
            )
    lines.append("")
    lines.append(_flag_summary(len(index), len(roots), marked, enabled))
    return "\n".join(lines) + "\n"


def _flag_summary(images: int, roots: int, marked: int, enabled: bool) -> str:
    """Say what the flag did, so a reader of the tree knows why bases are what they are."""
    summary = (
        f"{_count(images, 'image')}, {_count(roots, 'root')}, "
        f"{_count(marked, 'marked base image')}."
    )
    if not marked:
        return summary
    if enabled:
        return (
            f"{summary}\nBase image: the closest marked ancestor, else the parent "
            "(--disable-user-base-image would make it always the parent)."
        )
    return f"{summary}\nMarks ignored (--disable-user-base-image): every base image is the parent."


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")
