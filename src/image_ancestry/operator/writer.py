"""The status writer: coalesced, bounded, and silent when nothing changed.

Keys are *marked* (from event handlers, flag changes, listings, leadership); a marked key
waits ``debounce`` seconds before it is looked at, so a burst (a manifest directory applied,
a flag flip, a relist) collapses into one look per image, whatever the number of marks. Then
one of ``concurrency`` workers asks the controller for the job: the status computed *now*
from the index, compared with the stored one; equal means no request at all. A key marked
again while its write is in flight is looked at once more after it.

Writes only happen while the gate is open (the index is synced and this replica leads) and
``can_write()`` holds at the moment of the request (a leader whose Lease lapsed stops).

A write that fails for a while (connection errors, 5xx after the client's retries) is tried
again ``retry_after`` seconds later. A status the API server *refuses* (a 4xx but 404, 409
and 429: too large for the schema, forbidden by an admission policy) is replaced by the
minimal one of ``send_refused`` (``Ready=False`` saying why) and tried again at a growing
interval, ``retry_after`` doubled each time up to ``retry_cap``, so a lifted denial is seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from image_ancestry.engine import ImageKey
from image_ancestry.operator.kube import ApiError

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One status patch to send, decided by the controller from its current state."""

    key: ImageKey
    patch: dict[str, Any]
    desired: dict[str, Any]
    stored: dict[str, Any]


@dataclass
class WriterStats:
    looked: int = 0
    written: int = 0
    unchanged: int = 0
    failed: int = 0
    refused: int = 0
    gone: int = 0
    last_write: float = field(default=0.0)


class StatusWriter:
    def __init__(
        self,
        *,
        compute: Callable[[ImageKey], Job | None],
        send: Callable[[Job], Awaitable[None]],
        can_write: Callable[[], bool],
        send_refused: Callable[[Job, ApiError], Awaitable[None]] | None = None,
        concurrency: int = 16,
        debounce: float = 0.1,
        retry_after: float = 5.0,
        retry_cap: float = 30.0,
    ) -> None:
        self._compute = compute
        self._send = send
        self._send_refused = send_refused
        self._can_write = can_write
        self.concurrency = concurrency
        self.debounce = debounce
        self.retry_after = retry_after
        self.retry_cap = retry_cap
        self._refusals: dict[ImageKey, int] = {}  # refusals in a row, per key
        self._retries: dict[ImageKey, asyncio.TimerHandle] = {}
        self._queue: deque[tuple[float, ImageKey]] = deque()
        self._queued: set[ImageKey] = set()
        self._inflight: set[ImageKey] = set()
        self._again: set[ImageKey] = set()
        self._wakeup = asyncio.Event()
        self.gate = asyncio.Event()
        self.stats = WriterStats()

    def mark(self, keys: Iterable[ImageKey]) -> None:
        """Look at these keys again soon. Cheap, synchronous, idempotent."""
        now = time.monotonic()
        added = False
        for key in keys:
            if key in self._inflight:
                self._again.add(key)
            elif key not in self._queued:
                self._queued.add(key)
                self._queue.append((now, key))
                added = True
        if added:
            self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._queued) + len(self._inflight) + len(self._again)

    async def run(self) -> None:
        workers = [
            asyncio.create_task(self._worker(), name=f"status-writer-{i}")
            for i in range(self.concurrency)
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _next(self) -> ImageKey:
        while True:
            await self.gate.wait()
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            marked_at, key = self._queue[0]
            delay = marked_at + self.debounce - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            self._queue.popleft()
            self._queued.discard(key)
            return key

    async def _worker(self) -> None:
        while True:
            key = await self._next()
            self._inflight.add(key)
            try:
                await self._look(key)
            except asyncio.CancelledError:
                raise
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                # the API server unreachable or failing (5xx) past the client's retries:
                # expected during an outage, so one line and no traceback
                self.stats.failed += 1
                logger.warning(
                    "writing the status of %s/%s failed (%s); retrying in %.0fs",
                    *key,
                    str(exc) or type(exc).__name__,
                    self.retry_after,
                )
                self._retry_later(key, self.retry_after)
            except Exception:  # one image's failure must not stop the writer
                self.stats.failed += 1
                logger.exception("writing the status of %s/%s failed; retrying later", *key)
                self._retry_later(key, self.retry_after)
            finally:
                self._inflight.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.mark([key])

    async def _look(self, key: ImageKey) -> None:
        if not self._can_write():
            self.mark([key])  # back in the queue until the lease is renewed (or lost for good)
            await asyncio.sleep(0.5)
            return
        self.stats.looked += 1
        job = self._compute(key)
        if job is None:
            self.stats.unchanged += 1
            self._refusals.pop(key, None)
            return
        try:
            await self._send(job)
        except ApiError as exc:
            if exc.status == 404:
                self.stats.gone += 1  # deleted meanwhile: its DELETED event follows
                self._refusals.pop(key, None)
                return
            if exc.refused:
                await self._refused(job, exc)
                return
            raise
        self._refusals.pop(key, None)
        self.stats.written += 1
        self.stats.last_write = time.monotonic()

    async def _refused(self, job: Job, refusal: ApiError) -> None:
        """The API server refused ``job``'s status: write the minimal one instead, say so
        once (a WARNING at the first refusal in a row), and try again later, less often
        each time."""
        key = job.key
        attempt = self._refusals.get(key, 0) + 1
        self._refusals[key] = attempt
        self.stats.refused += 1
        delay = min(self.retry_cap, self.retry_after * 2 ** min(attempt - 1, 16))
        outcome = "nothing written instead"
        if self._send_refused is not None:
            outcome = "Ready=False written instead"
            try:
                await self._send_refused(job, refusal)
            except ApiError as exc:
                if exc.status == 404:
                    self.stats.gone += 1
                    self._refusals.pop(key, None)
                    return
                if not exc.refused:
                    raise  # an outage: the worker retries it as such
                outcome = f"Ready=False refused too ({exc.status} {exc.reason or 'error'})"
        log = logger.warning if attempt == 1 else logger.debug
        log(
            "writing the status of %s/%s failed: refused with %s %s (%s); %s; retrying in %.0fs",
            *key,
            refusal.status,
            refusal.reason or "error",
            refusal.message[:300],
            outcome,
            delay,
        )
        self._retry_later(key, delay)

    def _retry_later(self, key: ImageKey, delay: float) -> None:
        """Mark ``key`` again in ``delay`` seconds (one pending retry per key)."""
        handle = self._retries.pop(key, None)
        if handle is not None:
            handle.cancel()
        self._retries[key] = asyncio.get_running_loop().call_later(delay, self._retry, key)

    def _retry(self, key: ImageKey) -> None:
        self._retries.pop(key, None)
        self.mark([key])
