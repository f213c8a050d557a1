"""The AncestryPolicy resource as Python types, with validation errors people can act on.

The CRD (``crds/ancestrypolicies.yaml``) already refuses most bad specs at the API server;
these types are what the operator and the gate read a stored policy into, so they repeat the
same checks (a CRD may be older than this code, and tests build policies without a cluster)
and add the ones a schema cannot say well: exactly one of ``image`` and ``digest`` per
matcher, a label selector's operator and values agreeing.

:meth:`AncestryPolicy.from_manifest` is the one way in. Every failure is a
:class:`PolicyError` naming the policy and the field, e.g.
``AncestryPolicy golden-bases: spec.rules.allowedBaseImages[1]: give either image or digest,
not both``.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from image_ancestry import API_VERSION
from image_ancestry.model import quote, validate_digest

KIND = "AncestryPolicy"
PLURAL = "ancestrypolicies"


class Action(enum.StrEnum):
    """What a failing policy does: refuse the object, or admit it with admission warnings."""

    DENY = "Deny"
    WARN = "Warn"


class UnknownImages(enum.StrEnum):
    """What to do with an image that no ContainerImage describes."""

    DENY = "Deny"
    ALLOW = "Allow"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ImageMatcher(_Strict):
    """One entry of ``allowedBaseImages`` or ``deniedAncestors``: a glob on an image's
    ``spec.image`` (Anchore's ``*_tag`` triggers) or an exact ``spec.digest`` (``*_digest``).

    The glob is :mod:`fnmatch`'s, case-sensitive: ``*`` matches any run of characters,
    ``/`` and ``:`` included (``r.example/*`` matches every image under that registry path),
    ``?`` one character, ``[abc]`` a set.
    """

    image: str | None = Field(default=None, min_length=1, max_length=512)
    digest: str | None = None

    @field_validator("image")
    @classmethod
    def _no_space(cls, value: str | None) -> str | None:
        if value is not None and any(ch.isspace() for ch in value):
            raise ValueError(f"{quote(value)}: an image glob cannot contain white space")
        return value

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        return None if value is None else validate_digest(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageMatcher:
        if (self.image is None) == (self.digest is None):
            which = "both" if self.image is not None else "neither"
            raise ValueError(
                f"give either image (a glob on spec.image) or digest (spec.digest), got {which}"
            )
        return self

    def describe(self) -> str:
        return f"image {self.image}" if self.image is not None else f"digest {self.digest}"


class LabelSelectorRequirement(_Strict):
    key: str = Field(min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":  # as in Kubernetes: a missing label is "not in"
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


class LabelSelector(_Strict):
    """A Kubernetes label selector: ``matchLabels`` and ``matchExpressions``, all must hold.
    The empty selector ``{}`` selects every namespace."""

    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, alias="matchExpressions"
    )

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        return all(requirement.matches(labels) for requirement in self.match_expressions)

    def describe(self) -> str:
        """As ``kubectl`` prints selectors: ``a=b,c in (d,e),!f``; ``<all>`` when empty."""
        parts = [f"{key}={value}" for key, value in sorted(self.match_labels.items())]
        for req in self.match_expressions:
            if req.operator == "In":
                parts.append(f"{req.key} in ({','.join(req.values)})")
            elif req.operator == "NotIn":
                parts.append(f"{req.key} notin ({','.join(req.values)})")
            elif req.operator == "Exists":
                parts.append(req.key)
            else:
                parts.append(f"!{req.key}")
        return ",".join(parts) or "<all>"


class PolicyRules(_Strict):
    """The ancestry rules. An absent list is no rule; an empty one is refused, because
    ``allowedBaseImages: []`` reads both as "allow none" and as "no restriction"."""

    allowed_base_images: list[ImageMatcher] | None = Field(
        default=None, min_length=1, alias="allowedBaseImages"
    )
    denied_ancestors: list[ImageMatcher] | None = Field(
        default=None, min_length=1, alias="deniedAncestors"
    )
    require_ancestors: StrictBool = Field(default=False, alias="requireAncestors")


class AncestryPolicySpec(_Strict):
    # Required: a policy that silently applied to every namespace because a selector was
    # forgotten would be a nasty surprise. ``{}`` says "every namespace" on purpose.
    namespace_selector: LabelSelector = Field(alias="namespaceSelector")
    action: Action = Action.DENY
    # Fail closed by default: the gate exists to keep unvetted images out.
    unknown_images: UnknownImages = Field(default=UnknownImages.DENY, alias="unknownImages")
    rules: PolicyRules = Field(default_factory=PolicyRules)


class AncestryPolicy(_Strict):
    """One policy as the gate uses it: its name, generation and parsed spec."""

    name: str
    generation: int = 0
    spec: AncestryPolicySpec

    @classmethod
    def from_manifest(cls, obj: Mapping[str, Any]) -> AncestryPolicy:
        """Validate a stored or written AncestryPolicy object; raises :class:`PolicyError`."""
        if not isinstance(obj, Mapping):
            raise PolicyError("<unnamed>", None, f"expected an object, got {quote(obj)}")
        metadata = obj.get("metadata")
        name = metadata.get("name") if isinstance(metadata, Mapping) else None
        if not isinstance(name, str) or not name:
            raise PolicyError("<unnamed>", "metadata.name", "required")
        if obj.get("kind", KIND) != KIND or obj.get("apiVersion", API_VERSION) != API_VERSION:
            raise PolicyError(
                name, "kind", f"expected {API_VERSION} {KIND}, got {quote(obj.get('kind'))}"
            )
        generation = metadata.get("generation", 0) if isinstance(metadata, Mapping) else 0
        spec = obj.get("spec")
        if spec is None:
            raise PolicyError(name, "spec", "required, with at least a namespaceSelector")
        if not isinstance(spec, Mapping):
            raise PolicyError(name, "spec", f"{quote(spec)}: expected a mapping")
        try:
            parsed = AncestryPolicySpec.model_validate(dict(spec))
        except ValidationError as exc:
            field, reason = _first_error(exc)
            raise PolicyError(name, field, reason) from None
        return cls(
            name=name, generation=generation if isinstance(generation, int) else 0, spec=parsed
        )


def _first_error(exc: ValidationError) -> tuple[str, str]:
    """Pydantic's first complaint as (``spec.rules.allowedBaseImages[1]``, reason)."""
    errors = exc.errors(include_url=False)
    error = errors[0]
    path = "spec"
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    kind = error["type"]
    value = error.get("input")
    if kind == "missing":
        reason = "required"
    elif kind == "extra_forbidden":
        reason = "unknown field"
    elif kind == "too_short":
        reason = "needs at least one entry (leave the rule out for no restriction)"
    elif kind in ("enum", "literal_error"):
        expected = error.get("ctx", {}).get("expected", "")
        reason = f"{quote(value)}: expected {expected}".rstrip(": ")
    elif kind == "value_error":
        reason = str(error.get("ctx", {}).get("error", error["msg"]))
    else:
        reason = f"{quote(value)}: {error['msg']}"
    if len(errors) > 1:
        reason += f" (and {len(errors) - 1} more problem(s))"
    return path, reason


class PolicyError(ValueError):
    """An AncestryPolicy that cannot be used: names the policy and the field."""

    def __init__(self, policy: str, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.policy = policy
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        where = f"{KIND} {self.policy}"
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


def compile_glob(pattern: str) -> re.Pattern[str]:
    """An image glob as a compiled, anchored, case-sensitive regular expression."""
    return re.compile(fnmatch.translate(pattern))
