"""The one small interface everything above storage talks to.

Two transports implement it: the embedded ClickHouse engine (chdb, in-process) and a
ClickHouse server through clickhouse-driver. Both speak the same SQL dialect; callers
never learn which one is underneath.

Contract shared by every implementation:

* SQL uses ClickHouse query parameters, ``{name:Type}``, bound by the server, never
  formatted into the text. ``params`` maps names to Python values: ``str``, ``int``,
  ``float``, ``bool``, ``bytes`` (for ``FixedString``/``UInt128`` given as 16 little-endian
  bytes is *not* supported: pass UInt128 as ``int``), and lists or tuples of those for
  ``Array(T)``.
* ``query`` returns a ``pyarrow.Table``. Column types follow chdb's Arrow mapping:
  integers and floats as the same-width Arrow types, ``String`` as ``string`` (or
  ``binary`` for non UTF-8), ``UInt128`` as ``fixed_size_binary(16)`` holding the value's
  little-endian bytes, ``Map(String, String)`` as ``map<string, string>``,
  ``DateTime64(3)`` as ``timestamp[ms]``, ``Array(T)`` as ``list<T>``.
* ``insert`` takes a ``pyarrow.Table`` whose columns are named exactly like the target
  table's columns, using the same mapping (so ``series_id UInt128`` arrives as
  ``fixed_size_binary(16)``, ``labels Map(...)`` as ``map<string, string>``).
  An insert that returns has been accepted by ClickHouse (written as a part); one that
  raises may or may not have been, and the caller retries or fails the request.
* ``query_stream`` runs one SELECT with ClickHouse ``settings`` (limits, readonly) and
  yields its column types, then its rows as Arrow record batches, so a large result never
  needs to sit whole in memory.
* Errors are translated at the boundary into :class:`StorageError` (retryable or not).
"""

from __future__ import annotations

import abc
import contextlib
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from gob_metrics.errors import GobError

ParamValue = str | int | float | bool | Sequence[Any]
Params = Mapping[str, ParamValue]
Settings = Mapping[str, int | float | str]

_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class QueryResult:
    """A SELECT's result while it streams: its columns first, then its rows in batches."""

    #: (name, ClickHouse type) of every column, in order.
    columns: list[tuple[str, str]]
    #: the rows, as Arrow record batches with the same type mapping as ``Storage.query``.
    batches: AsyncIterator[pa.RecordBatch]


def settings_clause(settings: Settings | None) -> str:
    """`` SETTINGS name = value, ...`` to append to a SELECT, or "" for no settings.

    Names must be identifiers; values are numbers or strings (quoted here). Settings come
    from configuration, never from a client.
    """
    if not settings:
        return ""
    parts = []
    for name, value in settings.items():
        if not _SETTING_NAME.fullmatch(name):
            raise ValueError(f"not a setting name: {name!r}")
        if isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, int | float):
            text = repr(value)
        elif isinstance(value, str):
            text = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        else:
            raise ValueError(f"setting {name} has unsupported value type {type(value)}")
        parts.append(f"{name} = {text}")
    return " SETTINGS " + ", ".join(parts)


class StorageError(GobError):
    """Storage failed; the request that needed it cannot be answered."""

    status = 503

    def __init__(self, message: str, *, retryable: bool = True, code: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.code = code


class Storage(abc.ABC):
    """Runs parameterised SQL and columnar inserts against ClickHouse."""

    #: short name of the transport, shown in logs and /api/v1/status/buildinfo.
    engine: str = ""
    #: database that holds the project's tables.
    database: str = "gob"
    #: ClickHouse cluster for ON CLUSTER DDL, or "" for a single server.
    cluster: str = ""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open connections or the embedded engine; raise StorageError if it cannot."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release everything start() acquired. Safe to call twice."""

    @abc.abstractmethod
    async def execute(self, sql: str, params: Params | None = None) -> None:
        """Run one statement whose result is not needed (DDL, OPTIMIZE, ...)."""

    @abc.abstractmethod
    async def query(self, sql: str, params: Params | None = None) -> pa.Table:
        """Run one SELECT and return its whole result as an Arrow table."""

    #: whether :meth:`query_native` is implemented (a cheaper result format than Arrow).
    native_results: bool = False

    async def query_native(self, sql: str, params: Params | None = None) -> bytes:
        """Run one SELECT and return its whole result in ClickHouse's Native format (read
        with ``gob_metrics.read.native``). Only where ``native_results`` is true."""
        raise NotImplementedError(f"{type(self).__name__} has no Native results")

    @abc.abstractmethod
    async def insert(self, table: str, data: pa.Table) -> None:
        """Insert the rows of ``data`` into ``table`` (a name in this database)."""

    @contextlib.asynccontextmanager
    async def query_stream(
        self, sql: str, params: Params | None = None, settings: Settings | None = None
    ) -> AsyncIterator[QueryResult]:
        """Run one SELECT with ClickHouse ``settings`` and stream its result.

        ``sql`` is a single SELECT without SETTINGS or FORMAT clauses. An error the query
        raises before its first row is raised on entering the context; a later one (a limit
        hit half-way) while iterating ``batches``. Leaving the context early cancels the
        query. This default reads the whole result with ``query`` and the settings as a
        SETTINGS clause; transports that can stream override it.
        """
        clause = settings_clause(settings)
        desc = await self.query(f"DESCRIBE TABLE ({sql}){clause}", params)
        columns = list(zip(desc.column("name").to_pylist(), desc.column("type").to_pylist(),
                           strict=True))
        table = await self.query(f"{sql}{clause}", params)

        async def batches() -> AsyncIterator[pa.RecordBatch]:
            for batch in table.to_batches():
                yield batch

        yield QueryResult(columns, batches())

    async def ping(self) -> None:
        """Raise StorageError unless storage answers a trivial query."""
        await self.query("SELECT 1 AS ok")
