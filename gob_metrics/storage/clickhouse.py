"""The server transport: a ClickHouse server over the native protocol (clickhouse-driver).

clickhouse-driver is blocking, so every call runs in this transport's own thread pool on
a client taken from a bounded pool (one client is one TCP connection, used by one call at
a time); the event loop only waits. Query parameters are sent with the query and bound
by the server (``server_side_params``); a server too old to bind them gets no query at
all rather than SQL with values formatted into it.

Failures are sorted at this boundary. A lost or refused connection, a socket timeout or
a server error that says "busy, try again" is re-sent on a fresh connection up to
``max_retries`` times with exponential backoff, then raised as a retryable StorageError.
Everything else (syntax, unknown table, bad types) is raised at once, not retryable,
with the server's code and message. An INSERT is re-sent only when it is known not to
have reached the table (see ``_resend``), since an insert re-sent after its data left
may be written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow as pa
from clickhouse_driver import Client, errors

from gob_metrics.errors import ConfigError
from gob_metrics.storage import stream
from gob_metrics.storage.base import Params, QueryResult, Settings, Storage, StorageError
from gob_metrics.storage.clickhouse_arrow import arrow_to_column, column_to_arrow

log = logging.getLogger(__name__)

T = TypeVar("T")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CLUSTER = re.compile(r"[A-Za-z0-9_\-.]+")
_DEFAULT_PORTS = {"clickhouse": 9000, "clickhouses": 9440}
_URL_OPTIONS = {"verify", "ca_certs"}
#: Native protocol revision from which the server binds parameters sent with a query
#: (ClickHouse 22.8). clickhouse-driver silently drops them for older servers.
MIN_REVISION_WITH_PARAMETERS = 54459

# Server errors re-sent here on a fresh connection: the server, a replica or ZooKeeper
# was busy or out of reach, and the same statement can succeed a moment later.
_RESENT_CODES = {
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    203,  # NO_FREE_CONNECTION
    209,  # SOCKET_TIMEOUT (server to a shard)
    210,  # NETWORK_ERROR (server to a shard)
    242,  # TABLE_IS_READ_ONLY (a replica lost its ZooKeeper session)
    279,  # ALL_CONNECTION_TRIES_FAILED
    285,  # TOO_FEW_LIVE_REPLICAS
    999,  # KEEPER_EXCEPTION
}
# Retryable for the caller (as in the embedded transport) but not re-sent here: the
# server is overloaded, and the same work again within a second only adds to it.
_OVERLOAD_CODES = {
    159,  # TIMEOUT_EXCEEDED
    241,  # MEMORY_LIMIT_EXCEEDED
    252,  # TOO_MANY_PARTS
    286,  # UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
    319,  # UNKNOWN_STATUS_OF_INSERT
}
# An INSERT refused with these codes was refused before any data was read.
_INSERT_REFUSED_CODES = {202, 203}
# The connection is gone or out of step with the server; the client is thrown away.
_CONNECTION_ERRORS = (
    errors.NetworkError,
    errors.SocketTimeoutError,
    errors.UnexpectedPacketFromServerError,
    errors.UnknownPacketFromServerError,
    EOFError,
    OSError,
)
_CODE_NAMES = {v: k for k, v in vars(errors.ErrorCodes).items() if isinstance(v, int)}


def quote_identifier(name: str) -> str:
    """Backquote an identifier for ClickHouse SQL."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect, parsed from ``clickhouse[s]://user:password@host:port/db``."""

    host: str
    port: int
    user: str
    password: str
    database: str
    secure: bool
    verify: bool = True
    ca_certs: str | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_url(url: str, database: str | None = None) -> Endpoint:
    """Parse the server URL; raise ConfigError naming storage.clickhouse.url if it is bad."""

    def bad(reason: str) -> ConfigError:
        shown = re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)  # never echo a password
        return ConfigError(
            f"storage.clickhouse.url={shown!r} is invalid: {reason} "
            "(expected clickhouse://user:password@host:9000/database, or clickhouses:// for TLS)"
        )

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(str(exc)) from exc
    if parts.scheme not in _DEFAULT_PORTS:
        raise bad(f"unknown scheme {parts.scheme!r}")
    if not parts.hostname:
        raise bad("no host")
    db = database or unquote(parts.path.lstrip("/")) or "gob"
    if not _IDENTIFIER.fullmatch(db):
        raise bad(f"database {db!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(options) - _URL_OPTIONS
    if unknown:
        raise bad(f"unknown option(s) {sorted(unknown)}; known: {sorted(_URL_OPTIONS)}")
    return Endpoint(
        host=parts.hostname,
        port=port or _DEFAULT_PORTS[parts.scheme],
        user=unquote(parts.username or "default"),
        password=unquote(parts.password or ""),
        database=db,
        secure=parts.scheme == "clickhouses",
        verify=options.get("verify", "true").lower() not in ("0", "false", "no"),
        ca_certs=options.get("ca_certs"),
    )


def create_database_sql(database: str, cluster: str = "") -> str:
    """The DDL that start() runs: the database, on every node of ``cluster`` if set."""
    on_cluster = f" ON CLUSTER {quote_identifier(cluster)}" if cluster else ""
    return f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}{on_cluster}"


def bind_params(params: Params | None) -> dict[str, Any] | None:
    """Check parameter values and shape them for clickhouse-driver's server-side binding."""
    if params is None:
        return None

    def conv(name: str, value: Any) -> Any:
        if isinstance(value, bool):
            return int(value)  # "1"/"0" parse as both Bool and UInt8
        if isinstance(value, str | int | float):
            return value
        if isinstance(value, list | tuple):
            return [conv(name, v) for v in value]  # a tuple would render as a Tuple
        raise StorageError(
            f"query parameter {name!r} has unsupported type {type(value).__name__}: "
            "use str, int, float, bool or a list of those (UInt128 as int)",
            retryable=False,
        )

    return {name: conv(name, value) for name, value in params.items()}


#: Streamed rows per Arrow batch, and batches read ahead of a slow reader.
_STREAM_BATCH_ROWS = 8192
_STREAM_BUFFER_BATCHES = 4
#: Seconds past max_execution_time a stream may take to be read before it is cancelled.
_STREAM_GRACE = 5.0


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _rows_to_batch(rows: list[Any], types: list[tuple[str, str]], tz: str) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(types)
    arrays = [column_to_arrow(list(values), spec, tz)
              for values, (_, spec) in zip(columns, types, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, names=[name for name, _ in types])


def _server_message(exc: errors.ServerException) -> str:
    text = str(exc.message).split("Stack trace:", 1)[0]
    text = text.split(", e.what() = ", 1)[0]  # 18.x appends the C++ exception class
    return text.replace("DB::Exception: ", "").strip().rstrip(".")


class _Progress:
    """How far one attempt got: an INSERT whose data may have left is not re-sent."""

    def __init__(self) -> None:
        self.data_sent = False


class _ClientPool:
    """At most ``size`` clients, created on first need; each serves one call at a time."""

    def __init__(self, factory: Callable[[], Client], size: int) -> None:
        self._factory = factory
        self.size = size
        self.created = 0
        self._idle: asyncio.Queue[Client | None] = asyncio.Queue()
        self._closed = False

    async def acquire(self) -> Client:
        if self._closed:
            raise StorageError("ClickHouse storage is closed", retryable=False)
        if self._idle.empty() and self.created < self.size:
            self.created += 1
            return self._factory()
        client = await self._idle.get()
        if client is None:  # close() woke the waiters
            self._idle.put_nowait(None)
            raise StorageError("ClickHouse storage is closed", retryable=False)
        return client

    def release(self, client: Client, *, broken: bool = False) -> None:
        """Return a client; a broken one is disconnected and replaced by a fresh one."""
        if broken or self._closed:
            client.disconnect()
            if self._closed:
                return
            client = self._factory()
        self._idle.put_nowait(client)

    def close(self) -> None:
        self._closed = True
        while not self._idle.empty():
            client = self._idle.get_nowait()
            if client is not None:
                client.disconnect()
        self._idle.put_nowait(None)


class ClickHouseStorage(Storage):
    """Storage on a ClickHouse server (or cluster) through clickhouse-driver."""

    engine = "clickhouse"

    def __init__(
        self,
        url: str,
        *,
        cluster: str = "",
        pool_size: int = 4,
        connect_timeout: float = 5.0,
        send_receive_timeout: float = 60.0,
        max_retries: int = 3,
        retry_backoff: float = 0.2,
        database: str | None = None,
    ) -> None:
        self.endpoint = parse_url(url, database)
        self.database = self.endpoint.database
        if cluster and not _CLUSTER.fullmatch(cluster):
            raise ConfigError(f"storage.clickhouse.cluster={cluster!r} is not a cluster name")
        self.cluster = cluster
        if pool_size < 1:
            raise ConfigError(f"storage.clickhouse.pool_size={pool_size} must be at least 1")
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.send_receive_timeout = send_receive_timeout
        self.max_retries = max(0, max_retries)
        self.retry_backoff = retry_backoff
        #: "major.minor.patch" of the server, known after start().
        self.server_version = ""
        self._pool = _ClientPool(self._new_client, pool_size)
        self._executor = ThreadPoolExecutor(pool_size, thread_name_prefix="gob-clickhouse")
        self._table_columns: dict[str, dict[str, str]] = {}

    @property
    def connections(self) -> int:
        """Clients created so far (each holds at most one connection); never above pool_size."""
        return self._pool.created

    def _new_client(self, database: str | None = None) -> Client:
        ep = self.endpoint
        return Client(
            ep.host,
            port=ep.port,
            database=database or ep.database,
            user=ep.user,
            password=ep.password,
            secure=ep.secure,
            verify=ep.verify,
            ca_certs=ep.ca_certs,
            client_name="gob-metrics",
            connect_timeout=self.connect_timeout,
            send_receive_timeout=self.send_receive_timeout,
            # The driver pings a pooled connection before each query; a dead server
            # must not hold that ping longer than a connect would wait.
            sync_request_timeout=self.connect_timeout,
            settings={"server_side_params": True, "strings_as_bytes": True},
        )

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Create the database if missing (on the cluster if set), then check it answers."""
        # The pooled clients name the database when they connect, which fails while it
        # does not exist: the DDL goes through a client on the "default" database.
        bootstrap = _ClientPool(lambda: self._new_client("default"), 1)
        try:
            sql = create_database_sql(self.database, self.cluster)
            await self._call(f"start: {sql}", self._execute_sync, sql, None, pool=bootstrap)
        finally:
            bootstrap.close()
        self.server_version, revision = await self._call("connectivity check", self._version_sync)
        if revision < MIN_REVISION_WITH_PARAMETERS:
            log.warning(
                "ClickHouse %s at %s cannot bind query parameters (needs 22.8 or newer): "
                "every parameterised query will be refused",
                self.server_version,
                self.endpoint.address,
            )
        log.info(
            "ClickHouse %s at %s, database %s%s",
            self.server_version,
            self.endpoint.address,
            self.database,
            f" on cluster {self.cluster}" if self.cluster else "",
        )

    async def close(self) -> None:
        """Disconnect idle clients; busy ones are disconnected when their call returns."""
        self._pool.close()
        self._executor.shutdown(wait=False)

    # -- Storage ---------------------------------------------------------------------

    async def execute(self, sql: str, params: Params | None = None) -> None:
        await self._call("statement", self._execute_sync, sql, bind_params(params))

    async def query(self, sql: str, params: Params | None = None) -> pa.Table:
        return await self._call("query", self._query_sync, sql, bind_params(params))

    async def insert(self, table: str, data: pa.Table) -> None:
        if not _IDENTIFIER.fullmatch(table):
            raise StorageError(f"insert: {table!r} is not a table name", retryable=False)
        if data.num_rows == 0:
            return
        try:
            await self._call(f"insert into {self.database}.{table}", self._insert_sync, table, data)
        except StorageError:
            self._table_columns.pop(table, None)  # the table may have changed: describe again
            raise

    @contextlib.asynccontextmanager
    async def query_stream(
        self, sql: str, params: Params | None = None, settings: Settings | None = None
    ) -> AsyncIterator[QueryResult]:
        """Stream a SELECT on one pooled client: the settings travel with the query, a pool
        thread reads its blocks (execute_iter) and hands them over as Arrow batches.

        Not retried: a stream that failed may have delivered rows already. A client whose
        stream did not end cleanly is disconnected, as it may still hold unread blocks.
        """
        bound = bind_params(params)
        client = await self._pool.acquire()
        pipe = stream.Pipe(asyncio.get_running_loop(), _STREAM_BUFFER_BATCHES,
                           stream.deadline(settings, _STREAM_GRACE, self.send_receive_timeout))
        done = {"clean": False}
        producer = self._executor.submit(self._stream_sync, client, sql, bound,
                                         dict(settings or {}), pipe, done)
        loop = asyncio.get_running_loop()

        def release(_: object) -> None:
            broken = not done["clean"]
            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(lambda: self._pool.release(client, broken=broken))

        producer.add_done_callback(release)
        try:
            columns = await stream.first_item(pipe)
            yield QueryResult(columns, stream.batches(pipe))
        finally:
            pipe.close()

    def _stream_sync(self, client: Client, sql: str, params: dict[str, Any] | None,
                     settings: dict[str, Any], pipe: stream.Pipe, done: dict[str, bool]
                     ) -> None:
        try:
            self._check_params(client, params)
            rows = iter(client.execute_iter(sql, params, with_column_types=True,
                                            settings=settings))
            types = [(_text(name), _text(spec)) for name, spec in next(rows)]
            if not pipe.put(stream.COLUMNS, types):
                return
            tz = client.connection.server_info.timezone or "UTC"
            chunk: list[Any] = []
            for row in rows:
                chunk.append(row)
                if len(chunk) >= _STREAM_BATCH_ROWS:
                    if not pipe.put(stream.BATCH, _rows_to_batch(chunk, types, tz)):
                        return
                    chunk = []
            if chunk and not pipe.put(stream.BATCH, _rows_to_batch(chunk, types, tz)):
                return
            done["clean"] = True
            pipe.put(stream.END)
        except Exception as exc:
            pipe.put(stream.ERROR, self._translate(exc, "query"))

    # -- one call, retried -----------------------------------------------------------

    async def _call(
        self, what: str, fn: Callable[..., T], *args: Any, pool: _ClientPool | None = None
    ) -> T:
        pool = pool or self._pool
        attempt = 0
        while True:
            client = await pool.acquire()
            progress = _Progress()
            try:
                result = await self._in_thread(pool, client, fn, progress, *args)
            except Exception as exc:
                error = self._translate(exc, what)
                pool.release(client, broken=isinstance(exc, _CONNECTION_ERRORS))
                if not self._resend(exc, progress) or attempt >= self.max_retries:
                    if attempt:
                        error.args = (f"{error.args[0]} (after {attempt + 1} attempts)",)
                    if progress.data_sent and error.retryable:
                        error.args = (f"{error.args[0]}; the rows may or may not be written",)
                    if error is exc:
                        raise
                    raise error from exc
                delay = min(self.retry_backoff * 2**attempt, 5.0)
                attempt += 1
                log.warning("%s; retry %d of %d in %.2fs", error, attempt, self.max_retries, delay)
                await asyncio.sleep(delay)
                continue
            pool.release(client)
            return result

    async def _in_thread(
        self, pool: _ClientPool, client: Client, fn: Callable[..., T], *args: Any
    ) -> T:
        future = self._executor.submit(fn, client, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # The thread may still be using the client: it is replaced once that ends.
            loop = asyncio.get_running_loop()

            def replace(_: object) -> None:
                try:
                    loop.call_soon_threadsafe(lambda: pool.release(client, broken=True))
                except RuntimeError:  # the loop is gone
                    client.disconnect()

            future.add_done_callback(replace)
            raise

    @staticmethod
    def _resend(exc: Exception, progress: _Progress) -> bool:
        if isinstance(exc, errors.ServerException):
            if progress.data_sent:
                return exc.code in _INSERT_REFUSED_CODES
            return exc.code in _RESENT_CODES
        return isinstance(exc, _CONNECTION_ERRORS) and not progress.data_sent

    def _translate(self, exc: Exception, what: str) -> StorageError:
        where = f"ClickHouse at {self.endpoint.address}"
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, errors.ServerException):
            code = int(exc.code) if exc.code is not None else None
            name = _CODE_NAMES.get(code or 0, "")
            retryable = code in _RESENT_CODES or code in _OVERLOAD_CODES
            return StorageError(
                f"{what} failed on {where}: code {code} {name}: {_server_message(exc)}",
                retryable=retryable,
                code=code,
            )
        if isinstance(exc, _CONNECTION_ERRORS):
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, EOFError):
                reason = f"the server closed the connection ({reason})"
            return StorageError(f"{what} failed: {where} unreachable: {reason}", retryable=True)
        code = getattr(exc, "code", None)
        return StorageError(
            f"{what} failed on {where}: {type(exc).__name__}: {exc}",
            retryable=False,
            code=code if isinstance(code, int) else None,
        )

    # -- blocking bodies, run in the thread pool -------------------------------------

    def _check_params(self, client: Client, params: dict[str, Any] | None) -> None:
        if not params:
            return
        connection = client.connection
        if not connection.connected:
            connection.connect()  # not force_connect(): that marks a query as running
        info = connection.server_info
        if info.used_revision < MIN_REVISION_WITH_PARAMETERS:
            raise StorageError(
                f"ClickHouse {info.version_major}.{info.version_minor}.{info.version_patch} "
                f"at {self.endpoint.address} cannot bind query parameters (protocol revision "
                f"{info.used_revision} < {MIN_REVISION_WITH_PARAMETERS}, needs ClickHouse 22.8 "
                "or newer); the query was not sent, and values are never formatted into SQL",
                retryable=False,
            )

    def _execute_sync(
        self, client: Client, progress: _Progress, sql: str, params: dict[str, Any] | None
    ) -> None:
        self._check_params(client, params)
        client.execute(sql, params)

    def _query_sync(
        self, client: Client, progress: _Progress, sql: str, params: dict[str, Any] | None
    ) -> pa.Table:
        self._check_params(client, params)
        columns, types = client.execute(sql, params, with_column_types=True, columnar=True)
        tz = client.connection.server_info.timezone or "UTC"
        if not columns:
            columns = [()] * len(types)
        arrays = [
            column_to_arrow(values, spec, tz)
            for values, (_, spec) in zip(columns, types, strict=True)
        ]
        return pa.Table.from_arrays(arrays, names=[name for name, _ in types])

    def _version_sync(self, client: Client, progress: _Progress) -> tuple[str, int]:
        client.execute("SELECT 1")
        info = client.connection.server_info
        version = f"{info.version_major}.{info.version_minor}.{info.version_patch}"
        return version, info.used_revision

    def _describe(self, client: Client, table: str) -> dict[str, str]:
        columns = self._table_columns.get(table)
        if columns is None:
            # DESCRIBE rather than system.columns with parameters: servers before 22.8
            # cannot bind them, and the name is checked as an identifier anyway.
            sql = f"DESCRIBE TABLE {quote_identifier(self.database)}.{quote_identifier(table)}"
            rows = client.execute(sql)
            columns = {row[0].decode(): row[1].decode() for row in rows}
            self._table_columns[table] = columns
        return columns

    def _insert_sync(self, client: Client, progress: _Progress, table: str, data: pa.Table) -> None:
        types = self._describe(client, table)
        unknown = [name for name in data.column_names if name not in types]
        if unknown:
            raise StorageError(
                f"insert into {self.database}.{table}: no column(s) {', '.join(unknown)} "
                f"(the table has {', '.join(types)})",
                retryable=False,
            )
        columns = []
        for name, column in zip(data.column_names, data.columns, strict=True):
            try:
                columns.append(arrow_to_column(column, types[name]))
            except (TypeError, ValueError, OverflowError, pa.ArrowException) as exc:
                raise StorageError(
                    f"insert into {self.database}.{table}: column {name} of Arrow type "
                    f"{column.type} does not fit ClickHouse type {types[name]}: {exc}",
                    retryable=False,
                ) from exc
        names = ", ".join(quote_identifier(name) for name in data.column_names)
        target = f"{quote_identifier(self.database)}.{quote_identifier(table)}"
        # Reconnect now if needed, so that a failure past this line means the data may
        # have left and the insert is not re-sent.
        connection = client.connection
        if not connection.connected or not connection.ping():
            connection.connect()
        progress.data_sent = True
        client.execute(f"INSERT INTO {target} ({names}) VALUES", columns, columnar=True)
