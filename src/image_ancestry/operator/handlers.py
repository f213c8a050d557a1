"""kopf glue: the handlers, registered on a registry of our own, and kopf's settings.

Only a low-level ``on.event`` handler is registered for ContainerImages. With no
create/update/delete handlers, kopf adds no finalizers, stores no progress, last-handled
configuration or ``status.kopf``, and never patches the objects: the operator's only writes
are its own status patches (:mod:`.writer`).
"""

from __future__ import annotations

import logging
from typing import Any

from image_ancestry import GROUP, VERSION
from image_ancestry.compare.vulnerabilities import REPORT_GROUP, REPORT_PLURAL, REPORT_VERSION
from image_ancestry.operator.controller import PLURAL, Controller

logger = logging.getLogger(__name__)

# Watch requests end server-side after this many seconds and kopf re-opens them from the
# last resourceVersion; the client timeout is a little longer, so a watch that went silent
# (kopf#585) is dropped and resumed rather than waited on forever.
WATCH_SERVER_TIMEOUT = 270
WATCH_CLIENT_TIMEOUT = 300


def build_settings() -> Any:
    import kopf

    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT
    settings.watching.connect_timeout = 30
    settings.watching.reconnect_backoff = 1.0
    # Listings come in pages, so the whole list is never in memory at once (kopf drops each
    # page once its objects are queued); idle per-object workers exit after a second.
    settings.watching.chunk_size = 500
    settings.queueing.idle_timeout = 1.0
    # kopf would post a Kubernetes Event for each of its per-object log lines: not wanted.
    settings.posting.enabled = False
    # One Lease (see .leader) decides who writes; kopf's own peering stays off.
    settings.peering.standalone = True
    # API errors in kopf's own calls (the watch) back off like ours.
    settings.networking.error_backoffs = (1, 2, 4, 8, 15, 30)
    settings.networking.request_timeout = 60
    settings.persistence.diffbase_storage = _no_diffbase()
    return settings


def _no_diffbase() -> Any:
    """A diff-base storage that keeps and builds nothing.

    kopf builds every event's "essence" (a deep copy of the object without its status) to
    diff it for create/update/resume handlers. This process registers only ``on.event``,
    ``on.validate`` and activity handlers, which never look at diffs, so that copy is pure
    cost: at thousands of objects a large share of the CPU spent per watch event. If a
    create/update/resume handler is ever added here, remove this.
    """
    import kopf

    class NoDiffBase(kopf.DiffBaseStorage):
        def build(self, *, body: Any, extra_fields: Any = None) -> Any:
            return kopf.BodyEssence()

        def fetch(self, *, body: Any) -> Any:
            return None

        def store(self, *, body: Any, patch: Any, essence: Any) -> None:
            return None

    return NoDiffBase()


def build_registry(controller: Controller) -> Any:
    import kopf

    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> Any:
        return controller.kube.connection_info()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await controller.shutdown()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def containerimage_event(**kwargs: Any) -> None:
        event = kwargs["event"]
        controller.on_image_event(event.get("type"), event.get("object") or {})

    # trivy-operator's reports, in any namespace. kopf watches CRDs and starts this watch
    # when the VulnerabilityReport CRD appears, so it need not be installed at start.
    @kopf.on.event(REPORT_GROUP, REPORT_VERSION, REPORT_PLURAL, registry=registry)
    async def vulnerabilityreport_event(**kwargs: Any) -> None:
        event = kwargs["event"]
        controller.on_report_event(event.get("type"), event.get("object") or {})

    return registry
