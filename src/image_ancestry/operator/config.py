"""The ``image-ancestry-config`` ConfigMap: the ``enable_user_base_image`` flag (rule 6).

A missing map or key means ``true``. Values are read like the annotation: trimmed,
case-insensitive ``true`` / ``false``. Anything else is invalid: the last good value stays,
and the caller logs it and puts a Warning Event on the ConfigMap.

The map is watched by name in the operator's own namespace (so RBAC can stay a namespaced
Role): list, then watch from the list's resourceVersion with a server-side timeout and a
slightly longer client timeout; 410 Gone relists; errors back off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from image_ancestry.operator.kube import ApiError, KubeClient, backoff_delays

logger = logging.getLogger(__name__)

CONFIGMAP_NAME = "image-ancestry-config"
FLAG_KEY = "enable_user_base_image"


@dataclass(frozen=True)
class FlagReading:
    """What the map says: ``value`` (None when invalid) and, if invalid, why."""

    value: bool | None
    error: str | None = None


def read_flag(configmap: Mapping[str, Any] | None) -> FlagReading:
    if configmap is None:
        return FlagReading(True)
    data = configmap.get("data") or {}
    raw = data.get(FLAG_KEY)
    if raw is None:
        return FlagReading(True)
    word = str(raw).strip().lower()
    if word == "true":
        return FlagReading(True)
    if word == "false":
        return FlagReading(False)
    return FlagReading(None, f'{FLAG_KEY}: {str(raw)!r} is neither "true" nor "false"')


class ConfigWatcher:
    """Calls ``on_change(configmap_or_None)`` for the initial state and every change."""

    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        on_change: Callable[[dict[str, Any] | None], None],
        *,
        name: str = CONFIGMAP_NAME,
        server_timeout: int = 240,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.on_change = on_change
        self.server_timeout = server_timeout

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/configmaps"

    async def run(self) -> None:
        delays = backoff_delays(first=1.0, cap=30.0)
        selector = f"metadata.name={self.name}"
        while True:
            try:
                listing = await self.kube.request(
                    "GET", self.path, params={"fieldSelector": selector}
                )
                items = listing.get("items") or []
                self.on_change(items[0] if items else None)
                version = str(listing["metadata"].get("resourceVersion", ""))
                delays = backoff_delays(first=1.0, cap=30.0)
                while True:
                    params = {
                        "watch": "true",
                        "fieldSelector": selector,
                        "allowWatchBookmarks": "true",
                        "resourceVersion": version,
                        "timeoutSeconds": str(self.server_timeout),
                    }
                    gone = False
                    async for event in self.kube.stream(
                        self.path, params=params, client_timeout=self.server_timeout + 30
                    ):
                        kind = event.get("type")
                        obj = event.get("object") or {}
                        if kind == "ERROR":
                            gone = obj.get("code") == 410
                            if not gone:
                                raise ApiError(
                                    int(obj.get("code") or 500), "WATCH", self.path, str(obj)
                                )
                            break
                        version = str(obj.get("metadata", {}).get("resourceVersion", version))
                        if kind in ("ADDED", "MODIFIED"):
                            self.on_change(obj)
                        elif kind == "DELETED":
                            self.on_change(None)
                    if gone:
                        logger.debug("configmap watch: 410 Gone, relisting")
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = next(delays)
                logger.warning(
                    "watching configmap %s/%s: %s; retrying in %.1fs",
                    self.namespace,
                    self.name,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
