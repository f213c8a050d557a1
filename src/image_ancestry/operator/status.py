"""The status the operator writes, as pure functions (no I/O, no kopf).

The operator owns these keys of ``status``: the contract's ``layerCount``, ``ancestorCount``,
``ancestors``, ``parent`` and ``baseImage`` (from :meth:`AncestryIndex.status`), plus
``observedGeneration``, the ``Ready`` condition, ``declaredBase`` and ``vulnerabilities``
(base comparison, :mod:`image_ancestry.compare`). Other keys and conditions are left as they
are.

A missing value is written as JSON merge-patch ``null``, which removes the key: ``parent:
null`` in the contract reads as "no ``parent`` key" in the stored object. The patch names every
owned key and every reference sub-key, so it is right whatever the stored object held.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from image_ancestry.compare.vulnerabilities import merge_patch_value
from image_ancestry.model import MARK_ANNOTATION, quote
from image_ancestry.references import try_normalise

READY = "Ready"
COMPUTED = "Computed"
INVALID_SPEC = "InvalidSpec"
STATUS_WRITE_REFUSED = "StatusWriteRefused"

DECLARED_BASE_NAME = "imageancestry.io/declared-base-name"
DECLARED_BASE_DIGEST = "imageancestry.io/declared-base-digest"

OWNED_KEYS = (
    "observedGeneration",
    "layerCount",
    "ancestorCount",
    "ancestors",
    "parent",
    "baseImage",
    "declaredBase",
    "vulnerabilities",
    "conditions",
)
_REFERENCE_KEYS = {
    "parent": ("namespace", "name", "image", "digest"),
    "baseImage": ("namespace", "name", "image", "digest", "reason"),
    "declaredBase": ("name", "digest", "agrees"),
}


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def declared_base(
    annotations: Mapping[str, str], base: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """``status.declaredBase`` for an image whose importer recorded the base it claims.

    It agrees when the computed base image has the declared digest (``spec.digest``); with
    only a name declared, when the base's ``spec.image`` is that reference (normalised).
    No computed base never agrees. No annotations: no ``declaredBase``.
    """
    name = annotations.get(DECLARED_BASE_NAME) or None
    digest = annotations.get(DECLARED_BASE_DIGEST) or None
    if name is None and digest is None:
        return None
    if base is None:
        agrees = False
    elif digest is not None:
        agrees = base.get("digest") == digest
    else:
        image = base.get("image")
        agrees = image is not None and (
            image == name or (try_normalise(image) or image) == try_normalise(str(name))
        )
    result: dict[str, Any] = {"agrees": agrees}
    if name is not None:
        result["name"] = name
    if digest is not None:
        result["digest"] = digest
    return result


def _ready(
    ok: bool, reason: str, message: str, generation: int | None, stored: Mapping[str, Any]
) -> dict[str, Any]:
    status = "True" if ok else "False"
    previous = next(
        (
            c
            for c in stored.get("conditions") or []
            if isinstance(c, dict) and c.get("type") == READY
        ),
        None,
    )
    since = (
        previous.get("lastTransitionTime")
        if previous is not None and previous.get("status") == status
        else None
    )
    condition: dict[str, Any] = {
        "type": READY,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or now_rfc3339(),
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def _conditions(ready: dict[str, Any], stored: Mapping[str, Any]) -> list[dict[str, Any]]:
    others = [
        c for c in stored.get("conditions") or [] if isinstance(c, dict) and c.get("type") != READY
    ]
    return [*others, ready]


def computed_message(engine_status: Mapping[str, Any], mark_value: str | None) -> str:
    count = engine_status["ancestorCount"]
    base = engine_status.get("baseImage")
    if base is None:
        message = "no ancestors"
    else:
        word = "ancestor" if count == 1 else "ancestors"
        message = (
            f"{count} {word}; base image {base['namespace']}/{base['name']} ({base['reason']})"
        )
    if mark_value is not None and mark_value.strip().lower() not in ("true", "false"):
        message += (
            f"; annotation {MARK_ANNOTATION}={quote(mark_value)} marks nothing"
            ' (use "true" or "false")'
        )
    return message


def desired_status(
    engine_status: Mapping[str, Any] | None,
    *,
    generation: int | None,
    annotations: Mapping[str, str],
    stored: Mapping[str, Any],
    error: str | None = None,
    vulnerabilities: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every owned key's desired value (None: absent). ``engine_status`` is None for an
    object the engine does not hold (its spec is invalid: ``error`` says why);
    ``vulnerabilities`` is already in stored form (nulls left out, see ``compare``)."""
    desired: dict[str, Any] = dict.fromkeys(OWNED_KEYS)
    desired["observedGeneration"] = generation
    if engine_status is None:
        ready = _ready(False, INVALID_SPEC, error or "invalid spec", generation, stored)
    else:
        for key in ("layerCount", "ancestorCount", "ancestors", "parent", "baseImage"):
            desired[key] = engine_status.get(key)
        desired["declaredBase"] = declared_base(annotations, engine_status.get("baseImage"))
        desired["vulnerabilities"] = vulnerabilities
        message = computed_message(engine_status, annotations.get(MARK_ANNOTATION))
        ready = _ready(True, COMPUTED, message, generation, stored)
    desired["conditions"] = _conditions(ready, stored)
    return desired


def refused_status(
    *, code: int, reason: str, message: str, generation: int | None, stored: Mapping[str, Any]
) -> dict[str, Any]:
    """The minimal status written when the API server refuses the full one (HTTP ``code``,
    its Status ``reason`` and ``message``): every owned key absent but ``observedGeneration``
    and a ``Ready=False`` condition saying why, short whatever the server said."""
    desired: dict[str, Any] = dict.fromkeys(OWNED_KEYS)
    desired["observedGeneration"] = generation
    cause = f"{code} {reason[:64] or 'error'}"
    text = f"the API server refused the status: {cause}: {quote(message, 300)}"
    ready = _ready(False, STATUS_WRITE_REFUSED, text, generation, stored)
    desired["conditions"] = _conditions(ready, stored)
    return desired


def fingerprint(owned: Mapping[str, Any]) -> bytes:
    """A 16-byte digest of the owned keys that are present (None counts as absent)."""
    present = {key: owned[key] for key in OWNED_KEYS if owned.get(key) is not None}
    text = json.dumps(present, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def compact(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the controller keeps of a stored status: a fingerprint of the owned keys, the
    conditions (to keep transition times and other conditions) and the base's identity.

    Keeping the whole status would hold every ancestors list twice (once computable from the
    index): at 5k images that is some 20 MiB of the operator's memory for nothing.
    """
    if not isinstance(status, Mapping):
        status = {}
    kept: dict[str, Any] = {"fingerprint": fingerprint(status)}
    if status.get("conditions") is not None:
        kept["conditions"] = status["conditions"]
    base = status.get("baseImage")
    if isinstance(base, Mapping):
        kept["baseImage"] = {k: base.get(k) for k in ("namespace", "name", "reason")}
    return kept


def matches(desired: Mapping[str, Any], stored: Mapping[str, Any]) -> bool:
    """Whether the stored status (full, or :func:`compact`) already holds every owned key
    as desired (absent = None)."""
    stored_print = stored.get("fingerprint")
    if not isinstance(stored_print, bytes):
        stored_print = fingerprint(stored)
    return fingerprint(desired) == stored_print


def merge_patch(desired: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch of ``status`` that makes the owned keys exactly ``desired``.

    References name every sub-key (absent ones as null), so a stale ``image`` of an earlier
    parent cannot survive the merge.
    """
    patch: dict[str, Any] = {}
    for key in OWNED_KEYS:
        value = desired[key]
        subkeys = _REFERENCE_KEYS.get(key)
        if isinstance(value, dict) and subkeys is not None:
            value = {sub: value.get(sub) for sub in subkeys}
        elif key == "vulnerabilities":
            value = merge_patch_value(value)
        patch[key] = value
    return {"status": patch}


def base_identity(status: Mapping[str, Any] | None) -> tuple[str, str] | None:
    base = (status or {}).get("baseImage")
    if not isinstance(base, dict):
        return None
    return (str(base.get("namespace")), str(base.get("name")))


def was_computed(stored: Mapping[str, Any]) -> bool:
    """Whether a stored status is one an operator computed successfully (Ready=True)."""
    return any(
        isinstance(c, dict) and c.get("type") == READY and c.get("status") == "True"
        for c in stored.get("conditions") or []
    )
