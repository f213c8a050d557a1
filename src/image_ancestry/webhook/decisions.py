"""What the validating webhook answers, as pure functions of the request and the admin lists.

One function, :func:`decide`, takes the ``request`` of an AdmissionReview (``operation``,
``userInfo``, ``object``, ``oldObject``, ``namespace``) and the :class:`AdminConfig` in force,
and returns a :class:`Decision`. No I/O, no kopf: the kopf handler in :mod:`.server` only
forwards its result, and the unit tests call it directly.

Checks, in order (the first that fails is the answer):

1. **spec** -- the new object as :meth:`ContainerImage.from_manifest` reads it (digests,
   layers, types), so the webhook, the operator and the offline CLI judge a manifest alike.
2. **rule 5** -- the ``anchore.user/marked_base_image`` value is ``true`` or ``false``
   (trimmed, any case) or absent. Anything else is denied, to admins too.
3. **rule 7** -- a create or update that changes whether the image is marked (old vs new,
   read as rule 5 says; a create compares with "absent") is allowed only to a user in
   ``admin_users`` or in a group of ``admin_groups``, as the API server's ``userInfo`` says.

"Marked" is what rule 5 makes of the value: ``"true"`` and ``" TRUE "`` are the same (no
change), absent and ``"false"`` are the same (adding or removing ``"false"`` changes nothing).
Replacing a value that marked nothing (written before the webhook was installed) by ``false``
or by no annotation is no change either: it only cleans up.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from image_ancestry.model import MARK_ANNOTATION, ContainerImage, ManifestError, MarkState, quote
from image_ancestry.model import parse_mark as _parse_mark
from image_ancestry.webhook.config import ADMIN_GROUPS_KEY, ADMIN_USERS_KEY, AdminConfig

MARK_FIELD = f"metadata.annotations[{json.dumps(MARK_ANNOTATION)}]"
PREFIX = "image-ancestry"


@dataclass(frozen=True)
class Decision:
    """The answer: allowed or not, and for a denial the message and HTTP-style code."""

    allowed: bool
    message: str = ""
    code: int = 200
    rule: str | None = None  # "spec", "rule 5", "rule 7"; None when allowed
    warnings: tuple[str, ...] = field(default=())


ALLOW = Decision(True)


def _annotation(obj: Mapping[str, Any] | None) -> str | None:
    if obj is None:
        return None
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(MARK_ANNOTATION)
    return value if isinstance(value, str) or value is None else str(value)


def _describe(value: str | None) -> str:
    if value is None:
        return "no annotation (unmarked)"
    state = _parse_mark(value)
    if state is MarkState.MARKED:
        return f"{quote(value)} (marked)"
    if state is MarkState.UNMARKED:
        return f"{quote(value)} (unmarked)"
    return f"{quote(value)} (marks nothing)"


def _names(items: tuple[str, ...]) -> str:
    return ", ".join(items) if items else "none"


def _user(userinfo: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...]]:
    username = userinfo.get("username")
    groups = userinfo.get("groups") or []
    return (
        username if isinstance(username, str) else None,
        tuple(g for g in groups if isinstance(g, str)),
    )


def _check_spec(obj: Mapping[str, Any], namespace: str) -> Decision | None:
    # The name is generated before validating admission runs; guard anyway, so a missing
    # name is not reported as the user's mistake.
    metadata = obj.get("metadata") or {}
    if not metadata.get("name") and metadata.get("generateName"):
        obj = {**obj, "metadata": {**metadata, "name": f"{metadata['generateName']}x"}}
    try:
        ContainerImage.from_manifest(obj, source="admission", default_namespace=namespace)
    except ManifestError as exc:
        where = exc.field or "the object"
        return Decision(
            False,
            f"{PREFIX}: invalid ContainerImage: {where}: {exc.reason}",
            code=422,
            rule="spec",
        )
    return None


def _check_value(value: str | None, old_value: str | None) -> Decision | None:
    state = _parse_mark(value)
    if state is MarkState.INVALID:
        hint = (
            " The stored object already carries it (written before this webhook was installed):"
            ' remove the annotation or set it to "false" first; that needs no admin.'
            if old_value == value
            else ""
        )
        return Decision(
            False,
            f"{PREFIX} rule 5 (annotation values): {MARK_FIELD} is {quote(value)}: expected "
            '"true" (mark as a base image) or "false" (unmark), compared after trimming '
            "white space and case-insensitively, or no annotation. Any other value marks "
            "nothing, so it is refused, to admins too." + hint,
            code=422,
            rule="rule 5",
        )
    return None


def _check_who(
    old_value: str | None,
    value: str | None,
    operation: str,
    userinfo: Mapping[str, Any],
    config: AdminConfig | None,
) -> Decision | None:
    was_marked = _parse_mark(old_value) is MarkState.MARKED
    is_marked = _parse_mark(value) is MarkState.MARKED
    if was_marked == is_marked:
        return None
    username, groups = _user(userinfo)
    if config is not None and config.is_admin(username, groups):
        return None
    if operation == "CREATE":
        what = "create an image marked as a base image"
    elif is_marked:
        what = "mark this image as a base image"
    elif value is None:
        what = "remove the base-image mark"
    else:
        what = "unmark this base image"
    change = f"{MARK_FIELD} would change from {_describe(old_value)} to {_describe(value)}"
    who = f"user {quote(username or '')} (groups: {_names(groups)})"
    if config is None:
        return Decision(
            False,
            f"{PREFIX} rule 7 (who may mark): {who} may not {what} now: the webhook has not "
            "read its admin lists (ConfigMap image-ancestry-config) yet, so it cannot tell "
            f"who is an admin. {change}. Retry in a few seconds.",
            code=503,
            rule="rule 7",
        )
    return Decision(
        False,
        f"{PREFIX} rule 7 (who may mark): {who} may not {what}: {change}. Adding, changing "
        f"or removing the mark is allowed only to members of {ADMIN_GROUPS_KEY} "
        f"({_names(config.admin_groups)}) or users in {ADMIN_USERS_KEY} "
        f"({_names(config.admin_users)}) of {config.source}. Ask an admin to add you to one "
        "of them, or to make the change; other edits of this image need no admin.",
        code=403,
        rule="rule 7",
    )


def _warnings(value: str | None) -> tuple[str, ...]:
    if value is None or _parse_mark(value) is MarkState.INVALID:
        return ()
    canonical = value.strip().lower()
    if value != canonical:
        return (f"{MARK_FIELD}: {quote(value)} is read as {quote(canonical)}; write that.",)
    return ()


def decide(request: Mapping[str, Any], config: AdminConfig | None) -> Decision:
    """The webhook's answer to one AdmissionReview ``request`` for a ContainerImage.

    ``config`` is None while the admin lists are not known yet: only mark changes depend on
    them, and those are then denied (fail closed) with a message that says to retry.
    """
    operation = str(request.get("operation") or "")
    if operation not in ("CREATE", "UPDATE"):
        return ALLOW
    if request.get("subResource"):  # status writes carry no spec or annotation changes
        return ALLOW
    new = request.get("object")
    if not isinstance(new, Mapping):
        return Decision(False, f"{PREFIX}: the request has no object", code=400, rule="spec")
    old = request.get("oldObject") if operation == "UPDATE" else None
    old = old if isinstance(old, Mapping) else None
    userinfo = request.get("userInfo") or {}
    namespace = str(request.get("namespace") or "default")
    value = _annotation(new)
    old_value = _annotation(old)
    # An object that is being deleted only waits for its finalizers to go: do not trap it
    # with checks of content that can no longer matter, but still guard the mark.
    deleting = bool((new.get("metadata") or {}).get("deletionTimestamp"))
    if not deleting:
        denied = _check_spec(new, namespace) or _check_value(value, old_value)
        if denied is not None:
            return denied
    denied = _check_who(old_value, value, operation, userinfo, config)
    if denied is not None:
        return denied
    return Decision(True, warnings=_warnings(value))
