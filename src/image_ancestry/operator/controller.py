"""The controller: one ancestry index fed by watch events, and everything around it.

State is only ever derived from the cluster, so a crash loses nothing: at start the
ContainerImages are listed (by kopf's watch), the index is built, and only then is every
status compared with what it should be and corrected where it differs.

**Listings.** kopf re-lists after a 410 Gone or a reconnect without telling its handlers when
the list ends, and an object deleted while the watch was away never gets a DELETED event. So
a listing (kopf's listing events have ``type`` None) opens an *epoch*: the controller reads a
metadata-only list of its own, waits until every object in it has been seen by the handler,
then forgets the objects that were in neither (ghosts) and looks at every status. Writes wait
while an epoch is open: statuses computed from a half-built index are never written.

**Ordering.** kopf runs one worker per object uid, so the events of a deleted object and of
its same-named successor may interleave; an event whose resourceVersion is older than the
one held for that name is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from image_ancestry import API_VERSION, GROUP, VERSION
from image_ancestry.compare.feed import ReportFeed
from image_ancestry.engine import AncestryIndex, ImageKey
from image_ancestry.model import MARK_ANNOTATION, ContainerImage, ManifestError
from image_ancestry.operator import status as st
from image_ancestry.operator.config import CONFIGMAP_NAME, ConfigWatcher, read_flag
from image_ancestry.operator.kube import ApiError, KubeClient
from image_ancestry.operator.leader import LeaderElector
from image_ancestry.operator.writer import Job, StatusWriter

logger = logging.getLogger(__name__)

PLURAL = "containerimages"
GROUP_VERSION_PATH = f"/apis/{GROUP}/{VERSION}"
COLLECTION_PATH = f"{GROUP_VERSION_PATH}/{PLURAL}"
BASE_IMAGE_CHANGED = "BaseImageChanged"
INVALID_CONFIG = "InvalidConfig"
COMPONENT = "image-ancestry"
_KEPT_ANNOTATIONS = (MARK_ANNOTATION, st.DECLARED_BASE_NAME, st.DECLARED_BASE_DIGEST)


@dataclass
class Options:
    namespace: str
    identity: str
    leader_election: bool = True
    lease_name: str = "image-ancestry"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    concurrency: int = 16
    debounce: float = 0.1
    listing_timeout: float = 60.0
    events: bool = True


@dataclass(slots=True)
class Tracked:
    """What the controller holds of one ContainerImage object besides its engine record."""

    uid: str
    resource_version: str
    generation: int | None
    annotations: dict[str, str]
    stored: dict[str, Any]  # status.compact() of the stored status
    error: str | None = None


@dataclass
class Epoch:
    reason: str
    started: float = field(default_factory=time.monotonic)
    seen: set[ImageKey] = field(default_factory=set)
    expected: set[ImageKey] | None = None
    missing: set[ImageKey] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)


def _older(version: str, than: str) -> bool:
    """Whether resourceVersion ``version`` precedes ``than`` (etcd revisions; when either is
    not a number, nothing is considered older)."""
    return version.isdigit() and than.isdigit() and int(version) < int(than)


class Controller:
    def __init__(self, kube: KubeClient, options: Options) -> None:
        self.kube = kube
        self.options = options
        self.index = AncestryIndex()
        self.reports = ReportFeed()  # base comparison: status.vulnerabilities
        self.objects: dict[ImageKey, Tracked] = {}
        self.writer = StatusWriter(
            compute=self.job,
            send=self.send,
            send_refused=self.send_refused,
            can_write=self.can_write,
            concurrency=options.concurrency,
            debounce=options.debounce,
        )
        self.elector: LeaderElector | None = None
        if options.leader_election:
            self.elector = LeaderElector(
                kube,
                namespace=options.namespace,
                name=options.lease_name,
                identity=options.identity,
                lease_duration=options.lease_duration,
                renew_deadline=options.renew_deadline,
                retry_period=options.retry_period,
                on_change=self._on_leadership,
            )
        self.config = ConfigWatcher(kube, options.namespace, self.on_configmap)
        self._was_leader = False
        self._images_synced = False
        self._config_synced = False
        self._epoch: Epoch | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._config_warning: tuple[str, str] | None = None  # (resourceVersion, message)
        self._warned_versions: set[str] = set()
        self._events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=2000)
        self.events_dropped = 0
        self.ready = asyncio.Event()  # first listing done and first statuses looked at

    # --- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Everything but kopf: the first listing, the ConfigMap, the Lease, the writer."""
        self._task = asyncio.current_task()
        if self._epoch is None and not self._images_synced:
            self._start_epoch("start")
        tasks = [
            asyncio.create_task(self.config.run(), name="configmap watch"),
            asyncio.create_task(self.writer.run(), name="status writer"),
            asyncio.create_task(self._post_events(), name="event poster"),
            asyncio.create_task(self._config_deadline(), name="config deadline"),
        ]
        if self.elector is not None:
            tasks.append(asyncio.create_task(self.elector.run(), name="leader election"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # re-raise: a crashed component stops the operator
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def shutdown(self) -> None:
        """Stop :meth:`run` (and give the Lease up): kopf's cleanup calls this, so the
        operator exits at once instead of waiting on our tasks as hung ones."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=10)

    _task: asyncio.Task[None] | None = None

    def can_write(self) -> bool:
        return self.elector is None or self.elector.is_leader()

    def _update_gate(self) -> None:
        open_ = (
            self._images_synced and self._config_synced and self._epoch is None and self.can_write()
        )
        if open_ and not self.writer.gate.is_set():
            self.writer.gate.set()
        elif not open_ and self.writer.gate.is_set():
            self.writer.gate.clear()

    def _on_leadership(self, leader: bool) -> None:
        if leader and not self._was_leader:
            # A new leader trusts nothing its predecessor left: look at every status.
            self.writer.mark(list(self.objects))
            if self._config_warning is not None:
                self._warn_config(*self._config_warning)
        self._was_leader = leader
        self._update_gate()

    async def _config_deadline(self) -> None:
        """If the ConfigMap cannot be read at all (e.g. RBAC), do not wait forever."""
        await asyncio.sleep(30)
        if not self._config_synced:
            logger.error(
                "could not read configmap %s/%s for 30s; using %s=true until it can be read",
                self.options.namespace,
                CONFIGMAP_NAME,
                "enable_user_base_image",
            )
            self._config_synced = True
            self._update_gate()

    # --- listings (epochs) ---------------------------------------------------------------

    def _start_epoch(self, reason: str) -> None:
        epoch = Epoch(reason)
        self._epoch = epoch
        self._update_gate()
        task = asyncio.get_running_loop().create_task(
            self._run_epoch(epoch), name=f"listing ({reason})"
        )
        self._background.add(task)  # a reference, so the task is not collected mid-run
        task.add_done_callback(self._background.discard)

    async def _run_epoch(self, epoch: Epoch) -> None:
        try:
            await self._settle_epoch(epoch)
        except asyncio.CancelledError:
            raise
        except Exception:  # never leave writes held by an epoch that cannot finish
            logger.exception("listing (%s) failed; carrying on with what was seen", epoch.reason)
        self._epoch = None
        self._images_synced = True
        logger.info(
            "listing (%s) done: %d images in %.2fs",
            epoch.reason,
            len(self.objects),
            time.monotonic() - epoch.started,
        )
        self.writer.mark(list(self.objects))
        self.ready.set()
        self._update_gate()

    async def _settle_epoch(self, epoch: Epoch) -> None:
        """Wait until the listing has come through the handler; forget the ghosts."""
        expected: set[ImageKey] | None = None
        try:
            items, _ = await self.kube.list_metadata(COLLECTION_PATH)
            expected = {(m.get("namespace", ""), m.get("name", "")) for m in items}
        except Exception as exc:
            logger.error("listing ContainerImages failed (%s); not removing stale entries", exc)
        if expected is not None:
            epoch.expected = expected
            epoch.missing = expected - epoch.seen
            if epoch.missing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(epoch.done.wait(), self.options.listing_timeout)
                if epoch.missing:
                    logger.warning(
                        "listing (%s): %d of %d objects not delivered by the watch after %.0fs",
                        epoch.reason,
                        len(epoch.missing),
                        len(expected),
                        self.options.listing_timeout,
                    )
            ghosts = [k for k in self.objects if k not in expected and k not in epoch.seen]
            for key in ghosts:
                logger.info("forgetting %s/%s: gone while the watch was away", *key)
                self._forget(key)
        self.writer.mark(await self.reports.relist(self.kube))

    def _seen(self, key: ImageKey) -> None:
        epoch = self._epoch
        if epoch is None:
            return
        epoch.seen.add(key)
        if epoch.expected is not None and key in epoch.missing:
            epoch.missing.discard(key)
            if not epoch.missing:
                epoch.done.set()

    # --- events --------------------------------------------------------------------------

    def on_image_event(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        """One watch event of a ContainerImage (``event_type`` None: from a listing)."""
        meta = obj.get("metadata") or {}
        key: ImageKey = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if self._epoch is None and (event_type is None or not self._images_synced):
            self._start_epoch("relist" if self._images_synced else "start")
        self._seen(key)
        try:
            self._apply(event_type, obj, key)
        except Exception:  # one bad object never stops the operator
            logger.exception("could not process ContainerImage %s/%s", *key)

    def _apply(self, event_type: str | None, obj: Mapping[str, Any], key: ImageKey) -> None:
        meta = obj.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        version = str(meta.get("resourceVersion", ""))
        current = self.objects.get(key)
        if event_type == "DELETED":
            if current is not None and current.uid == uid:
                self._forget(key)
            return
        if current is not None and _older(version, current.resource_version):
            return  # a late event of an older incarnation or state
        annotations = meta.get("annotations") or {}
        kept = {k: str(annotations[k]) for k in _KEPT_ANNOTATIONS if k in annotations}
        stored = st.compact(obj.get("status"))
        generation = meta.get("generation")
        tracked = Tracked(
            uid=uid,
            resource_version=version,
            generation=int(generation) if isinstance(generation, int) else None,
            annotations=kept,
            stored=stored,
        )
        if (
            current is not None
            and current.uid == uid
            and tracked.generation is not None
            and current.generation == tracked.generation
            and current.annotations == kept
        ):
            # Same spec (generation) and marks: only the status moved, e.g. the echo of our
            # own write. Nothing to parse or re-index; look again only if the status differs
            # from what was last seen (someone else wrote it).
            tracked.error = current.error
            self.objects[key] = tracked
            if stored["fingerprint"] != current.stored["fingerprint"]:
                self.writer.mark([key])
            return
        try:
            record = ContainerImage.from_manifest(obj, source="cluster").to_record()
            # Images share most layers: one string per digest, not one per image and layer.
            record = dataclasses.replace(record, layers=tuple(map(sys.intern, record.layers)))
        except ManifestError as exc:
            tracked.error = str(exc)
            record = None
            if current is None or current.error != tracked.error:
                logger.warning("ContainerImage %s/%s is invalid: %s", key[0], key[1], exc)
        self.objects[key] = tracked
        changed = self.index.upsert(record) if record is not None else self.index.remove(key)
        changed.add(key)
        self.writer.mark(changed | self.reports.sync_images(self.index, changed))

    def _forget(self, key: ImageKey) -> None:
        self.objects.pop(key, None)
        changed = self.index.remove(key)
        self.writer.mark(changed | self.reports.sync_images(self.index, changed | {key}))

    def on_report_event(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        """One watch event of a VulnerabilityReport (``event_type`` None: from a listing)."""
        try:
            self.writer.mark(self.reports.on_event(event_type, obj))
        except Exception:  # one bad object never stops the operator
            logger.exception("could not process a VulnerabilityReport")

    def on_configmap(self, configmap: dict[str, Any] | None) -> None:
        reading = read_flag(configmap)
        if reading.value is None:
            version = str(((configmap or {}).get("metadata") or {}).get("resourceVersion", ""))
            message = (
                f"{reading.error}; keeping enable_user_base_image="
                f"{str(self.index.user_base_image_enabled).lower()}"
            )
            logger.error("configmap %s/%s: %s", self.options.namespace, CONFIGMAP_NAME, message)
            self._config_warning = (version, message)
            if self.can_write():
                self._warn_config(version, message)
        else:
            self._config_warning = None
            if reading.value != self.index.user_base_image_enabled:
                logger.info("enable_user_base_image is now %s", str(reading.value).lower())
            changed = self.index.set_user_base_image_enabled(reading.value)
            self.writer.mark(changed | self.reports.sync_images(self.index, changed))
        if configmap is not None:
            self._configmap_ref = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "namespace": self.options.namespace,
                "name": CONFIGMAP_NAME,
                "uid": (configmap.get("metadata") or {}).get("uid"),
            }
        if not self._config_synced:
            self._config_synced = True
            self._update_gate()

    _configmap_ref: dict[str, Any] | None = None

    def _warn_config(self, version: str, message: str) -> None:
        if version in self._warned_versions or self._configmap_ref is None:
            return
        self._warned_versions.add(version)
        self._queue_event(self._configmap_ref, "Warning", INVALID_CONFIG, message)

    # --- writing -------------------------------------------------------------------------

    def job(self, key: ImageKey) -> Job | None:
        """The patch that makes ``key``'s stored status right, or None if it already is."""
        tracked = self.objects.get(key)
        if tracked is None:
            return None
        engine_status = self.index.status(key) if key in self.index else None
        desired = st.desired_status(
            engine_status,
            generation=tracked.generation,
            annotations=tracked.annotations,
            stored=tracked.stored,
            error=tracked.error,
            vulnerabilities=self.reports.status(key),
        )
        if st.matches(desired, tracked.stored):
            return None
        return Job(key=key, patch=st.merge_patch(desired), desired=desired, stored=tracked.stored)

    async def send(self, job: Job) -> None:
        namespace, name = job.key
        response = await self.kube.patch_status(
            GROUP_VERSION_PATH, namespace, PLURAL, name, job.patch
        )
        if isinstance(response, dict):
            # The response is the whole object as stored now: the freshest view there is.
            self._apply("MODIFIED", response, job.key)
        before = st.base_identity(job.stored)
        after = st.base_identity(job.desired)
        if st.was_computed(job.stored) and before != after and isinstance(response, dict):
            meta = response.get("metadata") or {}
            new = job.desired.get("baseImage")
            to = f"{after[0]}/{after[1]} ({new['reason']})" if after and new else "none"
            frm = f"{before[0]}/{before[1]}" if before else "none"
            self._queue_event(
                {
                    "apiVersion": API_VERSION,
                    "kind": "ContainerImage",
                    "namespace": namespace,
                    "name": name,
                    "uid": meta.get("uid"),
                    "resourceVersion": meta.get("resourceVersion"),
                },
                "Normal",
                BASE_IMAGE_CHANGED,
                f"base image changed from {frm} to {to}",
            )

    async def send_refused(self, job: Job, refusal: ApiError) -> None:
        """Write the minimal status (``Ready=False`` saying why) in place of ``job``'s, which
        the API server refused."""
        namespace, name = job.key
        tracked = self.objects.get(job.key)
        if tracked is None:
            return  # forgotten meanwhile
        desired = st.refused_status(
            code=refusal.status,
            reason=refusal.reason,
            message=refusal.message,
            generation=tracked.generation,
            stored=tracked.stored,
        )
        if st.matches(desired, tracked.stored):
            return  # already written (an earlier refusal of the same status)
        response = await self.kube.patch_status(
            GROUP_VERSION_PATH, namespace, PLURAL, name, st.merge_patch(desired)
        )
        if isinstance(response, dict):
            self._apply("MODIFIED", response, job.key)

    # --- Kubernetes Events ---------------------------------------------------------------

    def _queue_event(self, ref: dict[str, Any], kind: str, reason: str, message: str) -> None:
        if not self.options.events:
            return
        now = st.now_rfc3339()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{ref['name']}.", "namespace": ref["namespace"]},
            "involvedObject": {k: v for k, v in ref.items() if v is not None},
            "type": kind,
            "reason": reason,
            "message": message,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.options.identity[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._events.put_nowait((str(ref["namespace"]), event))
        except asyncio.QueueFull:
            self.events_dropped += 1

    async def _post_events(self) -> None:
        while True:
            namespace, event = await self._events.get()
            try:
                await self.kube.create_event(namespace, event)
            except (ApiError, OSError, TimeoutError) as exc:
                logger.warning("could not post event %s: %s", event["reason"], exc)
            except Exception:
                logger.exception("could not post event %s", event["reason"])
