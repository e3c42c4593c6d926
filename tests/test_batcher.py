"""Group commit: batching by size and age, answers only after the insert, bounded memory."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gob_metrics.errors import Unavailable
from gob_metrics.storage.base import StorageError
from gob_metrics.write.batcher import Batch, Batcher
from gob_metrics.write.prepare import Prepared


def part(n: int) -> Prepared:
    return Prepared(tenant="t", series_ids=b"\x00" * 16 * n,
                    timestamps=np.arange(n, dtype=np.int64), values=np.zeros(n))


class Recorder:
    """A flush function that records batches and can be held closed by a test."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.batches: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def __call__(self, batch: Batch) -> None:
        self.started.append(batch.samples)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.batches.append(batch.samples)


def batcher(rec: Recorder, **kw: float) -> Batcher:
    args = {"max_samples": 100, "max_age": 0.05, "max_pending": 1000, "queue_timeout": 0.2}
    args.update(kw)
    b = Batcher(rec, **args)  # type: ignore[arg-type]
    b.start()
    return b


async def test_lone_request_is_inserted_at_once() -> None:
    rec = Recorder()
    b = batcher(rec, max_age=30)
    await asyncio.wait_for(b.submit(part(10)), 2)  # no 30 s wait: nothing else was inserting
    assert rec.batches == [10]
    await b.close(1)


async def test_requests_arriving_during_an_insert_share_the_next_batch() -> None:
    rec = Recorder()
    rec.gate.clear()
    b = batcher(rec, max_age=30)
    first = asyncio.create_task(b.submit(part(10)))
    await asyncio.sleep(0.01)
    rest = [asyncio.create_task(b.submit(part(10))) for _ in range(4)]
    await asyncio.sleep(0.01)
    assert rec.started == [10]  # the four wait for the running insert
    rec.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 5)
    assert rec.batches == [10, 40]
    await b.close(1)


async def test_batch_sealed_at_size_while_an_insert_runs() -> None:
    rec = Recorder()
    rec.gate.clear()
    b = batcher(rec, max_age=30)
    tasks = [asyncio.create_task(b.submit(part(50)))]
    await asyncio.sleep(0.01)
    tasks += [asyncio.create_task(b.submit(part(50))) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert rec.started == [50, 100]  # the second batch went at 100 samples, not at 30 s
    rec.gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    await b.close(1)


async def test_small_batches_wait_for_min_samples_or_age() -> None:
    rec = Recorder()
    b = batcher(rec, min_samples=25, max_age=0.2)
    first = asyncio.create_task(b.submit(part(10)))
    await asyncio.sleep(0.05)
    assert rec.started == []  # idle, but 10 < min_samples: wait for more or for the age
    await asyncio.gather(first, b.submit(part(10)), b.submit(part(10)))
    assert rec.batches == [30]  # sealed at 30 >= 25, well before the 0.2 s age
    await asyncio.wait_for(b.submit(part(5)), 2)  # a lone small request: sealed by age
    assert rec.batches == [30, 5]
    await b.close(1)


async def test_answer_waits_for_insert() -> None:
    rec = Recorder()
    rec.gate.clear()
    b = batcher(rec)
    task = asyncio.create_task(b.submit(part(5)))
    await asyncio.sleep(0.2)
    assert not task.done()  # the batch is sealed but not inserted: no answer yet
    rec.gate.set()
    await asyncio.wait_for(task, 2)
    assert rec.batches == [5]
    await b.close(1)


async def test_insert_failure_reaches_every_request_of_the_batch() -> None:
    rec = Recorder()
    rec.fail = StorageError("disk on fire")
    b = batcher(rec)
    results = await asyncio.gather(b.submit(part(1)), b.submit(part(2)), return_exceptions=True)
    assert [type(r) for r in results] == [StorageError, StorageError]
    assert b.pending_samples == 0  # memory released
    await b.close(1)


async def test_full_queue_answers_unavailable_after_timeout() -> None:
    rec = Recorder()
    rec.gate.clear()
    b = batcher(rec, max_samples=10, max_pending=20, queue_timeout=0.1)
    first = [asyncio.create_task(b.submit(part(10))) for _ in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(Unavailable, match=r"write\.max_pending_samples=20"):
        await b.submit(part(10))
    assert b.pending_samples == 20
    rec.gate.set()
    await asyncio.gather(*first)
    await b.submit(part(10))  # room again
    await b.close(1)


async def test_oversized_request_admitted_alone() -> None:
    rec = Recorder()
    b = batcher(rec, max_samples=10, max_pending=20)
    await asyncio.wait_for(b.submit(part(50)), 2)
    assert rec.batches == [50]
    await b.close(1)


async def test_close_flushes_pending_and_refuses_new() -> None:
    rec = Recorder()
    b = batcher(rec, max_age=60)
    task = asyncio.create_task(b.submit(part(7)))
    await asyncio.sleep(0.01)
    await b.close(2)
    await asyncio.wait_for(task, 1)
    assert rec.batches == [7]
    with pytest.raises(Unavailable, match="shutting down"):
        await b.submit(part(1))


async def test_linger_waits_for_fast_arrivals_to_double_the_batch() -> None:
    """Idle with min_samples held and samples arriving fast: the batch lingers and the next
    requests join it (one insert instead of two)."""
    rec = Recorder()
    b = batcher(rec, max_age=30, min_samples=20, linger=0.5)
    b._rate = 1000.0  # as if 1,000 samples/s had been arriving
    first = asyncio.create_task(b.submit(part(20)))
    await asyncio.sleep(0.05)
    assert rec.started == []  # 1000/s x 0.5 s would add 500 >= 20/2: it lingers
    second = asyncio.create_task(b.submit(part(20)))
    await asyncio.wait_for(asyncio.gather(first, second), 2)  # 40 = 2 x min: sealed at once
    assert rec.batches == [40]
    await b.close(1)


async def test_linger_skipped_for_a_slow_sender() -> None:
    rec = Recorder()
    b = batcher(rec, max_age=30, min_samples=20, linger=5)
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(b.submit(part(20)), 2)  # no arrivals to wait for: no 5 s linger
    assert rec.batches == [20]
    assert asyncio.get_running_loop().time() - started < 1
    await b.close(1)


async def test_linger_is_bounded() -> None:
    rec = Recorder()
    b = batcher(rec, max_age=30, min_samples=20, linger=0.1)
    b._rate = 10_000.0
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(b.submit(part(25)), 2)  # nothing more comes: sealed after linger
    assert rec.batches == [25]
    assert 0.09 <= asyncio.get_running_loop().time() - started < 1
    await b.close(1)


def test_arrival_rate_decays() -> None:
    b = Batcher(Recorder(), max_samples=10, max_age=1, max_pending=10, queue_timeout=1)
    b._count_arrival(1000)
    assert 900 < b.arrival_rate() <= 1000
    b._rate_at -= 3 * Batcher.RATE_TAU
    assert b.arrival_rate() < 60
