"""Group commit: concurrent requests join a shared batch; each request is answered only
after the batch holding its samples is durably inserted.

A batch is sealed (handed to an insert) when it reaches ``write.batch_max_samples``, or
when no insert is running and it holds ``write.batch_min_samples``, or when its first
request has waited ``write.batch_max_age``. Under load batches grow to what arrives during
one insert, so latency stays near one or two insert times; a trickle of small requests
waits at most ``batch_max_age`` so that ClickHouse is not paid its per-insert cost (5-7 ms
of CPU, measured with chdb, plus merging one more part) for every few samples.

Linger: when no insert is running and the batch holds ``batch_min_samples`` but not twice
that, it is held up to ``write.batch_linger`` more if samples are arriving fast enough
(a rate averaged over about a second) to grow it by half in that time. Senders that keep many
requests in flight then share inserts twice as large (the ingest benchmark: half the
inserts, about 14% less CPU per sample), and a slow sender never waits for it.

Memory is bounded by ``write.max_pending_samples`` (samples pending plus being inserted):
a request that does not fit waits for room up to ``write.queue_timeout`` and is then
answered 503 with Retry-After, so nothing queues without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gob_metrics.errors import Unavailable
from gob_metrics.write.prepare import Prepared

log = logging.getLogger(__name__)


@dataclass
class Batch:
    parts: list[Prepared] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    samples: int = 0
    created: float = field(default_factory=time.monotonic)


Flush = Callable[[Batch], Awaitable[None]]


class Batcher:
    """Collects Prepared parts into batches and hands sealed batches to ``flush``."""

    RATE_TAU = 1.0  # seconds: the time constant of the arrival-rate average

    def __init__(self, flush: Flush, *, max_samples: int, max_age: float, max_pending: int,
                 queue_timeout: float, min_samples: int = 0, linger: float = 0.0,
                 workers: int = 2) -> None:
        self._flush = flush
        self.max_samples = max_samples
        self.min_samples = min_samples
        self.linger = linger
        self.max_age = max_age
        self.max_pending = max_pending
        self.queue_timeout = queue_timeout
        self._workers_n = workers
        self._current = Batch()
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue()
        self._held = 0  # samples admitted and not yet inserted (or failed)
        self._room = asyncio.Condition()
        self._timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._rate = 0.0  # samples per second, exponentially averaged over RATE_TAU
        self._rate_at = time.monotonic()
        self._workers: list[asyncio.Task[None]] = []
        self._closing = False
        self._inserting = 0  # sealed batches not yet inserted (queued or being inserted)

    @property
    def pending_samples(self) -> int:
        return self._held

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._worker(), name=f"batch-flush-{i}")
                         for i in range(self._workers_n)]

    async def submit(self, part: Prepared) -> None:
        """Add ``part`` to the current batch and wait until it is durably inserted."""
        if self._closing:
            raise Unavailable("server is shutting down; retry against another replica", 1.0)
        n = part.samples + len(part.new_series) + len(part.metadata)
        await self._admit(n)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        batch = self._current
        batch.parts.append(part)
        batch.waiters.append(fut)
        batch.samples += n
        if batch.samples >= self.max_samples:
            self._seal()
        elif self._inserting == 0 and batch.samples >= self.min_samples:
            self._seal_or_linger()  # judged by the rate before this request
        self._count_arrival(n)
        if self._timer is None and self._current is batch and batch.parts:
            self._timer = loop.call_later(self.max_age, self._seal)
        # The insert proceeds even if this request is cancelled (client gone): shield it.
        await asyncio.shield(fut)

    async def _admit(self, n: int) -> None:
        # A part larger than the whole budget is admitted alone, when nothing else is held,
        # so that it can still make progress.
        def fits() -> bool:
            return self._held + n <= self.max_pending or self._held == 0

        async with self._room:
            if not fits():
                try:
                    await asyncio.wait_for(self._room.wait_for(fits), self.queue_timeout)
                except TimeoutError:
                    raise Unavailable(
                        f"ingest queue full: {self._held} samples pending, request has {n}, "
                        f"limit write.max_pending_samples={self.max_pending}; retry later",
                        retry_after=max(1.0, self.max_age * 5),
                    ) from None
            self._held += n

    def _count_arrival(self, n: int) -> None:
        now = time.monotonic()
        self._rate = self._rate * math.exp((self._rate_at - now) / self.RATE_TAU) \
            + n / self.RATE_TAU
        self._rate_at = now

    def arrival_rate(self) -> float:
        """Samples per second arriving lately (decays while nothing arrives)."""
        return self._rate * math.exp((self._rate_at - time.monotonic()) / self.RATE_TAU)

    def _seal_or_linger(self) -> None:
        """No insert is running and the batch holds min_samples: seal it, or, when samples
        arrive fast enough to grow it by half within ``linger``, hold it that long (or until
        it holds twice min_samples)."""
        target = 2 * self.min_samples
        held = self._current.samples
        if held >= target or self.linger <= 0 \
                or self.arrival_rate() * self.linger < held / 2:
            self._seal()
        elif self._linger_timer is None:
            self._linger_timer = asyncio.get_running_loop().call_later(self.linger, self._seal)

    def _seal(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        batch = self._current
        if not batch.parts:
            return
        self._current = Batch()
        self._inserting += 1
        self._queue.put_nowait(batch)

    async def _release(self, n: int) -> None:
        async with self._room:
            self._held -= n
            self._room.notify_all()

    async def _worker(self) -> None:
        while True:
            batch = await self._queue.get()
            if batch is None:
                return
            try:
                await self._flush(batch)
            except Exception as exc:
                for fut in batch.waiters:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for fut in batch.waiters:
                    if not fut.done():
                        fut.set_result(None)
            finally:
                self._inserting -= 1
                await self._release(batch.samples)
                if self._inserting == 0 and self._current.samples >= self.min_samples \
                        and self._current.parts:
                    self._seal_or_linger()  # what gathered during the insert goes now

    async def close(self, timeout: float) -> None:
        """Stop accepting, flush what is pending, and wait for the workers (drain)."""
        self._closing = True
        self._seal()
        for _ in self._workers:
            self._queue.put_nowait(None)
        if not self._workers:
            return
        _, pending = await asyncio.wait(self._workers, timeout=timeout)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if pending:
            log.error("shutdown timeout: some batches were not flushed",
                      extra={"timeout_s": timeout})
