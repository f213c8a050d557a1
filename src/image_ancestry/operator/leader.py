"""Leader election on a ``coordination.k8s.io/v1`` Lease, the way client-go does it.

Every replica watches ContainerImages and keeps its index warm; only the Lease holder writes
statuses and posts Events. A holder renews every ``renew_period``; it stops writing as soon as
``renew_deadline`` passes without a successful renewal, which is before the lease can expire
for anyone else (``renew_deadline < lease_duration``). A standby takes over when it has seen
the same record unchanged for ``lease_duration`` seconds of its own clock (no comparison of
clocks across machines), or at once when the holder released it on a clean exit.

There are no priorities, so two replicas can never freeze each other the way equal kopf
peering priorities do: exactly one wins the optimistic-concurrency race on the Lease.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from image_ancestry.operator.kube import ApiError, KubeClient

logger = logging.getLogger(__name__)


def default_identity() -> str:
    pod = os.environ.get("POD_NAME")
    if pod:
        return pod
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def _micro_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        kube: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_change: Callable[[bool], None] = lambda _leader: None,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_change = on_change
        self._leader = False
        self._valid_until = 0.0
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self.holder: str | None = None

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    def is_leader(self) -> bool:
        return self._leader and time.monotonic() < self._valid_until

    async def run(self) -> None:
        try:
            while True:
                started = time.monotonic()
                try:
                    won = await self._acquire_or_renew()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    logger.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                    won = False
                if won:
                    self._valid_until = started + self.renew_deadline
                    self._set(True)
                elif self._leader and (
                    time.monotonic() >= self._valid_until
                    or (self.holder is not None and self.holder != self.identity)
                ):
                    self._set(False)
                else:
                    self.on_change(self.is_leader())
                period = self.retry_period
                await asyncio.sleep(period)
        finally:
            if self._leader:
                await asyncio.shield(self.release())

    def _set(self, leader: bool) -> None:
        if leader != self._leader:
            logger.info(
                "%s leadership of lease %s/%s (identity %s)",
                "acquired" if leader else "lost",
                self.namespace,
                self.name,
                self.identity,
            )
        self._leader = leader
        if not leader:
            self._valid_until = 0.0
        self.on_change(self.is_leader())

    async def _get(self) -> dict[str, Any] | None:
        try:
            lease: dict[str, Any] = await self.kube.request(
                "GET", self.path, attempts=1, timeout=self.retry_period * 2
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return lease

    async def _acquire_or_renew(self) -> bool:
        lease = await self._get()
        now = _micro_now()
        duration = int(self.lease_duration)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": duration,
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": 0,
                },
            }
            collection = self.path.rsplit("/", 1)[0]
            try:
                await self.kube.request(
                    "POST", collection, body=body, attempts=1, timeout=self.retry_period * 2
                )
            except ApiError as exc:
                if exc.status == 409:  # someone else created it first
                    return False
                raise
            self.holder = self.identity
            return True

        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or None
        self.holder = holder
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()
        their_duration = float(spec.get("leaseDurationSeconds") or duration)
        if (
            holder is not None
            and holder != self.identity
            and time.monotonic() < self._observed_at + their_duration
        ):
            return False
        new_spec = dict(spec)
        new_spec.update(holderIdentity=self.identity, leaseDurationSeconds=duration, renewTime=now)
        if holder != self.identity:
            new_spec["acquireTime"] = now
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        lease["spec"] = new_spec
        try:
            await self.kube.request(
                "PUT", self.path, body=lease, attempts=1, timeout=self.retry_period * 2
            )
        except ApiError as exc:
            if exc.status == 409:  # lost the race (or our view was stale)
                return False
            raise
        self.holder = self.identity
        return True

    async def release(self) -> None:
        """Give the lease up on a clean exit, so a standby takes over at once."""
        self._leader = False
        self._valid_until = 0.0
        try:
            lease = await self._get()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"].update(
                holderIdentity=None, leaseDurationSeconds=1, renewTime=_micro_now()
            )
            await self.kube.request(
                "PUT", self.path, body=lease, attempts=1, timeout=self.retry_period * 2
            )
            logger.info("released lease %s/%s", self.namespace, self.name)
        except Exception as exc:
            logger.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)
