"""The embedded transport: the ClickHouse engine in-process (chdb), persisted under the
data directory. One process owns a data directory; an exclusive lock file enforces it.

chdb releases the GIL while a query runs, so queries and inserts go to a thread pool and
the event loop keeps serving requests. The engine runs one statement at a time anyway, and
every call here holds one lock for its whole duration, for two reasons found in chdb 4.4:
a query that fails after producing output leaves that output in the session, where the
next query's result would pick it up (so a failure is followed by a throw-away query
under the same lock), and any query ends a streaming query that is still being read.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import math
import os
import re
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

from gob_metrics.storage import stream
from gob_metrics.storage.base import (
    Params,
    QueryResult,
    Settings,
    Storage,
    StorageError,
    settings_clause,
)

# ClickHouse error codes that a retry can cure (storage is busy, not the request wrong).
_RETRYABLE_CODES = {
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    241,  # MEMORY_LIMIT_EXCEEDED
    252,  # TOO_MANY_PARTS
    159,  # TIMEOUT_EXCEEDED
}
_CODE_RE = re.compile(r"Code: (\d+)\.")
_LOCK_FILE = "gob-metrics.lock"
#: Record batches a streaming query may have produced and the reader not yet taken.
_STREAM_BUFFER_BATCHES = 4
#: A stream whose reader takes this long past max_execution_time is cancelled, so a slow
#: reader cannot hold the engine (seconds; without max_execution_time, _STREAM_TIMEOUT).
_STREAM_GRACE = 5.0
_STREAM_TIMEOUT = 300.0


# ClickHouse parses a bound scalar in its Escaped text format: backslash sequences are
# interpreted ("a\\b" would arrive as a, backspace) and a raw newline or tab ends the value.
_ESCAPED = str.maketrans({"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"})


def format_param(value: Any) -> str:
    """Render a parameter in ClickHouse's text format, as the server parses bound values.

    Top-level strings are escaped (Escaped format) so they arrive verbatim; inside arrays
    each element is quoted and escaped (the array is read as a quoted literal).
    """
    if isinstance(value, str):
        return value.translate(_ESCAPED)
    return _format_nested(value)


def _format_nested(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_format_nested(v) for v in value) + "]"
    raise TypeError(f"unsupported query parameter type {type(value).__name__}")


def translate_error(exc: BaseException, what: str) -> StorageError:
    """Map a chdb exception to StorageError, keeping ClickHouse's code and message."""
    text = str(exc)
    m = _CODE_RE.search(text)
    code = int(m.group(1)) if m else None
    return StorageError(f"{what} failed: {text}", retryable=code in _RETRYABLE_CODES, code=code)


class EmbeddedStorage(Storage):
    """chdb session on ``<data_dir>/clickhouse`` with a lock on ``<data_dir>``."""

    engine = "embedded"

    def __init__(self, data_dir: str | os.PathLike[str], database: str = "gob",
                 threads: int = 4) -> None:
        self.data_dir = Path(data_dir)
        self.database = database
        self.cluster = ""
        self._threads = threads
        self._session: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock_fd: int | None = None
        self._engine = threading.RLock()

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        from chdb import session as chdb_session  # heavy import, only when used

        try:
            self._session = chdb_session.Session(str(self.data_dir / "clickhouse"))
        except Exception as exc:
            self._release_lock()
            raise StorageError(
                f"cannot open the embedded ClickHouse engine in {self.data_dir}: {exc}",
                retryable=False,
            ) from exc
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="chdb")
        await self.execute(f"CREATE DATABASE IF NOT EXISTS {self.database}")

    def _acquire_lock(self) -> None:
        path = self.data_dir / _LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StorageError(
                f"data directory {self.data_dir} is in use by another gob-metrics process "
                f"(pid {owner}); one process owns a data directory: stop it or choose "
                "another --data-dir",
                retryable=False,
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._session is not None:
            try:
                self._session.close()
            finally:
                self._session = None
        self._release_lock()

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._pool is None or self._session is None:
            raise StorageError("embedded storage is not open", retryable=True)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    def _query_sync(self, sql: str, fmt: str, params: Params | None) -> Any:
        bound = {k: format_param(v) for k, v in params.items()} if params else None
        with self._engine:
            try:
                return self._session.query(sql, fmt, params=bound)
            except Exception as exc:
                self._drain()
                raise translate_error(exc, "query") from exc

    def _drain(self) -> None:
        """Absorb what a failed query left in the session (call with the engine held)."""
        with contextlib.suppress(Exception):
            self._session.query("SELECT 1", "CSV")

    async def execute(self, sql: str, params: Params | None = None) -> None:
        await self._run(self._query_sync, sql, "CSV", params)

    async def query(self, sql: str, params: Params | None = None) -> pa.Table:
        result = await self._run(self._query_sync, sql, "ArrowTable", params)
        return result if isinstance(result, pa.Table) else pa.table({})

    native_results = True

    def _native_sync(self, sql: str, params: Params | None) -> bytes:
        result = self._query_sync(sql, "Native", params)
        return result.bytes() if result is not None else b""

    async def query_native(self, sql: str, params: Params | None = None) -> bytes:
        """The result in Native format: chdb writes it in about half the CPU time of Arrow
        and numeric columns need no conversion (see gob_metrics.read.native)."""
        return await self._run(self._native_sync, sql, params)

    def _insert_sync(self, table: str, data: pa.Table) -> None:
        """Stream the table to ClickHouse in Arrow's IPC stream format (chdb's
        ``send_insert``); ClickHouse converts each Arrow type to its column's type (a
        16-byte fixed-size binary to UInt128, little-endian). Measured against the
        ``INSERT ... SELECT FROM Python(table)`` it replaces: 15-20% less CPU per insert of
        20k samples (merges included) and no Python callbacks while the engine runs."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, data.schema) as writer:
            writer.write_table(data)
        payload = sink.getvalue().to_pybytes()
        sql = (
            f"INSERT INTO {self.database}.{table} ({', '.join(data.column_names)}) "
            # optimize_on_insert = 0: no ReplacingMergeTree collapse within each inserted
            # block (readers deduplicate (series_id, timestamp) anyway, merges do it on
            # disk); 3-8% less CPU per insert of 20k samples (chdb, 3 interleaved runs).
            "SETTINGS max_partitions_per_insert_block = 0, optimize_on_insert = 0"
        )
        with self._engine:
            inserter = None
            try:
                inserter = self._session.send_insert(sql, "ArrowStream")
                inserter.append(payload)
                inserter.finish()
            except Exception as exc:
                if inserter is not None:
                    with contextlib.suppress(Exception):
                        inserter.cancel()
                self._drain()
                raise translate_error(exc, f"insert into {table}") from exc

    async def insert(self, table: str, data: pa.Table) -> None:
        if data.num_rows:
            await self._run(self._insert_sync, table, data)

    @contextlib.asynccontextmanager
    async def query_stream(
        self, sql: str, params: Params | None = None, settings: Settings | None = None
    ) -> AsyncIterator[QueryResult]:
        """Stream a SELECT: a pool thread holds the engine, runs the query and hands each
        block over as Arrow batches; at most _STREAM_BUFFER_BATCHES wait for the reader."""
        if self._pool is None or self._session is None:
            raise StorageError("embedded storage is not open", retryable=True)
        pipe = stream.Pipe(asyncio.get_running_loop(), _STREAM_BUFFER_BATCHES,
                           stream.deadline(settings, _STREAM_GRACE, _STREAM_TIMEOUT))
        producer = self._pool.submit(self._stream_sync, sql, params, settings, pipe)
        try:
            columns = await stream.first_item(pipe)
            yield QueryResult(columns, stream.batches(pipe))
        finally:
            pipe.close()
            producer.add_done_callback(lambda f: f.exception())

    def _stream_sync(self, sql: str, params: Params | None, settings: Settings | None,
                     pipe: stream.Pipe) -> None:
        bound = {k: format_param(v) for k, v in params.items()} if params else None
        clause = settings_clause(settings)
        with self._engine:
            result = None
            try:
                # chdb's Arrow output does not carry ClickHouse types (a DateTime is a
                # uint32): DESCRIBE names them, under the same settings.
                desc = self._session.query(f"DESCRIBE TABLE ({sql}){clause}", "ArrowTable",
                                           params=bound)
                columns = list(zip(desc.column("name").to_pylist(),
                                   desc.column("type").to_pylist(), strict=True))
                if not pipe.put(stream.COLUMNS, columns):
                    return
                result = self._session.send_query(f"{sql}{clause}", "Arrow", params=bound)
                while (chunk := result.fetch()) is not None:
                    data = chunk.bytes()
                    for batch in pa.ipc.open_file(data).read_all().to_batches() if data else ():
                        if batch.num_rows and not pipe.put(stream.BATCH, batch):
                            result.cancel()
                            self._drain()
                            return
                pipe.put(stream.END)
            except Exception as exc:
                if result is not None:
                    with contextlib.suppress(Exception):
                        result.cancel()
                self._drain()
                error = exc if isinstance(exc, StorageError) else translate_error(exc, "query")
                pipe.put(stream.ERROR, error)
