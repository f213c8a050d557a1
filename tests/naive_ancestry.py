"""The contract's rules 1 to 4, written the slow and obvious way: compare every pair.

This is the reference the engine is tested and benchmarked against. It must stay short
enough to check by reading it against ``api.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from image_ancestry.engine import MAX_LISTED_ANCESTORS, ImageKey, ImageRecord


def ref(record: ImageRecord) -> dict[str, Any]:
    """A reference, leaving out image and digest when absent (the engine's documented choice)."""
    out: dict[str, Any] = {"namespace": record.namespace, "name": record.name}
    if record.image is not None:
        out["image"] = record.image
    if record.digest is not None:
        out["digest"] = record.digest
    return out


def is_ancestor(a: ImageRecord, b: ImageRecord) -> bool:
    """Rule 1: a's layers are a proper prefix of b's."""
    return len(a.layers) < len(b.layers) and b.layers[: len(a.layers)] == a.layers


def ancestors(image: ImageRecord, records: Iterable[ImageRecord]) -> list[ImageRecord]:
    """Rule 2: closest (most layers) first, then namespace, then name."""
    found = [other for other in records if is_ancestor(other, image)]
    return sorted(found, key=lambda a: (-len(a.layers), a.namespace, a.name))


def status(image: ImageRecord, records: Iterable[ImageRecord], enabled: bool) -> dict[str, Any]:
    chain = ancestors(image, records)
    parent = chain[0] if chain else None  # rule 3
    marked = [a for a in chain if a.marked] if enabled else []
    base: dict[str, Any] | None = None  # rule 4
    if marked:
        base = {**ref(marked[0]), "reason": "MarkedBaseImage"}
    elif parent is not None:
        base = {**ref(parent), "reason": "ClosestAncestor"}
    return {
        "layerCount": len(image.layers),
        "ancestorCount": len(chain),
        "ancestors": [
            {**ref(a), "layerCount": len(a.layers)} for a in chain[:MAX_LISTED_ANCESTORS]
        ],
        "parent": None if parent is None else ref(parent),
        "baseImage": base,
    }


def all_statuses(
    records: Iterable[ImageRecord], enabled: bool = True
) -> dict[ImageKey, dict[str, Any]]:
    records = list(records)
    return {r.key: status(r, records, enabled) for r in records}


def children(key: ImageKey, records: Iterable[ImageRecord]) -> list[ImageKey]:
    """The images whose parent (first ancestor) is ``key``, sorted."""
    records = list(records)
    out = []
    for r in records:
        chain = ancestors(r, records)
        if chain and chain[0].key == key:
            out.append(r.key)
    return sorted(out)


def roots(records: Iterable[ImageRecord]) -> list[ImageKey]:
    records = list(records)
    return sorted(r.key for r in records if not ancestors(r, records))
