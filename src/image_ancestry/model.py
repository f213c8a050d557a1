"""The ContainerImage resource as Python types, and the validation the contract asks for.

Everything that reads ContainerImages (the operator, the webhook, the offline CLI) goes
through :meth:`ContainerImage.from_manifest`, so a manifest is judged the same way everywhere,
and every failure is a :class:`ManifestError` that names the file, the object and the field:
people fix YAML by reading these messages, so they must point at the exact spot.

The engine does not see these types: :meth:`ContainerImage.to_record` turns one into the
engine's plain, frozen :class:`~image_ancestry.engine.ImageRecord`, which keeps pydantic out
of the hot path.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from image_ancestry import API_VERSION
from image_ancestry.engine import ImageRecord

KIND = "ContainerImage"
MARK_ANNOTATION = "anchore.user/marked_base_image"

LAYER_CAP = 256
"""The most layers one ``spec.layers`` may hold (the CRD's ``maxItems``).

The contract asks for a documented cap of at least 128. Real images stay far below it
(overlayfs stacks top out at about 128 lower directories, and Docker refuses builds past
that), so 256 rejects only junk while leaving room for squashed-and-rebased oddities. The cap
also bounds the engine's per-image work: a status walk is at most ``LAYER_CAP`` steps.
"""

# The OCI image-spec digest grammar (descriptor.md, "Digests"):
#   digest     ::= algorithm ":" encoded
#   algorithm  ::= component (separator component)*
#   component  ::= [a-z0-9]+
#   separator  ::= [+._-]
#   encoded    ::= [a-zA-Z0-9=_-]+
# Only RE2 syntax, because this string is also the CRD's OpenAPI ``pattern``: no lookarounds,
# so the per-algorithm lengths below are enforced in code (and by the webhook), not here.
DIGEST_PATTERN = r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$"

# Registered algorithms whose encoded part the OCI spec fixes: lower-case hex of this length.
DIGEST_HEX_LENGTHS: dict[str, int] = {"sha256": 64, "sha512": 128}

_DIGEST_RE = re.compile(DIGEST_PATTERN)
_LOWER_HEX_RE = re.compile(r"[a-f0-9]+")
# The overwhelmingly common case, checked first with one match instead of three steps.
_SHA256_RE = re.compile(r"sha256:[a-f0-9]{64}")

# Kubernetes object names: a namespace is an RFC 1123 label, a custom resource's name an
# RFC 1123 subdomain (what the API server enforces for CRs).
_DNS_LABEL_RE = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN_RE = re.compile(
    r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
)
_DNS_SUBDOMAIN_MAX = 253
_REFERENCE_RE = re.compile(r"\S+")


def quote(value: object, limit: int = 80) -> str:
    """Show a bad value in a message: strings JSON-quoted, anything else with its type.

    Junk can be huge or deeply nested, so the text is cut at ``limit`` characters.
    """
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=repr)
        except (ValueError, RecursionError):  # circular or absurdly deep structures
            text = "<" + type(value).__name__ + ">"
        text = f"{text} (a {_type_name(value)})"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: object) -> str:
    """The YAML/JSON name of a value's type, as a manifest author would call it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def validate_digest(value: object) -> str:
    """Return ``value`` if it is an OCI digest, else raise :class:`ValueError`.

    Beyond the grammar (:data:`DIGEST_PATTERN`), ``sha256`` needs 64 and ``sha512`` 128
    lower-case hex characters, as the OCI spec registers them. Other algorithms pass on the
    grammar alone: the spec lets implementations accept algorithms it does not register.
    """
    if isinstance(value, str) and _SHA256_RE.fullmatch(value):
        return value
    if not isinstance(value, str):
        raise ValueError(
            f"{quote(value)} is not a valid digest: expected a string like sha256:<64 hex>"
        )
    if not _DIGEST_RE.fullmatch(value):
        raise ValueError(
            f"{quote(value)} is not a valid digest: expected algorithm:encoded, "
            "e.g. sha256:<64 lower-case hex characters>"
        )
    algorithm, _, encoded = value.partition(":")
    length = DIGEST_HEX_LENGTHS.get(algorithm)
    if length is None:
        return value
    if len(encoded) != length:
        got = f"got {len(encoded)}"
    elif not _LOWER_HEX_RE.fullmatch(encoded):
        got = "got characters that are not lower-case hex"
    else:
        return value
    raise ValueError(
        f"{quote(value)} is not a valid digest: {algorithm} needs {length} lower-case hex "
        f"characters, {got}"
    )


class MarkState(enum.Enum):
    """What the ``anchore.user/marked_base_image`` annotation says (rule 5)."""

    MARKED = "true"
    UNMARKED = "false"
    INVALID = "invalid"  # a value that marks nothing: the webhook rejects it, the CLI warns


def parse_mark(value: str | None) -> MarkState:
    """Read the annotation as rule 5 says: trimmed, case-insensitive; absent is unmarked."""
    if value is None:
        return MarkState.UNMARKED
    word = value.strip().lower()
    if word == "true":
        return MarkState.MARKED
    if word == "false":
        return MarkState.UNMARKED
    return MarkState.INVALID


def _check_image_reference(value: str) -> str:
    # Deliberately loose: references have many dialects (ports, digests, localhost), and
    # the gate normalises them later. Reject only what cannot be a reference at all.
    if not _REFERENCE_RE.fullmatch(value):
        raise ValueError(
            f"{quote(value)} is not an image reference: expected e.g. registry.example.com/app:v1"
        )
    return value


Digest = Annotated[str, AfterValidator(validate_digest)]
ImageReference = Annotated[str, AfterValidator(_check_image_reference)]


class ContainerImageSpec(BaseModel):
    """``spec`` of a ContainerImage: written by people, GitOps tools and importers."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    image: ImageReference | None = None
    digest: Digest | None = None
    # Bottom (first) to top (last). Repeats are allowed: old builders repeat the empty layer.
    layers: list[Digest] = Field(min_length=1, max_length=LAYER_CAP)


class ContainerImage(BaseModel):
    """One ContainerImage object, reduced to what ancestry needs."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    namespace: str
    name: str
    annotations: dict[str, str] = Field(default_factory=dict)
    spec: ContainerImageSpec

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def mark(self) -> MarkState:
        return parse_mark(self.annotations.get(MARK_ANNOTATION))

    def to_record(self) -> ImageRecord:
        """The engine's view of this image: only an annotation that parses as ``true`` marks."""
        return ImageRecord(
            namespace=self.namespace,
            name=self.name,
            layers=tuple(self.spec.layers),
            image=self.spec.image,
            digest=self.spec.digest,
            marked=self.mark is MarkState.MARKED,
        )

    @classmethod
    def from_record(cls, record: ImageRecord) -> ContainerImage:
        """The inverse of :meth:`to_record`: a mark becomes the annotation ``"true"``."""
        annotations = {MARK_ANNOTATION: "true"} if record.marked else {}
        spec = ContainerImageSpec(
            image=record.image, digest=record.digest, layers=list(record.layers)
        )
        return cls(namespace=record.namespace, name=record.name, annotations=annotations, spec=spec)

    def to_manifest(self) -> dict[str, Any]:
        """The Kubernetes object for this image, as ``kubectl create`` takes it."""
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        spec: dict[str, Any] = {"layers": list(self.spec.layers)}
        if self.spec.image is not None:
            spec["image"] = self.spec.image
        if self.spec.digest is not None:
            spec["digest"] = self.spec.digest
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}

    @classmethod
    def from_manifest(
        cls,
        obj: Mapping[str, Any],
        source: str = "<input>",
        default_namespace: str = "default",
        *,
        label: str | None = None,
    ) -> ContainerImage:
        """Validate one manifest (a decoded YAML/JSON object) into a ContainerImage.

        ``source`` names the file in messages; ``label`` names the object while its own name
        is not known yet (e.g. ``"document 3"``). Whatever ``obj`` holds, the only exception
        is :class:`ManifestError`. Top-level ``status`` is ignored, so ``kubectl get -o yaml``
        output reads back; unknown ``spec`` fields are refused, as kubectl's strict field
        validation would refuse them.
        """
        where = label or "document"

        def fail(field: str | None, value: object, reason: str) -> ManifestError:
            return ManifestError(reason, source=source, obj=where, field=field, value=value)

        if not isinstance(obj, Mapping):
            raise fail(None, obj, f"expected a Kubernetes object (a mapping), got {quote(obj)}")
        kind = obj.get("kind")
        if kind != KIND:
            raise fail("kind", kind, f"{quote(kind)}: expected {KIND}")
        api_version = obj.get("apiVersion")
        if api_version != API_VERSION:
            raise fail("apiVersion", api_version, f"{quote(api_version)}: expected {API_VERSION}")

        metadata = obj.get("metadata")
        if not isinstance(metadata, Mapping):
            raise fail("metadata", metadata, f"{quote(metadata)}: expected a mapping with a name")
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            raise fail("metadata.name", name, f"{quote(name)}: expected a non-empty string")
        if len(name) > _DNS_SUBDOMAIN_MAX or not _DNS_SUBDOMAIN_RE.fullmatch(name):
            raise fail(
                "metadata.name",
                name,
                f"{quote(name)} is not a valid name: expected lower-case letters, digits, '-' "
                f"and '.', starting and ending alphanumeric, at most {_DNS_SUBDOMAIN_MAX}",
            )
        namespace = metadata.get("namespace", default_namespace)
        if namespace is None:
            namespace = default_namespace
        if not isinstance(namespace, str) or not _DNS_LABEL_RE.fullmatch(namespace):
            raise fail(
                "metadata.namespace",
                namespace,
                f"{quote(namespace)} is not a valid namespace: expected lower-case letters, "
                "digits and '-', at most 63",
            )
        where = f"{namespace}/{name}"

        annotations = metadata.get("annotations")
        if annotations is None:
            annotations = {}
        if not isinstance(annotations, Mapping):
            raise fail(
                "metadata.annotations", annotations, f"{quote(annotations)}: expected a mapping"
            )
        for key, value in annotations.items():
            if not isinstance(key, str):
                raise fail("metadata.annotations", key, f"key {quote(key)}: expected a string")
            if not isinstance(value, str):
                hint = ' (quote it: "true")' if isinstance(value, bool) else ""
                raise fail(
                    f"metadata.annotations[{json.dumps(key)}]",
                    value,
                    f"{quote(value)}: annotation values must be strings{hint}",
                )

        spec = obj.get("spec")
        if not isinstance(spec, Mapping):
            raise fail("spec", spec, f"{quote(spec)}: expected a mapping with layers")
        try:
            parsed_spec = ContainerImageSpec.model_validate(dict(spec))
        except ValidationError as exc:
            field, value, reason = _first_error(exc, spec)
            raise fail(field, value, reason) from None
        except RecursionError:  # pathological nesting pydantic cannot even walk
            raise fail("spec", None, "nested too deeply to be a ContainerImage spec") from None
        return cls.model_construct(
            namespace=namespace, name=name, annotations=dict(annotations), spec=parsed_spec
        )


def _first_error(exc: ValidationError, spec: Mapping[str, Any]) -> tuple[str, object, str]:
    """Turn pydantic's first complaint about ``spec`` into (field path, value, reason).

    One precise message beats a list: fixing the first problem is what the author does next.
    """
    error = exc.errors(include_url=False)[0]
    loc = error["loc"]
    field = "spec" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    value = error.get("input")
    kind = error["type"]
    top = loc[0] if loc else None
    if kind == "missing":
        reason = "required" + (", with at least one layer digest" if top == "layers" else "")
        value = None
    elif kind == "extra_forbidden":
        known = ", ".join(ContainerImageSpec.model_fields)
        reason = f"unknown field (a ContainerImage spec has {known})"
    elif kind == "too_short":
        reason = "needs at least one layer digest"
    elif kind == "too_long":
        count = len(value) if isinstance(value, list) else "too many"
        reason = f"{count} layers: at most {LAYER_CAP} allowed"
        value = None
    elif kind == "value_error":
        # Our own validators: their message already quotes the value.
        reason = str(error.get("ctx", {}).get("error", error["msg"]))
    elif kind == "list_type":
        reason = f"{quote(value)}: expected a list of layer digests"
    elif kind == "string_type" and top in ("layers", "digest"):
        reason = f"{quote(value)} is not a valid digest: expected a string like sha256:<64 hex>"
    elif kind == "string_type":
        reason = f"{quote(value)}: expected a string"
    else:
        reason = f"{quote(value)}: {error['msg']}"
    if len(exc.errors()) > 1:
        reason += f" (and {len(exc.errors()) - 1} more problem(s) in spec)"
    return field, value, reason


class ManifestError(ValueError):
    """A manifest that cannot be read: names the file, the object and the field.

    ``obj`` is ``"namespace/name"`` once the object's name is known, else a position such as
    ``"document 3"``; ``field`` is a path such as ``spec.layers[2]`` (None when the whole file
    or document is at fault); ``value`` is the offending value, when there is one.
    """

    def __init__(
        self,
        reason: str,
        *,
        source: str,
        obj: str | None = None,
        field: str | None = None,
        value: object = None,
        kind: str = KIND,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.source = source
        self.obj = obj
        self.field = field
        self.value = value
        self.kind = kind

    def __str__(self) -> str:
        parts = [self.source]
        if self.obj is not None:
            named = "/" in self.obj
            parts.append(f"{self.kind} {self.obj}" if named else self.obj)
        if self.field is not None:
            parts.append(self.field)
        parts.append(self.reason)
        return ": ".join(parts)
