"""The ancestry gate: pure admission decisions from the in-memory ancestry index.

Nothing here talks to Kubernetes. The operator keeps three things up to date from its
watches and hands them in:

- the :class:`~image_ancestry.engine.AncestryIndex` (ancestors and base images),
- an :class:`ImageLookup` beside it (container image reference -> ContainerImages, O(1)),
- a :class:`PolicySet` (the AncestryPolicies, and which namespaces each selects).

:meth:`Gate.decide` then turns one admitted object (a Pod, or a workload with a pod template)
into a :class:`Decision`: allowed or not, the denial message, the admission warnings.

Resolution (the contract): a container's ``image`` resolves by digest first
(``ref@sha256:...`` against ``spec.digest``), else by its normalised reference against the
normalised ``spec.image``. A reference pinned to a digest no ContainerImage has falls back to
its tag only among ContainerImages that declare no digest: one that declares another digest
is, for certain, another image. When several ContainerImages describe one image (a retag in
two namespaces, a stale image left under a moving tag), every one must pass: the decision
then does not depend on which one a lookup happens to find first, and a stale description
that fails is something to clean up, which the message names.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from image_ancestry.engine import AncestryIndex, ImageKey, ImageRecord
from image_ancestry.policy.model import (
    Action,
    AncestryPolicy,
    ImageMatcher,
    UnknownImages,
    compile_glob,
)
from image_ancestry.references import ReferenceError, parse_reference, split_digest

# Where each gated kind keeps its pod spec.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
CONTAINER_FIELDS = ("initContainers", "containers", "ephemeralContainers")
# How a message names a container of each list, as kubectl users know them.
_CONTAINER_WORDS = {
    "initContainers": "init container",
    "containers": "container",
    "ephemeralContainers": "ephemeral container",
}
ALWAYS_EXEMPT = frozenset({"kube-system"})

RULE_UNKNOWN = "unknownImages"
RULE_BASE = "allowedBaseImages"
RULE_DENIED = "deniedAncestors"
RULE_REQUIRE = "requireAncestors"


# --- what an object runs -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Container:
    """One container of a pod spec: which list it is in, its name and its image."""

    field: str  # "containers", "initContainers" or "ephemeralContainers"
    name: str
    image: str

    def describe(self) -> str:
        return f'{_CONTAINER_WORDS.get(self.field, "container")} "{self.name}"'


def pod_spec_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod spec of a Pod or of a workload's template; None for other kinds."""
    path = POD_SPEC_PATHS.get(obj.get("kind", ""))
    if path is None:
        return None
    current: Any = obj
    for step in path:
        current = current.get(step) if isinstance(current, Mapping) else None
    return current if isinstance(current, Mapping) else None


def containers_of(obj: Mapping[str, Any]) -> tuple[Container, ...]:
    """Every container (init, regular, ephemeral) of a Pod or a workload's pod template."""
    spec = pod_spec_of(obj)
    if spec is None:
        return ()
    found: list[Container] = []
    for list_field in CONTAINER_FIELDS:
        entries = spec.get(list_field)
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if isinstance(entry, Mapping):
                image = entry.get("image")
                name = entry.get("name")
                found.append(
                    Container(
                        list_field,
                        name if isinstance(name, str) else "?",
                        image if isinstance(image, str) else "",
                    )
                )
    return tuple(found)


# --- image reference -> ContainerImages ----------------------------------------------------


@functools.lru_cache(maxsize=65536)
def _parse(text: str) -> tuple[str | None, str | None] | None:
    """(normalised ``name:tag`` or None, digest or None); None when ``text`` is no reference."""
    try:
        ref = parse_reference(text)
    except ReferenceError:
        return None
    return ref.tagged, ref.digest


@dataclass(frozen=True, slots=True)
class _Entry:
    tagged: str | None
    digests: frozenset[str]


@dataclass(frozen=True, slots=True)
class Resolution:
    """What a container image reference resolved to. ``by`` is ``digest``, ``reference``,
    or None when nothing describes it (``candidates`` empty)."""

    candidates: tuple[ImageKey, ...]
    by: str | None
    invalid: bool = False  # the text is no image reference at all


class ImageLookup:
    """Container image reference -> the ContainerImages describing it, in O(1).

    Kept beside the engine's index: call :meth:`upsert` and :meth:`remove` with the same
    records. A ContainerImage is found by its ``spec.digest`` (and a digest written into
    ``spec.image``), by the digests given with :meth:`set_extra_digests` (the image index
    a platform manifest was imported from), and by its normalised ``spec.image`` tag.
    """

    def __init__(self) -> None:
        self._entries: dict[ImageKey, _Entry] = {}
        self._by_digest: dict[str, set[ImageKey]] = {}
        self._by_tagged: dict[str, set[ImageKey]] = {}
        self._records: dict[ImageKey, ImageRecord] = {}
        self._extra: dict[ImageKey, frozenset[str]] = {}

    @classmethod
    def from_records(cls, records: Iterable[ImageRecord]) -> ImageLookup:
        lookup = cls()
        for record in records:
            lookup.upsert(record)
        return lookup

    @classmethod
    def from_index(cls, index: AncestryIndex) -> ImageLookup:
        keys = index.keys()  # AncestryIndex is no mapping: it has no __iter__
        return cls.from_records(record for key in keys if (record := index.get(key)) is not None)

    def __len__(self) -> int:
        return len(self._entries)

    def set_extra_digests(self, key: ImageKey, digests: Iterable[str]) -> None:
        """More digests that name the image ``key`` (kept until changed, also while the
        image itself is not, or no longer, in the lookup)."""
        extra = frozenset(digests)
        if self._extra.get(key, frozenset()) == extra:
            return
        if extra:
            self._extra[key] = extra
        else:
            self._extra.pop(key, None)
        record = self._records.get(key)
        if record is not None:
            self.upsert(record)

    def upsert(self, record: ImageRecord) -> None:
        self._records[record.key] = record
        tagged: str | None = None
        digests: set[str] = set(self._extra.get(record.key, ()))
        if record.digest is not None:
            digests.add(record.digest)
        if record.image is not None:
            parsed = _parse(record.image)
            if parsed is not None:
                tagged, embedded = parsed
                if embedded is not None:
                    digests.add(embedded)
        entry = _Entry(tagged, frozenset(digests))
        key = record.key
        if self._entries.get(key) == entry:
            return
        self._unindex(key)
        self._entries[key] = entry
        for digest in entry.digests:
            self._by_digest.setdefault(digest, set()).add(key)
        if tagged is not None:
            self._by_tagged.setdefault(tagged, set()).add(key)

    def remove(self, key: ImageKey) -> None:
        self._records.pop(key, None)
        self._unindex(key)

    def _unindex(self, key: ImageKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for digest in entry.digests:
            _discard(self._by_digest, digest, key)
        if entry.tagged is not None:
            _discard(self._by_tagged, entry.tagged, key)

    def resolve(self, text: str) -> Resolution:
        parsed = _parse(text)
        if parsed is None:
            # Not a reference the runtime would pull; a digest may still be readable.
            _, digest = split_digest(text)
            by_digest = self._by_digest.get(digest) if digest else None
            if by_digest:
                return Resolution(tuple(sorted(by_digest)), "digest")
            return Resolution((), None, invalid=True)
        tagged, digest = parsed
        if digest is not None:
            found = self._by_digest.get(digest)
            if found:
                return Resolution(tuple(sorted(found)), "digest")
            if tagged is None:
                return Resolution((), None)
            undigested = [
                key for key in self._by_tagged.get(tagged, ()) if not self._entries[key].digests
            ]
            return Resolution(tuple(sorted(undigested)), "reference" if undigested else None)
        found = self._by_tagged.get(tagged or "")
        if found:
            return Resolution(tuple(sorted(found)), "reference")
        return Resolution((), None)


def _discard(table: dict[str, set[ImageKey]], value: str, key: ImageKey) -> None:
    keys = table.get(value)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del table[value]


class LookupIndex(AncestryIndex):
    """An :class:`~image_ancestry.engine.AncestryIndex` that keeps an :class:`ImageLookup`
    in step with every write, and counts writes (:attr:`version`) so the audit knows when
    images changed. The operator uses it in place of a plain index; reads are unchanged."""

    def __init__(self, user_base_image_enabled: bool = True) -> None:
        super().__init__(user_base_image_enabled)
        self.lookup = ImageLookup()
        self.version = 0

    @classmethod
    def build(
        cls, records: Iterable[ImageRecord], user_base_image_enabled: bool = True
    ) -> LookupIndex:
        index = super().build(records, user_base_image_enabled)
        assert isinstance(index, LookupIndex)
        index.lookup = ImageLookup.from_index(index)
        return index

    def upsert(self, record: ImageRecord) -> set[ImageKey]:
        if self.get(record.key) != record:  # even a change no status shows: a new reference
            self.version += 1
        changed = super().upsert(record)
        self.lookup.upsert(record)
        return changed

    def remove(self, key: ImageKey) -> set[ImageKey]:
        present = key in self
        changed = super().remove(key)
        self.lookup.remove(key)
        if present:
            self.version += 1
        return changed

    def set_user_base_image_enabled(self, enabled: bool) -> set[ImageKey]:
        changed = super().set_user_base_image_enabled(enabled)
        if changed:
            self.version += 1
        return changed


# --- matchers ------------------------------------------------------------------------------

_HOSTLIKE = re.compile(r"[^/]*[.:][^/]*|localhost")


def normalise_glob(pattern: str) -> str:
    """A glob written in the short form people use, spelled as the runtime normalises names.

    ``debian:9*`` -> ``docker.io/library/debian:9*``; ``bitnami/*`` -> ``docker.io/bitnami/*``;
    ``r.example/golden`` -> ``r.example/golden:latest``. A glob starting with a wildcard,
    or whose first component is a registry host, keeps its registry.
    """
    if not pattern or pattern[0] in "*?[" or "@" in pattern:
        return pattern
    first, slash, rest = pattern.partition("/")
    if slash and (_HOSTLIKE.fullmatch(first) or first != first.lower()):
        registry, remainder = ("docker.io" if first == "index.docker.io" else first), rest
    elif slash and any(ch in first for ch in "*?["):
        return pattern
    else:
        registry, remainder = "docker.io", pattern
        if "/" not in remainder:
            remainder = "library/" + remainder
    last = remainder.rsplit("/", 1)[-1]
    if ":" not in last and not any(ch in remainder for ch in "*?["):
        remainder += ":latest"
    return f"{registry}/{remainder}"


@dataclass(frozen=True, slots=True)
class Matcher:
    """A compiled :class:`~image_ancestry.policy.model.ImageMatcher`.

    An image glob matches an image whose ``spec.image`` matches it as written, or whose
    normalised ``spec.image`` matches the normalised glob (so ``debian:9*`` and
    ``docker.io/library/debian:9*`` mean the same). A digest matches ``spec.digest`` (or a
    digest written into ``spec.image``).
    """

    source: ImageMatcher
    raw: re.Pattern[str] | None
    normalised: re.Pattern[str] | None

    @classmethod
    def compile(cls, matcher: ImageMatcher) -> Matcher:
        if matcher.image is None:
            return cls(matcher, None, None)
        return cls(
            matcher, compile_glob(matcher.image), compile_glob(normalise_glob(matcher.image))
        )

    def matches(self, image: str | None, digest: str | None) -> bool:
        if self.raw is None:
            wanted = self.source.digest
            if digest is not None and digest == wanted:
                return True
            return image is not None and split_digest(image)[1] == wanted
        if image is None:
            return False
        if self.raw.match(image):
            return True
        parsed = _parse(image)
        if parsed is None or self.normalised is None:
            return False
        tagged, embedded = parsed
        full = tagged if embedded is None else (f"{tagged}@{embedded}" if tagged else None)
        return full is not None and (
            self.normalised.match(full) is not None
            or (tagged is not None and self.normalised.match(tagged) is not None)
        )

    def describe(self) -> str:
        return self.source.describe()


# --- policies ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledPolicy:
    policy: AncestryPolicy
    allowed_bases: tuple[Matcher, ...] | None
    denied_ancestors: tuple[Matcher, ...] | None

    @classmethod
    def compile(cls, policy: AncestryPolicy) -> CompiledPolicy:
        rules = policy.spec.rules
        allowed = rules.allowed_base_images
        denied = rules.denied_ancestors
        return cls(
            policy,
            None if allowed is None else tuple(Matcher.compile(m) for m in allowed),
            None if denied is None else tuple(Matcher.compile(m) for m in denied),
        )

    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def action(self) -> Action:
        return self.policy.spec.action

    def selects(self, labels: Mapping[str, str]) -> bool:
        return self.policy.spec.namespace_selector.matches(labels)


class PolicySet:
    """The AncestryPolicies, compiled, with which namespaces each selects (cached per label
    set, so a decision does not re-run every selector)."""

    def __init__(self, policies: Iterable[AncestryPolicy] = ()) -> None:
        self._policies: dict[str, CompiledPolicy] = {}
        self._selected: dict[frozenset[tuple[str, str]], tuple[CompiledPolicy, ...]] = {}
        for policy in policies:
            self.upsert(policy)

    def __len__(self) -> int:
        return len(self._policies)

    def __iter__(self) -> Any:
        return iter(sorted(self._policies.values(), key=lambda p: p.name))

    def get(self, name: str) -> CompiledPolicy | None:
        return self._policies.get(name)

    def names(self) -> list[str]:
        return sorted(self._policies)

    def upsert(self, policy: AncestryPolicy) -> None:
        self._policies[policy.name] = CompiledPolicy.compile(policy)
        self._selected.clear()

    def remove(self, name: str) -> None:
        if self._policies.pop(name, None) is not None:
            self._selected.clear()

    def selecting(self, labels: Mapping[str, str]) -> tuple[CompiledPolicy, ...]:
        """The policies whose namespaceSelector selects a namespace with ``labels``."""
        cache_key = frozenset(labels.items())
        found = self._selected.get(cache_key)
        if found is None:
            found = tuple(p for p in self if p.selects(labels))
            if len(self._selected) > 4096:
                self._selected.clear()
            self._selected[cache_key] = found
        return found


# --- decisions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Violation:
    """One failed rule, for one container, one policy and (when resolved) one image."""

    policy: str
    action: Action
    rule: str
    container: Container
    image: ImageKey | None
    detail: str

    @property
    def message(self) -> str:
        described = (
            "" if self.image is None else f", ContainerImage {self.image[0]}/{self.image[1]}"
        )
        return (
            f'{self.container.describe()} (image "{self.container.image}"{described}): '
            f"AncestryPolicy {self.policy}, rule {self.rule}: {self.detail}"
        )


@dataclass(frozen=True)
class Decision:
    allowed: bool
    violations: tuple[Violation, ...] = ()
    exempt: bool = False

    @property
    def denials(self) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if v.action is Action.DENY)

    @property
    def message(self) -> str:
        """The denial message ("" when allowed): every failed Deny rule, one clause each."""
        denials = self.denials
        if not denials:
            return ""
        shown = "; ".join(v.message for v in denials[:MAX_MESSAGES])
        more = len(denials) - MAX_MESSAGES
        tail = f"; and {more} more" if more > 0 else ""
        return f"denied by the ancestry gate: {shown}{tail}"

    @property
    def warnings(self) -> list[str]:
        """Admission warnings, one per failed Warn rule."""
        warned = [v for v in self.violations if v.action is Action.WARN]
        texts = [f"{v.message} (action Warn)" for v in warned[:MAX_MESSAGES]]
        if len(warned) > MAX_MESSAGES:
            texts.append(f"and {len(warned) - MAX_MESSAGES} more ancestry policy warnings")
        return texts


MAX_MESSAGES = 10


def _ref(entry: Mapping[str, Any] | None) -> str:
    """An image reference from a status, for messages: ``ns/name (image, digest)``."""
    if entry is None:
        return "none"
    extras = [str(entry[k]) for k in ("image", "digest") if entry.get(k)]
    text = f"{entry['namespace']}/{entry['name']}"
    return f"{text} ({', '.join(extras)})" if extras else text


@dataclass
class Gate:
    """Decides admissions from the index, the lookup and the policies it is given (shared
    with the operator, which keeps them up to date; the gate only reads them)."""

    index: AncestryIndex
    lookup: ImageLookup
    policies: PolicySet
    exempt_namespaces: frozenset[str] = ALWAYS_EXEMPT

    def is_exempt(self, namespace: str) -> bool:
        return namespace in self.exempt_namespaces or namespace in ALWAYS_EXEMPT

    def decide(
        self,
        namespace: str,
        namespace_labels: Mapping[str, str],
        obj: Mapping[str, Any],
        old: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Whether ``obj`` may be created (``old`` None) or updated from ``old``.

        On an update only containers whose image changed are checked: editing an env var of
        a Deployment that a newer policy would refuse stays possible (the audit reports it),
        while no update can bring in an image the policies refuse.
        """
        if self.is_exempt(namespace):
            return Decision(True, exempt=True)
        policies = self.policies.selecting(namespace_labels)
        if not policies:
            return Decision(True)
        containers = containers_of(obj)
        if old is not None:
            before = {(c.field, c.name, c.image) for c in containers_of(old)}
            containers = tuple(c for c in containers if (c.field, c.name, c.image) not in before)
        return self.evaluate(policies, containers)

    def evaluate(
        self, policies: Sequence[CompiledPolicy], containers: Sequence[Container]
    ) -> Decision:
        """Every container against every policy: the core shared with the audit."""
        violations: list[Violation] = []
        statuses: dict[ImageKey, dict[str, Any]] = {}
        for container in containers:
            resolution = self.lookup.resolve(container.image)
            for policy in policies:
                violations.extend(self._check(policy, container, resolution, statuses))
        allowed = not any(v.action is Action.DENY for v in violations)
        return Decision(allowed, tuple(violations))

    def _check(
        self,
        policy: CompiledPolicy,
        container: Container,
        resolution: Resolution,
        statuses: dict[ImageKey, dict[str, Any]],
    ) -> Iterable[Violation]:
        spec = policy.policy.spec
        if not resolution.candidates:
            if spec.unknown_images is UnknownImages.DENY:
                what = (
                    "is no valid image reference"
                    if resolution.invalid
                    else ("is described by no ContainerImage (by digest or by reference)")
                )
                yield Violation(
                    policy.name,
                    policy.action,
                    RULE_UNKNOWN,
                    container,
                    None,
                    f"the image {what}; unknownImages is Deny",
                )
            return
        for key in resolution.candidates:
            status = statuses.get(key)
            if status is None:
                try:
                    status = statuses[key] = self.index.status(key)
                except KeyError:  # lookup and index briefly apart: treat as unknown
                    continue
            yield from _rules(policy, container, key, status, self.index)


def _rules(
    policy: CompiledPolicy,
    container: Container,
    key: ImageKey,
    status: Mapping[str, Any],
    index: AncestryIndex,
) -> Iterable[Violation]:
    rules = policy.policy.spec.rules

    def violation(rule: str, detail: str) -> Violation:
        return Violation(policy.name, policy.action, rule, container, key, detail)

    if rules.require_ancestors and status["ancestorCount"] == 0:
        yield violation(
            RULE_REQUIRE,
            "the image has no ancestors among the known ContainerImages; requireAncestors is true",
        )
    if policy.allowed_bases is not None:
        base = status["baseImage"]
        allowed = ", ".join(m.describe() for m in policy.allowed_bases)
        if base is None:
            yield violation(RULE_BASE, f"the image has no base image; allowed: {allowed}")
        elif not any(
            m.matches(base.get("image"), base.get("digest")) for m in policy.allowed_bases
        ):
            yield violation(
                RULE_BASE,
                f"base image {_ref(base)} is not allowed ({base['reason']}); allowed: {allowed}",
            )
    if policy.denied_ancestors is not None:
        for ancestor in _all_ancestors(index, key, status):
            hit = next(
                (
                    m
                    for m in policy.denied_ancestors
                    if m.matches(ancestor.get("image"), ancestor.get("digest"))
                ),
                None,
            )
            if hit is not None:
                yield violation(
                    RULE_DENIED, f"ancestor {_ref(ancestor)} is denied (matches {hit.describe()})"
                )


def _all_ancestors(
    index: AncestryIndex, key: ImageKey, status: Mapping[str, Any]
) -> Iterable[Mapping[str, Any]]:
    """Every ancestor, even past the status's listed cap (``deniedAncestors`` must see all).

    The status lists the first 100; past that (100 images on one layer prefix chain: rare,
    e.g. many retags of one base) the remaining ones are the images whose layer lists are
    proper prefixes of this image's, found through the index's records.
    """
    listed: list[Mapping[str, Any]] = status["ancestors"]
    yield from listed
    if status["ancestorCount"] <= len(listed):
        return
    record = index.get(key)
    if record is None:
        return
    seen = {(a["namespace"], a["name"]) for a in listed}
    keys = index.keys()  # AncestryIndex is no mapping: it has no __iter__
    for other_key in keys:
        other = index.get(other_key)
        if (
            other is not None
            and other_key not in seen
            and len(other.layers) < len(record.layers)
            and record.layers[: len(other.layers)] == other.layers
        ):
            yield {
                "namespace": other.namespace,
                "name": other.name,
                "image": other.image,
                "digest": other.digest,
            }
