"""Who may mark base images: ``admin_groups`` and ``admin_users`` of the ConfigMap (rule 7).

The ConfigMap ``image-ancestry-config`` in the operator's namespace is the one place an
administrator configures the operator; the webhook reads two of its keys:

- ``admin_groups``: comma-separated group names; missing map or key: ``system:masters``.
- ``admin_users``: comma-separated user names; missing map or key: nobody.

An explicitly empty value means nobody through that list (``admin_groups: ""`` takes even
``system:masters`` out). Names are trimmed; empty items (``a,,b``, a trailing comma) are
dropped. A GitOps controller is listed by its service account's user name,
``system:serviceaccount:<namespace>:<name>``, or all accounts of its namespace by the group
``system:serviceaccounts:<namespace>``.

:class:`AdminConfigWatcher` keeps the current value in memory, from a watch on that one
ConfigMap that every replica runs for itself (the webhook is served by all replicas, not only
the one that writes statuses), so a change takes effect without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from image_ancestry.operator.kube import KubeClient

logger = logging.getLogger(__name__)

CONFIGMAP_NAME = "image-ancestry-config"
ADMIN_GROUPS_KEY = "admin_groups"
ADMIN_USERS_KEY = "admin_users"
DEFAULT_ADMIN_GROUPS: tuple[str, ...] = ("system:masters",)
DEFAULT_ADMIN_USERS: tuple[str, ...] = ()


def split_names(value: str) -> tuple[str, ...]:
    """``" a, b,,a "`` -> ``("a", "b")``: trimmed, no empties, first occurrence kept."""
    seen: dict[str, None] = {}
    for item in value.split(","):
        name = item.strip()
        if name:
            seen.setdefault(name, None)
    return tuple(seen)


@dataclass(frozen=True)
class AdminConfig:
    """The admin lists in force, and where they were read from (for messages)."""

    admin_groups: tuple[str, ...] = DEFAULT_ADMIN_GROUPS
    admin_users: tuple[str, ...] = DEFAULT_ADMIN_USERS
    source: str = f"ConfigMap {CONFIGMAP_NAME}"

    def is_admin(self, username: str | None, groups: tuple[str, ...] | list[str]) -> bool:
        if username is not None and username in self.admin_users:
            return True
        return any(group in self.admin_groups for group in groups)


def parse_admin_config(data: Mapping[str, Any] | None, *, source: str) -> AdminConfig:
    """The admin lists from a ConfigMap's ``data`` (None: the map does not exist)."""
    data = data or {}
    groups = data.get(ADMIN_GROUPS_KEY)
    users = data.get(ADMIN_USERS_KEY)
    return AdminConfig(
        admin_groups=DEFAULT_ADMIN_GROUPS if groups is None else split_names(str(groups)),
        admin_users=DEFAULT_ADMIN_USERS if users is None else split_names(str(users)),
        source=source,
    )


class AdminConfigWatcher:
    """The current :class:`AdminConfig`, kept up to date by a watch on the ConfigMap.

    The watch is the operator's own :class:`~image_ancestry.operator.config.ConfigWatcher`
    (list, watch from the resourceVersion, relist on 410, back off on errors), run once more
    for the webhook in every replica. :attr:`current` is None until the first listing
    succeeded: until then the webhook denies every mark change (it cannot tell who is an
    admin) and admits everything else.
    """

    def __init__(self, client: KubeClient, namespace: str, name: str = CONFIGMAP_NAME) -> None:
        from image_ancestry.operator.config import ConfigWatcher

        self.source = f"ConfigMap {namespace}/{name}"
        self.current: AdminConfig | None = None
        self._watcher = ConfigWatcher(client, namespace, self.apply, name=name, server_timeout=60)
        self._task: asyncio.Task[None] | None = None

    def apply(self, configmap: Mapping[str, Any] | None) -> None:
        data = None if configmap is None else (configmap.get("data") or {})
        new = parse_admin_config(data, source=self.source)
        if new != self.current:
            logger.info(
                "webhook admins from %s%s: groups %s, users %s",
                self.source,
                " (absent: defaults)" if configmap is None else "",
                list(new.admin_groups),
                list(new.admin_users),
            )
        self.current = new

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._watcher.run(), name=f"watch {self.source} (webhook)"
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
