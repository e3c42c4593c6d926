"""Hand a streaming query's result from the thread that reads it to the event loop.

Both transports read results with blocking calls in a thread pool. A ``Pipe`` carries
what that thread produces, the column list, then Arrow batches, then the end or an error,
to the coroutine that encodes them, holding at most ``room`` batches in between: the
producer waits for the reader, so a large result never sits whole in memory. A reader
slower than ``deadline`` allows ends the query, so a slow client cannot hold a connection
(or the embedded engine) for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pyarrow as pa

from gob_metrics.storage.base import StorageError

COLUMNS, BATCH, END, ERROR = "columns", "batch", "end", "error"


class Pipe:
    """Items from one producer thread to one coroutine, at most ``room`` batches queued."""

    def __init__(self, loop: asyncio.AbstractEventLoop, room: int, deadline: float) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[tuple[str, Any, bool]] = asyncio.Queue()
        self._room = threading.Semaphore(room)
        self._closed = threading.Event()
        self._deadline = deadline

    def put(self, kind: str, value: Any = None) -> bool:
        """Producer side. A batch waits for room; False once the reader is gone or too
        slow (then the producer stops its query). The last item (END, ERROR) never waits."""
        needs_room = kind == BATCH
        while not self._closed.is_set():
            if not needs_room or self._room.acquire(timeout=0.1):
                return self._send((kind, value, needs_room))
            if time.monotonic() > self._deadline:
                self._send((ERROR, StorageError(
                    "the query result was not read in time; the query was cancelled",
                    retryable=False, code=159), False))
                return False
        return False

    def _send(self, item: tuple[str, Any, bool]) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed
            return False
        return True

    async def get(self) -> tuple[str, Any]:
        kind, value, took_room = await self._queue.get()
        if took_room:
            self._room.release()
        return kind, value

    def close(self) -> None:
        """Reader side: stop the producer at its next put."""
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()


async def first_item(pipe: Pipe) -> list[tuple[str, str]]:
    """The column list, or the error the query raised before it had one."""
    kind, value = await pipe.get()
    if kind == ERROR:
        raise value
    if kind != COLUMNS:
        raise StorageError(f"query stream began with {kind!r}, not its columns",
                           retryable=False)
    return value


async def batches(pipe: Pipe) -> AsyncIterator[pa.RecordBatch]:
    """The batches after the column list, until the end; raises the query's error."""
    while True:
        kind, value = await pipe.get()
        if kind == BATCH:
            yield value
        elif kind == END:
            return
        else:
            raise value


def deadline(settings: Any, grace: float, default: float) -> float:
    """When a stream must have been read: max_execution_time (if set) plus ``grace``."""
    limit = (settings or {}).get("max_execution_time")
    with contextlib.suppress(TypeError, ValueError):
        if limit:
            return time.monotonic() + float(limit) + grace
    return time.monotonic() + default
