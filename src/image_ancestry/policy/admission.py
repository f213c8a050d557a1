"""The ancestry gate inside the operator: kopf handlers, the webhook registration, the audit.

:func:`install` puts everything into ``image-ancestry run`` with no change to how the
operator or the ContainerImage webhook work:

- the controller's (still empty) index becomes a :class:`~.gate.LookupIndex`, so the image
  lookup and the ancestry index move together, fed by the same ContainerImage events;
- ``on.event`` handlers keep AncestryPolicies, namespace labels and a summary of every Pod
  and pod-template workload in memory (no kopf state, no finalizers: nothing is written to
  those objects);
- ``on.validate`` handlers (one id, :data:`WEBHOOK_ID`) answer from memory: no API call
  per request, except a one-off GET for a namespace the watch has not delivered yet;
- the webhook server the ContainerImage webhook already runs through kopf is wrapped, so
  that, once the index is loaded and while at least one AncestryPolicy exists, a second
  ValidatingWebhookConfiguration (:func:`gate_configuration`) sends Pods and workloads to
  the same endpoint. With no policy there is no configuration: a cluster without policies
  never waits on the operator to create a Pod. Its ``namespaceSelector`` always keeps out
  ``kube-system`` and the operator's namespace, and when every policy has the same
  selector, it is that selector too;
- the leader writes each policy's audit into its status when images, policies, namespaces
  or workloads changed, at most every :data:`AUDIT_INTERVAL` seconds.

Local mode (a URL webhook on 127.0.0.1, like the ContainerImage webhook) registers a
configuration of its own, ``image-ancestry-policy-local-<namespace>``, removes it on exit,
and deletes other operators' ones whose endpoint no longer answers (a ``kill -9``). In a
cluster the gate is one more entry, added and removed by the operator, in the
``image-ancestry`` configuration from ``deploy/`` (whose caBundle the ContainerImage
webhook keeps current for every entry calling its Service).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from image_ancestry import GROUP, VERSION
from image_ancestry.model import validate_digest
from image_ancestry.policy.audit import (
    PolicyAudit,
    WorkloadStore,
    audit,
    invalid_policy_status,
    policy_status,
)
from image_ancestry.policy.gate import ALWAYS_EXEMPT, Gate, LookupIndex, PolicySet
from image_ancestry.policy.model import PLURAL, AncestryPolicy, PolicyError

logger = logging.getLogger(__name__)

WEBHOOK_ID = "validate-ancestry"
WEBHOOK_NAME = "workloads.ancestry.imageancestry.io"
WEBHOOKS_PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
POLICIES_PATH = f"/apis/{GROUP}/{VERSION}/{PLURAL}"
TIMEOUT_SECONDS = 5
AUDIT_INTERVAL = 10.0
SWEEP_INTERVAL = 30.0
COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENT = "ancestry-gate"
AUDIT_CHUNK = 100  # workloads audited between two looks at the event loop
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
# Written by the importer (importer/manifests.py INDEX_DIGEST) on images from an image index.
INDEX_DIGEST_ANNOTATION = "imageancestry.io/index-digest"

# (group, version, plural, kind) of everything gated.
GATED: tuple[tuple[str, str, str, str], ...] = (
    ("", "v1", "pods", "Pod"),
    ("apps", "v1", "deployments", "Deployment"),
    ("apps", "v1", "statefulsets", "StatefulSet"),
    ("apps", "v1", "daemonsets", "DaemonSet"),
    ("apps", "v1", "replicasets", "ReplicaSet"),
    ("batch", "v1", "jobs", "Job"),
    ("batch", "v1", "cronjobs", "CronJob"),
)


def _older(version: str, than: str) -> bool:
    return version.isdigit() and than.isdigit() and int(version) < int(than)


def gate_webhook(
    client_config: Mapping[str, Any], exempt: list[str], selector: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The one webhook: Pods (and their ephemeral containers) and pod-template workloads."""
    expressions: list[dict[str, Any]] = [
        {"key": NAMESPACE_LABEL, "operator": "NotIn", "values": sorted(exempt)}
    ]
    labels: dict[str, str] = {}
    if selector is not None:
        labels = dict(selector.get("matchLabels") or {})
        expressions.extend(dict(e) for e in selector.get("matchExpressions") or ())
    namespace_selector: dict[str, Any] = {"matchExpressions": expressions}
    if labels:
        namespace_selector["matchLabels"] = labels
    rules: list[dict[str, Any]] = []
    for group, version, plural, _ in GATED:
        resources = [plural, "pods/ephemeralcontainers"] if plural == "pods" else [plural]
        rules.append(
            {
                "apiGroups": [group],
                "apiVersions": [version],
                "operations": ["CREATE", "UPDATE"],
                "resources": resources,
                "scope": "Namespaced",
            }
        )
    return {
        "name": WEBHOOK_NAME,
        "clientConfig": dict(client_config),
        "rules": rules,
        "namespaceSelector": namespace_selector,
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "timeoutSeconds": TIMEOUT_SECONDS,
        "admissionReviewVersions": ["v1"],
    }


def gate_configuration(
    name: str,
    client_config: Mapping[str, Any],
    exempt: list[str],
    selector: Mapping[str, Any] | None,
) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/name": "image-ancestry",
                COMPONENT_LABEL: COMPONENT,
            },
        },
        "webhooks": [gate_webhook(client_config, exempt, selector)],
    }


class PolicyGate:
    """The gate's state in the operator process, and the kopf handlers over it."""

    def __init__(self, controller: Any, kube: Any, namespace: str) -> None:
        index = controller.index
        if not isinstance(index, LookupIndex):
            if len(index):
                raise RuntimeError("install the ancestry gate before the index is filled")
            index = controller.index = LookupIndex(index.user_base_image_enabled)
        self.controller = controller
        self.kube = kube
        self.namespace = namespace
        self.index: LookupIndex = index
        self.exempt = sorted(ALWAYS_EXEMPT | {namespace})
        self.gate = Gate(index, index.lookup, PolicySet(), frozenset(self.exempt))
        self.namespaces: dict[str, dict[str, str]] = {}
        self.workloads = WorkloadStore()
        self.policy_objects: dict[str, dict[str, Any]] = {}  # name -> uid, rv, generation
        self.invalid: dict[str, str] = {}  # policy name -> why it is not enforced
        self._deleted: dict[str, str] = {}  # policy name -> resourceVersion of its deletion
        self.version = 0  # bumped on every change to policies, namespaces or workloads
        self.loaded = asyncio.Event()  # policies and namespaces listed once
        self.configuration_name = f"image-ancestry-policy-local-{namespace}"
        self.cluster_configuration = "image-ancestry"  # deploy/'s, shared with the webhook
        self._client_config: dict[str, Any] | None = None
        # "local" or "cluster", from the client config the server yields; None until then, so
        # that a first reconcile before the server is up sweeps nothing (in a cluster the
        # RBAC grants no listing of webhook configurations)
        self._mode: str | None = None
        self._registered: dict[str, Any] | None = None
        self._reconcile = asyncio.Event()
        self._written: dict[str, dict[str, Any]] = {}
        self._transitions: dict[str, tuple[tuple[str, str], str]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # --- readiness -----------------------------------------------------------------------

    def ready(self) -> bool:
        return self.loaded.is_set() and self.controller.ready.is_set()

    # --- state from watch events ---------------------------------------------------------

    def on_policy(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        version = str(meta.get("resourceVersion", ""))
        held = self.policy_objects.get(name)
        tombstone = self._deleted.get(name)
        if event_type == "DELETED":
            if held is None or not _older(version, held["resourceVersion"]):
                self._deleted[name] = version
                self.policy_objects.pop(name, None)
                self.invalid.pop(name, None)
                self._written.pop(name, None)
                self._transitions.pop(name, None)
                self.gate.policies.remove(name)
                self._changed()
            return
        if held is not None and _older(version, held["resourceVersion"]):
            return
        if tombstone is not None:
            # The startup listing may be older than a deletion the watch already delivered.
            if tombstone.isdigit() and version.isdigit() and int(version) <= int(tombstone):
                return
            del self._deleted[name]
        self.policy_objects[name] = {
            "resourceVersion": version,
            "generation": meta.get("generation") or 0,
        }
        try:
            policy = AncestryPolicy.from_manifest(obj)
        except PolicyError as exc:
            logger.warning("%s: not enforced", exc)
            self.invalid[name] = str(exc)
            self.gate.policies.remove(name)
        else:
            self.invalid.pop(name, None)
            self.gate.policies.upsert(policy)
        self._changed()

    def on_image(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        """The image index digest an imported platform image carries in an annotation: a Pod
        pinned to it (what registries show for multi-arch images) runs this image."""
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        value = (meta.get("annotations") or {}).get(INDEX_DIGEST_ANNOTATION)
        digests: list[str] = []
        if event_type != "DELETED" and isinstance(value, str):
            with contextlib.suppress(ValueError):  # a bad value names no image
                digests.append(validate_digest(value.strip()))
        self.index.lookup.set_extra_digests(key, digests)

    def on_namespace(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        if event_type == "DELETED":
            if self.namespaces.pop(name, None) is not None:
                self._changed(webhook=False)
            return
        labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
        labels.setdefault(NAMESPACE_LABEL, name)
        if self.namespaces.get(name) != labels:
            self.namespaces[name] = labels
            self._changed(webhook=False)

    def on_workload(self, kind: str, event_type: str | None, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if event_type == "DELETED":
            changed = self.workloads.remove(
                kind, str(meta.get("namespace", "")), str(meta.get("name", ""))
            )
        else:
            changed = self.workloads.upsert({**obj, "kind": kind})
        if changed:
            self.version += 1

    def _changed(self, webhook: bool = True) -> None:
        self.version += 1
        if webhook:
            self._reconcile.set()

    async def load(self) -> None:
        """List policies and namespaces once, so the gate never starts from a partial view
        (the watches deliver the same objects too; older versions are ignored)."""
        from image_ancestry.operator.kube import ApiError

        while True:
            try:
                try:
                    policies = await self.kube.request("GET", POLICIES_PATH)
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    policies = {"items": []}  # no CRD yet: no policies
                    logger.warning("the AncestryPolicy CRD is not installed: no policies")
                namespaces = await self.kube.request("GET", "/api/v1/namespaces")
            except Exception as exc:
                logger.error("listing policies and namespaces failed (%s); retrying", exc)
                await asyncio.sleep(2)
                continue
            for item in policies.get("items") or ():
                self.on_policy("ADDED", item)
            for item in namespaces.get("items") or ():
                self.on_namespace("ADDED", item)
            self.loaded.set()
            self._reconcile.set()
            logger.info(
                "ancestry gate: %d policies (%d invalid), %d namespaces",
                len(self.gate.policies),
                len(self.invalid),
                len(self.namespaces),
            )
            return

    async def labels_of(self, namespace: str) -> dict[str, str]:
        labels = self.namespaces.get(namespace)
        if labels is not None:
            return labels
        try:  # created a moment ago, not yet delivered by the watch
            obj = await self.kube.request("GET", f"/api/v1/namespaces/{namespace}", attempts=2)
        except Exception as exc:
            logger.warning("namespace %s: %s; deciding on its name label only", namespace, exc)
            return {NAMESPACE_LABEL: namespace}
        self.on_namespace("ADDED", obj)
        return self.namespaces.get(namespace, {NAMESPACE_LABEL: namespace})

    # --- admission -----------------------------------------------------------------------

    async def validate(self, **kwargs: Any) -> None:
        import kopf

        new: Mapping[str, Any] | None = kwargs.get("new")
        if new is None:
            return
        started = time.perf_counter()
        old: Mapping[str, Any] | None = kwargs.get("old")
        operation = kwargs.get("operation")
        meta = new.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default")
        if self.gate.is_exempt(namespace):
            return
        if not self.ready():
            raise kopf.AdmissionError(
                "the ancestry gate is still loading its index; retry in a few seconds", code=503
            )
        labels = await self.labels_of(namespace)
        decision = self.gate.decide(namespace, labels, new, old if operation == "UPDATE" else None)
        warnings: list[str] = kwargs["warnings"]
        warnings.extend(decision.warnings)
        logger.debug(
            "%s %s %s/%s: %s in %.2f ms",
            operation,
            new.get("kind"),
            namespace,
            meta.get("name"),
            "allowed" if decision.allowed else "denied",
            (time.perf_counter() - started) * 1000,
        )
        if not decision.allowed:
            logger.info(
                "denied %s %s/%s: %s",
                new.get("kind"),
                namespace,
                meta.get("name"),
                decision.message,
            )
            raise kopf.AdmissionError(decision.message, code=403)

    # --- the webhook configuration -------------------------------------------------------

    def desired_configuration(self) -> dict[str, Any] | None:
        if self._client_config is None or not self.ready() or not len(self.gate.policies):
            return None
        selectors = {
            p.policy.spec.namespace_selector.model_dump_json(by_alias=True)
            for p in self.gate.policies
        }
        selector: dict[str, Any] | None = None
        if len(selectors) == 1:
            only = next(iter(self.gate.policies))
            selector = only.policy.spec.namespace_selector.model_dump(
                by_alias=True, exclude_defaults=True
            )
        return gate_configuration(
            self.configuration_name, self._client_config, self.exempt, selector
        )

    async def _apply_configuration(self) -> None:
        desired = self.desired_configuration()
        if desired == self._registered:
            return
        if self._mode == "cluster":
            await self._apply_entry(None if desired is None else desired["webhooks"][0])
        else:
            await self._apply_local(desired)
        self._registered = desired

    async def _apply_local(self, desired: dict[str, Any] | None) -> None:
        """Local mode: a configuration of our own, created, replaced or deleted."""
        from image_ancestry.operator.kube import ApiError

        name = self.configuration_name
        path = f"{WEBHOOKS_PATH}/{name}"
        if desired is None:
            with contextlib.suppress(ApiError):
                await self.kube.request("DELETE", path)
            logger.info("removed the ancestry gate's webhook %s (no policies)", name)
            return
        try:
            existing = await self.kube.request("GET", path)
        except ApiError as exc:
            if exc.status != 404:
                raise
            await self.kube.request("POST", WEBHOOKS_PATH, body=desired)
        else:
            if _essentials(existing) == _essentials(desired):
                return  # (the API server adds defaults, so whole entries never compare equal)
            body = {**desired, "metadata": {**desired["metadata"]}}
            body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            await self.kube.request("PUT", path, body=body)
        selector = desired["webhooks"][0]["namespaceSelector"]
        logger.info("registered the ancestry gate's webhook %s for namespaces %s", name, selector)

    async def _apply_entry(self, entry: dict[str, Any] | None) -> None:
        """In a cluster: our entry in the ValidatingWebhookConfiguration from ``deploy/``
        (the operator may get and update that one only). The other entries stay as they are;
        the caBundle is the one already there for the same Service (the ContainerImage
        webhook keeps it current), so a rotated CA is never put back."""
        from image_ancestry.operator.kube import ApiError

        path = f"{WEBHOOKS_PATH}/{self.cluster_configuration}"
        for _ in range(5):
            obj = await self.kube.request("GET", path)
            current = obj.get("webhooks") or []
            hooks = [h for h in current if h.get("name") != WEBHOOK_NAME]
            if entry is not None:
                entry = {**entry, "clientConfig": dict(entry["clientConfig"])}
                service = entry["clientConfig"].get("service") or {}
                for hook in hooks:
                    theirs = (hook.get("clientConfig") or {}).get("service") or {}
                    same = (theirs.get("name"), theirs.get("namespace")) == (
                        service.get("name"),
                        service.get("namespace"),
                    )
                    if same and hook["clientConfig"].get("caBundle"):
                        entry["clientConfig"]["caBundle"] = hook["clientConfig"]["caBundle"]
                hooks.append(entry)
            if hooks == current:
                return
            obj["webhooks"] = hooks
            try:
                await self.kube.request("PUT", path, body=obj)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                continue
            what = "added to" if entry is not None else "removed from"
            logger.info("the ancestry gate's webhook %s %s", what, self.cluster_configuration)
            return

    async def _sweep_local(self) -> None:
        """Delete other operators' local gate configurations whose endpoint is gone: a
        ``kill -9`` would otherwise leave Pods of the selected namespaces refused."""
        from image_ancestry.operator.kube import ApiError
        from image_ancestry.webhook.server import _answers

        listing = await self.kube.request(
            "GET", WEBHOOKS_PATH, params={"labelSelector": f"{COMPONENT_LABEL}={COMPONENT}"}
        )
        for item in listing.get("items") or []:
            metadata = item["metadata"]
            if metadata["name"] == self.configuration_name:
                continue
            urls = [(h.get("clientConfig") or {}).get("url") for h in item.get("webhooks") or []]
            alive = False
            for url in urls:
                alive = alive or (isinstance(url, str) and await _answers(url))
            if alive:
                continue
            with contextlib.suppress(ApiError):  # 404/409: gone, or re-registered meanwhile
                await self.kube.request(
                    "DELETE",
                    f"{WEBHOOKS_PATH}/{metadata['name']}",
                    body={"preconditions": {"resourceVersion": metadata["resourceVersion"]}},
                    attempts=2,
                )
                logger.info("removed %s: its endpoint does not answer", metadata["name"])

    async def _reconcile_loop(self) -> None:
        await self.controller.ready.wait()
        last_sweep = 0.0
        while True:
            try:
                await asyncio.wait_for(self._reconcile.wait(), SWEEP_INTERVAL)
            except TimeoutError:
                if self._mode == "local" and self._registered is not None:
                    # Look again: another replica of this namespace may have claimed the
                    # configuration for its own URL, and may be gone since.
                    self._registered = {"unknown": True}
            self._reconcile.clear()
            try:
                await self._apply_configuration()
                if self._mode == "local" and time.monotonic() - last_sweep >= SWEEP_INTERVAL:
                    last_sweep = time.monotonic()
                    await self._sweep_local()
            except Exception as exc:
                logger.error("could not register the ancestry gate's webhook: %s", exc)
                await asyncio.sleep(2)
                self._reconcile.set()
            await asyncio.sleep(0.2)  # coalesce bursts of policy events

    def wrap_server(
        self, inner: Callable[[Any], AsyncIterator[Mapping[str, Any]]]
    ) -> Callable[[Any], AsyncIterator[Mapping[str, Any]]]:
        """Serve through the existing webhook server, and register the gate for what it
        yields: a URL (local mode) or the Service (in a cluster), plus our handler id."""

        async def serve(fn: Any) -> AsyncIterator[Mapping[str, Any]]:
            try:
                async for client_config in inner(fn):
                    config: dict[str, Any] = {}
                    if client_config.get("url"):
                        self._mode = "local"
                        config["url"] = f"{str(client_config['url']).rstrip('/')}/{WEBHOOK_ID}"
                    elif client_config.get("service"):
                        self._mode = "cluster"
                        service = dict(client_config["service"])
                        service["path"] = (
                            f"{str(service.get('path') or '').rstrip('/')}/{WEBHOOK_ID}"
                        )
                        config["service"] = service
                    if config:
                        if client_config.get("caBundle"):
                            config["caBundle"] = client_config["caBundle"]
                        self._client_config = config
                        self._reconcile.set()
                    yield client_config
            finally:
                self._client_config = None
                # In a cluster another replica goes on serving: the entry stays.
                if self._registered is not None and self._mode == "local":
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await self.kube.request(
                            "DELETE", f"{WEBHOOKS_PATH}/{self.configuration_name}", attempts=2
                        )
                        logger.info(
                            "removed the ancestry gate's webhook %s", self.configuration_name
                        )

        return serve

    # --- the audit -----------------------------------------------------------------------

    async def run_audit(self) -> dict[str, PolicyAudit]:
        """One audit pass, in chunks: admission requests are answered in between."""
        workloads = sorted(self.workloads, key=lambda w: w.key)
        results: dict[str, PolicyAudit] = {}
        for start in range(0, max(len(workloads), 1), AUDIT_CHUNK):
            chunk = workloads[start : start + AUDIT_CHUNK]
            audit(self.gate, chunk, self.namespaces, self.workloads, results)
            await asyncio.sleep(0)
        return results

    def status_bodies(self, results: Mapping[str, PolicyAudit], now: str) -> dict[str, Any]:
        bodies: dict[str, Any] = {}
        for name, held in self.policy_objects.items():
            generation = int(held.get("generation") or 0)
            if name in self.invalid:
                bodies[name] = invalid_policy_status(self.invalid[name], generation)
            elif name in results:
                bodies[name] = policy_status(results[name], generation, now)
        return bodies

    async def _audit_loop(self) -> None:
        await self.controller.ready.wait()
        await self.loaded.wait()
        seen: tuple[int, int] | None = None
        leading = False
        while True:
            if not self.controller.can_write():
                leading = False
            else:
                if not leading:  # a new leader trusts nothing written before: write again
                    leading, seen = True, None
                    self._written.clear()
                current = (self.version, self.index.version)
                if current != seen:
                    seen = current
                    try:
                        if not await self._audit_once():
                            seen = None  # a write failed: again next round
                    except Exception:  # the audit must not stop for one bad object
                        logger.exception("the ancestry audit failed")
                        seen = None
            await asyncio.sleep(AUDIT_INTERVAL)

    async def _audit_once(self) -> bool:
        """Audit and write every policy status that differs; False if a write failed."""
        from image_ancestry.operator import status as st
        from image_ancestry.operator.kube import MERGE_PATCH, ApiError

        started = time.perf_counter()
        results = await self.run_audit()
        now = st.now_rfc3339()
        written = True
        for name, body in self.status_bodies(results, now).items():
            comparable = _without_times(body)
            if self._written.get(name) == comparable:
                continue
            for condition in body.get("conditions") or ():
                state = (condition["status"], condition["reason"])
                held = self._transitions.get(name)
                if held is None or held[0] != state:
                    held = self._transitions[name] = (state, now)
                condition["lastTransitionTime"] = held[1]
            try:
                await self.kube.request(
                    "PATCH",
                    f"{POLICIES_PATH}/{name}/status",
                    body={"status": body},
                    content_type=MERGE_PATCH,
                )
            except ApiError as exc:
                if exc.status != 404:  # 404: deleted meanwhile
                    logger.warning("could not write the audit of %s: %s", name, exc)
                    written = False
                continue
            self._written[name] = comparable
        logger.debug(
            "audit: %d workloads, %d policies in %.1f ms",
            len(self.workloads),
            len(results),
            (time.perf_counter() - started) * 1000,
        )
        return written

    # --- kopf ----------------------------------------------------------------------------

    def register(self, registry: Any, admission: bool) -> None:
        import kopf

        @kopf.on.event(GROUP, VERSION, PLURAL, id="ancestry-policies", registry=registry)
        async def policy_event(**kwargs: Any) -> None:
            event = kwargs["event"]
            self.on_policy(event.get("type"), event.get("object") or {})

        @kopf.on.event("v1", "namespaces", id="ancestry-namespaces", registry=registry)
        async def namespace_event(**kwargs: Any) -> None:
            event = kwargs["event"]
            self.on_namespace(event.get("type"), event.get("object") or {})

        @kopf.on.event(
            GROUP, VERSION, "containerimages", id="ancestry-index-digests", registry=registry
        )
        async def image_event(**kwargs: Any) -> None:
            event = kwargs["event"]
            self.on_image(event.get("type"), event.get("object") or {})

        for group, version, plural, kind in GATED:
            self._register_resource(registry, group, version, plural, kind, admission)

        @kopf.on.startup(id="ancestry-gate-start", registry=registry)
        async def start_gate(**_: Any) -> None:
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self.load(), name="ancestry gate listing"),
                loop.create_task(self._reconcile_loop(), name="ancestry gate webhook"),
                loop.create_task(self._audit_loop(), name="ancestry gate audit"),
            ]

        @kopf.on.cleanup(id="ancestry-gate-stop", registry=registry)
        async def stop_gate(**_: Any) -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _register_resource(
        self, registry: Any, group: str, version: str, plural: str, kind: str, admission: bool
    ) -> None:
        import kopf

        groupversion = f"{group}/{version}" if group else version

        async def workload_event(**kwargs: Any) -> None:
            event = kwargs["event"]
            self.on_workload(kind, event.get("type"), event.get("object") or {})

        kopf.on.event(groupversion, plural, id=f"ancestry-{plural}", registry=registry)(
            workload_event
        )
        if not admission:
            return
        validate: Callable[..., Awaitable[None]] = self.validate
        kopf.on.validate(
            groupversion,
            plural,
            id=WEBHOOK_ID,
            operations=["CREATE", "UPDATE"],
            registry=registry,
        )(validate)
        if plural == "pods":  # kubectl debug adds ephemeral containers through a subresource
            kopf.on.validate(
                groupversion,
                plural,
                id=WEBHOOK_ID,
                operations=["UPDATE"],
                subresource="ephemeralcontainers",
                registry=registry,
            )(validate)


def _essentials(configuration: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (hook.get("name"), hook.get("clientConfig"), hook.get("namespaceSelector"))
        for hook in configuration.get("webhooks") or ()
    ]


def _without_times(body: Mapping[str, Any]) -> dict[str, Any]:
    copy = dict(body)
    if isinstance(copy.get("audit"), Mapping):
        copy["audit"] = {k: v for k, v in copy["audit"].items() if k != "lastAuditTime"}
    return copy


def install(
    *, controller: Any, kube: Any, namespace: str, registry: Any, settings: Any
) -> PolicyGate:
    """Add the ancestry gate to an operator about to run (see the module docstring)."""
    gate = PolicyGate(controller, kube, namespace)
    inner = getattr(settings.admission, "server", None)
    gate.register(registry, admission=inner is not None)
    if inner is None:
        logger.warning(
            "ancestry gate: no webhook server (webhook off); policies are audited, not enforced"
        )
    else:
        settings.admission.server = gate.wrap_server(inner)
    return gate
