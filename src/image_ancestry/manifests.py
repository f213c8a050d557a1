"""Reading Kubernetes manifests from files, directories and standard input, as kubectl does.

:func:`load_documents` returns every object with where it came from, whatever its kind, so
each command picks its own kinds from the same files (``compute`` takes ContainerImages,
``compare --from`` VulnerabilityReports). :func:`load_container_images` is the validated
ContainerImage view on top of it.

Speed matters here: ``compute`` on tens of thousands of images spends most of its time
parsing. PyYAML's pure-Python loader is an order of magnitude slower than libyaml's, so the
C loader is used when PyYAML was built with it, and ``.json`` files skip YAML altogether.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from image_ancestry import GROUP
from image_ancestry.model import (
    KIND,
    MARK_ANNOTATION,
    ContainerImage,
    ManifestError,
    MarkState,
    quote,
)

STDIN = "-"
STDIN_SOURCE = "<stdin>"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class Document:
    """One object read from a manifest.

    ``index`` counts the documents of ``source`` from 1, as people count them; ``item`` is
    the position in a ``List``'s ``items`` (from 0, as kubectl's paths print it), else None.
    ``line`` is the 1-based line where the document starts, when the format tells.
    """

    source: str
    index: int
    obj: dict[str, Any]
    item: int | None = None
    line: int | None = None

    @property
    def where(self) -> str:
        """How a message names this document before its own name is known."""
        text = f"document {self.index}"
        if self.line is not None:
            text += f" (line {self.line})"
        if self.item is not None:
            text += f" items[{self.item}]"
        return text

    @property
    def kind(self) -> object:
        return self.obj.get("kind")


def load_documents(paths: Iterable[str], stdin: TextIO | None = None) -> list[Document]:
    """Every object in ``paths``: files, directories (recursively) or ``-`` for stdin.

    Lists (``kind: List`` and any ``*List`` with ``items``) are flattened into their items.
    Raises :class:`ManifestError` for a missing file, a file that does not parse, or a
    document that is not a Kubernetes object.
    """
    documents: list[Document] = []
    for source, text in _read_sources(paths, stdin):
        documents.extend(_documents(source, text))
    return documents


def is_container_image(document: Document) -> bool:
    """A ContainerImage of our group, whatever its version (from_manifest checks that)."""
    api_version = document.obj.get("apiVersion")
    return document.kind == KIND and (
        not isinstance(api_version, str) or api_version.split("/", 1)[0] == GROUP
    )


def load_container_images(
    paths: Iterable[str],
    *,
    default_namespace: str = "default",
    stdin: TextIO | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[ContainerImage]:
    """The validated ContainerImages in ``paths``, in reading order; other kinds are skipped.

    Raises :class:`ManifestError` on the first invalid image and on two images with the same
    namespace and name (naming both places). ``warn`` receives a message for every mark
    annotation whose value marks nothing (rule 5), so the caller decides where it goes.
    """
    images: list[ContainerImage] = []
    seen: dict[tuple[str, str], Document] = {}
    for document in load_documents(paths, stdin):
        if not is_container_image(document):
            continue
        image = ContainerImage.from_manifest(
            document.obj, document.source, default_namespace, label=document.where
        )
        first = seen.get(image.key)
        if first is not None:
            raise ManifestError(
                f"duplicate: {image.namespace}/{image.name} is also defined in "
                f"{first.source} ({first.where})",
                source=document.source,
                obj=f"{image.namespace}/{image.name}",
                field="metadata.name",
                value=image.name,
            )
        seen[image.key] = document
        if warn is not None and image.mark is MarkState.INVALID:
            value = image.annotations[MARK_ANNOTATION]
            warn(
                f"{document.source}: {KIND} {image.namespace}/{image.name}: "
                f"metadata.annotations[{json.dumps(MARK_ANNOTATION)}]: {quote(value)} marks "
                'nothing (expected "true" or "false"); the image is treated as unmarked'
            )
        images.append(image)
    return images


# --- reading sources ------------------------------------------------------------------------


def _read_sources(paths: Iterable[str], stdin: TextIO | None) -> Iterator[tuple[str, str]]:
    """(source name, text) of each file, directories expanded in sorted order."""
    for path in paths:
        if path == STDIN:
            stream = stdin if stdin is not None else sys.stdin
            yield STDIN_SOURCE, stream.read()
            continue
        root = Path(path)
        if root.is_dir():
            for file in _walk(root):
                yield str(file), _read_text(file)
        elif root.exists():
            yield path, _read_text(root)
        else:
            raise ManifestError("no such file or directory", source=path)


def _walk(root: Path) -> Iterator[Path]:
    """Manifest files below ``root``, sorted so that output and errors are reproducible."""
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        for name in sorted(files):
            if name.endswith(MANIFEST_SUFFIXES):
                yield Path(directory) / name


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"not UTF-8 text (byte {exc.start})", source=str(path)) from None
    except OSError as exc:
        raise ManifestError(exc.strerror or str(exc), source=str(path)) from None


# --- parsing ------------------------------------------------------------------------------


def _documents(source: str, text: str) -> Iterator[Document]:
    """Parse one file's text: JSON by name (or by look, on stdin), otherwise YAML."""
    looks_like_json = source == STDIN_SOURCE and text.lstrip()[:1] in ("{", "[")
    if source.endswith(".json") or looks_like_json:
        try:
            decoded = json.loads(text)
        except RecursionError:
            raise ManifestError("JSON nested too deeply to read", source=source) from None
        except json.JSONDecodeError as exc:
            if not looks_like_json:
                raise ManifestError(
                    f"line {exc.lineno}, column {exc.colno}: JSON does not parse: {exc.msg}",
                    source=source,
                ) from None
            # YAML flow style also starts with "{"; let the YAML parser have its say.
        except ValueError as exc:  # a number past Python's 4300-digit conversion limit
            raise ManifestError(f"a value cannot be read: {exc}", source=source) from None
        else:
            yield from _objects(source, 1, decoded, None)
            return
    yield from _yaml_documents(source, text)


def _yaml_documents(source: str, text: str) -> Iterator[Document]:
    loader = _Loader(text)
    index = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            index += 1
            if node is None:
                break
            decoded = loader.construct_document(node)
            if decoded is None:  # an empty document, as between two "---"
                continue
            yield from _objects(source, index, decoded, node.start_mark.line + 1)
    except ManifestError:  # ours, from _objects: already says where
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ManifestError(f"{at}YAML does not parse: {problem}", source=source) from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"YAML does not parse: {exc}", source=source) from None
    except RecursionError:
        raise ManifestError("YAML nested too deeply to read", source=source) from None
    except ValueError as exc:  # e.g. an integer past Python's 4300-digit conversion limit
        raise ManifestError(
            f"document {index}: a value cannot be read: {exc}", source=source
        ) from None
    finally:
        loader.dispose()


def _objects(source: str, index: int, decoded: object, line: int | None) -> Iterator[Document]:
    """One parsed document as objects: a List's items, or the document itself."""
    here = Document(source, index, {}, None, line)
    if not isinstance(decoded, Mapping):
        raise ManifestError(
            f"expected a Kubernetes object (a mapping), got {quote(decoded)}",
            source=source,
            obj=here.where,
        )
    obj = dict(decoded)
    items = obj.get("items")
    kind = obj.get("kind")
    if isinstance(kind, str) and (kind == "List" or (kind.endswith("List") and "items" in obj)):
        if not isinstance(items, list):
            raise ManifestError(
                f"{quote(items)}: expected a list of objects",
                source=source,
                obj=here.where,
                field="items",
                value=items,
            )
        for position, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise ManifestError(
                    f"expected a Kubernetes object (a mapping), got {quote(item)}",
                    source=source,
                    obj=here.where,
                    field=f"items[{position}]",
                    value=item,
                )
            yield Document(source, index, dict(item), position, line)
        return
    yield Document(source, index, obj, None, line)
