"""ClickHouseStorage: URL and type conversions as tables, then the transport against a real
clickhouse-server (Debian's 18.16), including restarts, a killed and a frozen server.

18.16 has no UInt128, Map, DateTime64 nor server-side query parameters: those conversions
are covered by the pure tables here, and against a newer server by the test that runs only
when GOB_TEST_CLICKHOUSE_URL names one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import struct
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from clickhouse_driver import Client, errors

from gob_metrics.errors import ConfigError
from gob_metrics.storage.base import StorageError
from gob_metrics.storage.clickhouse import (
    ClickHouseStorage,
    _Progress,
    bind_params,
    create_database_sql,
    parse_url,
)
from gob_metrics.storage.clickhouse_arrow import arrow_to_column, column_to_arrow
from tests.services.clickhouse_server import ClickHouseServer, clickhouse_server
from tests.services.proc import free_port, wait_for

integration = pytest.mark.integration
NEWER_URL = os.environ.get("GOB_TEST_CLICKHOUSE_URL", "")
STALE_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]  # Prometheus


def bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


# -- URL, DDL and parameters ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("clickhouse://u:p@h:9001/db", ("h", 9001, "u", "p", "db", False)),
        ("clickhouse://h", ("h", 9000, "default", "", "gob", False)),
        ("clickhouse://h/", ("h", 9000, "default", "", "gob", False)),
        ("clickhouses://h/db", ("h", 9440, "default", "", "db", True)),
        ("clickhouse://u:p%40ss@[::1]:9000/x", ("::1", 9000, "u", "p@ss", "x", False)),
    ],
    ids=["full", "defaults", "empty-path", "tls", "ipv6-quoted-password"],
)
def test_parse_url(url: str, expected: tuple[Any, ...]) -> None:
    ep = parse_url(url)
    assert (ep.host, ep.port, ep.user, ep.password, ep.database, ep.secure) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://h/db", "unknown scheme"),
        ("clickhouse:///db", "no host"),
        ("clickhouse://h/bad-name", "not an identifier"),
        ("clickhouse://h/db?foo=1", "unknown option"),
        ("clickhouse://u:secret@h:port/db", "invalid"),
    ],
    ids=["scheme", "host", "database", "option", "port"],
)
def test_parse_url_rejects(url: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        parse_url(url)
    assert "storage.clickhouse.url" in str(info.value)
    assert "secret" not in str(info.value)


def test_url_options_and_database_override() -> None:
    assert parse_url("clickhouses://h/db?verify=false").verify is False
    assert ClickHouseStorage("clickhouse://h/db", database="other").database == "other"
    with pytest.raises(ConfigError, match="pool_size"):
        ClickHouseStorage("clickhouse://h/db", pool_size=0)


@pytest.mark.parametrize(
    ("database", "cluster", "sql"),
    [
        ("gob", "", "CREATE DATABASE IF NOT EXISTS `gob`"),
        ("gob", "main", "CREATE DATABASE IF NOT EXISTS `gob` ON CLUSTER `main`"),
        ("gob", "c-1.x", "CREATE DATABASE IF NOT EXISTS `gob` ON CLUSTER `c-1.x`"),
    ],
    ids=["single", "cluster", "cluster-punctuation"],
)
def test_create_database_sql(database: str, cluster: str, sql: str) -> None:
    assert create_database_sql(database, cluster) == sql


def test_bind_params() -> None:
    assert bind_params(None) is None
    assert bind_params({"b": True, "t": ("a", "b"), "n": [[1, False]], "s": "x", "f": 1.5}) == {
        "b": 1,
        "t": ["a", "b"],
        "n": [[1, 0]],
        "s": "x",
        "f": 1.5,
    }
    with pytest.raises(StorageError, match="'id' has unsupported type bytes") as info:
        bind_params({"id": b"\x00" * 16})
    assert info.value.retryable is False


def server_error(code: int) -> errors.ServerException:
    return errors.ServerException("DB::Exception: x. Stack trace:\n\n0. f()", code)


@pytest.mark.parametrize(
    ("exc", "data_sent", "resend", "retryable", "code"),
    [
        (errors.NetworkError("Connection refused (h:1)"), False, True, True, None),
        (errors.SocketTimeoutError("timed out"), False, True, True, None),
        (EOFError("Unexpected EOF while reading bytes"), False, True, True, None),
        (errors.NetworkError("reset"), True, False, True, None),
        (EOFError("Unexpected EOF"), True, False, True, None),
        (server_error(202), False, True, True, 202),
        (server_error(202), True, True, True, 202),
        (server_error(999), False, True, True, 999),
        (server_error(999), True, False, True, 999),
        (server_error(252), False, False, True, 252),
        (server_error(159), False, False, True, 159),
        (server_error(62), False, False, False, 62),
        (errors.TypeMismatchError("Type mismatch"), True, False, False, 53),
        (ValueError("odd"), False, False, False, None),
    ],
    ids=[
        "refused", "timeout", "eof", "insert-reset", "insert-eof", "busy", "insert-busy",
        "keeper", "insert-keeper", "too-many-parts", "timeout-exceeded", "syntax",
        "driver-type-mismatch", "other",
    ],
)  # fmt: skip
def test_failure_classification(
    exc: Exception, data_sent: bool, resend: bool, retryable: bool, code: int | None
) -> None:
    """Which failures are re-sent here, and which the caller may retry."""
    s = ClickHouseStorage("clickhouse://h:1/db")
    progress = _Progress()
    progress.data_sent = data_sent
    assert ClickHouseStorage._resend(exc, progress) is resend
    err = s._translate(exc, "query")
    assert (err.retryable, err.code) == (retryable, code)
    assert "h:1" in str(err) and "Stack trace" not in str(err)


# -- conversions, both directions, as chdb maps types ----------------------------------------

UTC_DT = datetime(2024, 1, 2, 3, 4, 5, 678000)
TS_MS = 1704164645678


@pytest.mark.parametrize(
    ("values", "spec", "expected"),
    [
        ([258, None], "Nullable(UInt128)",
         pa.array([(258).to_bytes(16, "little"), None], pa.binary(16))),
        ([-1], "Int128", pa.array([b"\xff" * 16], pa.binary(16))),
        ([1], "UInt256", pa.array([b"\x01" + b"\x00" * 31], pa.binary(32))),
        ([{b"job": b"api"}, {}], "Map(String, String)",
         pa.array([[("job", "api")], []], pa.map_(pa.string(), pa.string()))),
        ([UTC_DT], "DateTime64(3)", pa.array([TS_MS], pa.timestamp("ms", tz="UTC"))),
        ([UTC_DT], "DateTime64(6, 'Asia/Tokyo')",
         pa.array([TS_MS * 1000 - 9 * 3600 * 10**6], pa.timestamp("us", tz="Asia/Tokyo"))),
        ([datetime(1970, 1, 1, 0, 0, 5)], "DateTime", pa.array([5], pa.uint32())),
        ([b"x", None], "LowCardinality(Nullable(String))", pa.array(["x", None])),
        ([b"\xff"], "String", pa.array([b"\xff"], pa.binary())),
        ([b"ab\x00\x00"], "FixedString(4)", pa.array([b"ab\x00\x00"], pa.binary(4))),
        ([[[1], []], []], "Array(Array(UInt8))",
         pa.array([[[1], []], []], pa.list_(pa.list_(pa.uint8())))),
        (["b"], "Enum8('a' = 1, 'b' = -2)", pa.array([-2], pa.int8())),
        ([(1, b"x")], "Tuple(a UInt8, b String)",
         pa.array([{"a": 1, "b": "x"}], pa.struct([("a", pa.uint8()), ("b", pa.string())]))),
        ([Decimal("1.50")], "Decimal(9, 2)", pa.array([Decimal("1.50")], pa.decimal128(9, 2))),
        ([STALE_NAN, -0.0], "Float64", pa.array([STALE_NAN, -0.0], pa.float64())),
    ],
    ids=[
        "uint128", "int128", "uint256", "map", "datetime64-server-tz", "datetime64-column-tz",
        "datetime", "lowcardinality-nullable", "string-not-utf8", "fixedstring", "nested-array",
        "enum", "named-tuple", "decimal", "float-bits",
    ],
)  # fmt: skip
def test_column_to_arrow(values: list[Any], spec: str, expected: pa.Array) -> None:
    got = column_to_arrow(values, spec, "UTC")
    assert got.type == expected.type
    if spec == "Float64":  # NaN equals nothing: compare the bits
        assert [bits(x) for x in got.to_pylist()] == [bits(x) for x in expected.to_pylist()]
    else:
        assert got.equals(expected), got


def test_column_to_arrow_uuid_and_unknown() -> None:
    u = uuid.UUID(int=1)
    got = column_to_arrow([u], "UUID")
    assert got.type == pa.uuid() and got.storage.to_pylist() == [u.bytes]
    with pytest.raises(TypeError, match="no Arrow mapping for ClickHouse type IPv4"):
        column_to_arrow([1], "IPv4")


@pytest.mark.parametrize(
    ("arr", "spec", "expected"),
    [
        (pa.array([(2**127 + 5).to_bytes(16, "little"), None], pa.binary(16)),
         "Nullable(UInt128)", [2**127 + 5, None]),
        (pa.array([b"\xfe" + b"\xff" * 15], pa.binary(16)), "Int128", [-2]),
        (pa.array([[("a", "1")], [("b", "2"), ("c", "3")], None, [("d", "4")]],
                  pa.map_(pa.string(), pa.string())).slice(1),
         "Map(String, String)", [{b"b": b"2", b"c": b"3"}, {}, {b"d": b"4"}]),
        (pa.array([TS_MS, None], pa.timestamp("ms")), "Nullable(DateTime64(3))", [TS_MS, None]),
        (pa.array([TS_MS], pa.timestamp("ms", tz="UTC")), "DateTime64(6)", [TS_MS * 1000]),
        (pa.array([-1], pa.timestamp("ns")), "DateTime", [-1]),
        (pa.array([5_500_000_000], pa.timestamp("ns")), "DateTime", [5]),
        (pa.array([[" a", "é"], [], None]).slice(1), "Array(String)", [[], []]),
        (pa.chunked_array([["x"], ["y"]]), "String", [b"x", b"y"]),
        (pa.array(["x", "y", "x"]).dictionary_encode(), "LowCardinality(String)",
         [b"x", b"y", b"x"]),
        (pa.array([{"1": 1, "2": "a"}]), "Tuple(UInt8, String)", [(1, b"a")]),
        (pa.array([STALE_NAN]), "Float64", [STALE_NAN]),
    ],
    ids=[
        "uint128", "int128", "sliced-map", "nullable-datetime64", "rescale-up", "floor-seconds",
        "datetime-seconds", "sliced-list", "chunked", "dictionary", "struct", "nan",
    ],
)  # fmt: skip
def test_arrow_to_column(arr: pa.Array, spec: str, expected: list[Any]) -> None:
    got = arrow_to_column(arr, spec)
    if spec == "Float64":
        assert [bits(x) for x in got] == [bits(x) for x in expected]
    else:
        assert got == expected


def test_arrow_to_column_rejects_mismatch() -> None:
    with pytest.raises(TypeError, match="fixed_size_binary"):
        arrow_to_column(pa.array([b"\x00" * 8], pa.binary(8)), "UInt128")
    with pytest.raises(TypeError, match="needs an Arrow map"):
        arrow_to_column(pa.array(["x"]), "Map(String, String)")


# -- against clickhouse-server 18.16 ---------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    """One server for the tests that leave it running as they found it."""
    with clickhouse_server(tmp_path_factory.mktemp("clickhouse")) as srv:
        yield srv


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ClickHouseServer]:
    """A server of the test's own, for tests that stop, kill or freeze it."""
    with clickhouse_server(tmp_path / "clickhouse") as srv:
        yield srv


@pytest.fixture
async def make_storage() -> AsyncIterator[Callable[..., ClickHouseStorage]]:
    """Build storages on a fresh database each; all are closed after the test."""
    made: list[ClickHouseStorage] = []

    def make(srv: ClickHouseServer, **kwargs: Any) -> ClickHouseStorage:
        kwargs.setdefault("max_retries", 1)
        kwargs.setdefault("retry_backoff", 0.02)
        db = f"gob_test_{uuid.uuid4().hex[:10]}"
        storage = ClickHouseStorage(srv.url(db), **kwargs)
        made.append(storage)
        return storage

    yield make
    for storage in made:
        await storage.close()


@pytest.fixture
async def storage(
    server: ClickHouseServer, make_storage: Callable[..., ClickHouseStorage]
) -> ClickHouseStorage:
    s = make_storage(server)
    await s.start()
    return s


def side_client(srv: ClickHouseServer) -> Client:
    """A plain driver client for checks the storage under test must not do itself."""
    return Client("127.0.0.1", port=srv.tcp_port, connect_timeout=2, send_receive_timeout=5)


async def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    await asyncio.to_thread(wait_for, check, timeout, what, 0.02)


@integration
async def test_start_creates_database_and_pings(
    server: ClickHouseServer, make_storage: Callable[..., ClickHouseStorage]
) -> None:
    s = make_storage(server)
    side = side_client(server)
    assert side.execute(f"SELECT count() FROM system.databases WHERE name = '{s.database}'") == [
        (0,)
    ]
    await s.start()
    await s.start()  # idempotent
    try:
        assert side.execute(
            f"SELECT count() FROM system.databases WHERE name = '{s.database}'"
        ) == [(1,)]
        assert s.server_version.startswith("18.16.")
        assert s.engine == "clickhouse" and s.cluster == ""
        await s.ping()
        table = await s.query("SELECT currentDatabase() AS db, 1 AS ok")
        assert table.to_pylist() == [{"db": s.database, "ok": 1}]
    finally:
        await s.close()
        await s.close()  # safe twice
    with pytest.raises(StorageError, match="closed") as info:
        await s.query("SELECT 1")
    assert info.value.retryable is False


@integration
async def test_insert_select_round_trip(storage: ClickHouseStorage) -> None:
    await storage.execute(
        f"CREATE TABLE {storage.database}.rt (u UInt64, i Int64, f Float64, s String, "
        "fs FixedString(16), tags Array(String), n Nullable(String), t DateTime) "
        "ENGINE = MergeTree ORDER BY u"
    )
    floats = [1.5, STALE_NAN, math.nan, math.inf, -math.inf, -0.0]
    rows = len(floats)
    data = pa.table(
        {
            # Not in table order, and only some columns' types are Arrow's defaults.
            "t": pa.array([1_700_000_000_123 + i for i in range(rows)], pa.timestamp("ms")),
            "u": pa.array([2**64 - 1 - i for i in range(rows)], pa.uint64()),
            "i": pa.array([-(2**63) + i for i in range(rows)], pa.int64()),
            "f": pa.array(floats, pa.float64()),
            "s": ["", "a'b\\c", "é\n", "x" * 1000, "\x00", "z"],
            "fs": pa.array([bytes([i]) * 16 for i in range(rows)], pa.binary(16)),
            "tags": [["a"], [], ["b", "c"], [""], ["é"], ["x", "y", "z"]],
            "n": ["x", None, "", None, "y", None],
        }
    )
    await storage.insert("rt", data)
    got = await storage.query(
        f"SELECT u, i, f, s, fs, tags, n, t FROM {storage.database}.rt ORDER BY u DESC"
    )
    assert got.schema.names == ["u", "i", "f", "s", "fs", "tags", "n", "t"]
    assert got.schema.types == [
        pa.uint64(), pa.int64(), pa.float64(), pa.string(), pa.binary(16),
        pa.list_(pa.string()), pa.string(), pa.uint32(),
    ]  # fmt: skip
    for name in ["u", "i", "s", "fs", "tags", "n"]:
        assert got.column(name).to_pylist() == data.column(name).to_pylist(), name
    assert [bits(x) for x in got.column("f").to_pylist()] == [bits(x) for x in floats]
    assert got.column("t").to_pylist() == [1_700_000_000 + (123 + i) // 1000 for i in range(rows)]

    empty = await storage.query(f"SELECT u, s FROM {storage.database}.rt WHERE u = 0")
    assert empty.num_rows == 0 and empty.schema.types == [pa.uint64(), pa.string()]
    await storage.insert("rt", data.slice(0, 0))  # nothing to write, nothing sent


@integration
async def test_pool_bounds_concurrency(
    server: ClickHouseServer, make_storage: Callable[..., ClickHouseStorage]
) -> None:
    s = make_storage(server, pool_size=4)
    await s.start()
    assert s.connections == 1
    # Each query counts the probe queries running when it starts (itself included).
    sql = (
        "SELECT sleep(0.05) AS pool_probe, (SELECT count() FROM system.processes "
        "WHERE query LIKE '%pool_probe%') AS running"
    )
    results = await asyncio.gather(*(s.query(sql) for _ in range(20)))
    running = [t.column("running")[0].as_py() for t in results]
    assert len(results) == 20
    assert max(running) <= 4
    assert s.connections == 4


@integration
@pytest.mark.parametrize(
    ("sql", "code", "text"),
    [
        ("SELEC 1", 62, "Syntax error"),
        ("SELECT * FROM {db}.nope", 60, "doesn't exist"),
        ("SELECT * FROM nodb_x.nope", 81, "Database nodb_x doesn't exist"),
        ("SELECT nosuch(1)", 46, "Unknown function nosuch"),
        ("SELECT 1 + 'a'", 43, "Illegal types"),
    ],
    ids=["syntax", "unknown-table", "unknown-database", "unknown-function", "type"],
)
async def test_server_errors_are_not_retryable(
    storage: ClickHouseStorage, sql: str, code: int, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(StorageError) as info:
        await storage.query(sql.format(db=storage.database))
    err = info.value
    assert (err.retryable, err.code) == (False, code)
    assert text in str(err) and storage.endpoint.address in str(err)
    assert "Stack trace" not in str(err)
    assert isinstance(err.__cause__, Exception)
    assert not [r for r in caplog.records if "retry" in r.getMessage()]
    assert (await storage.query("SELECT 2 AS x")).to_pylist() == [{"x": 2}]  # pool unharmed


@integration
async def test_insert_errors_are_not_retryable(storage: ClickHouseStorage) -> None:
    await storage.execute(
        f"CREATE TABLE {storage.database}.t (a UInt64) ENGINE = MergeTree ORDER BY a"
    )
    cases = [
        ("t", pa.table({"b": [1]}), None, "no column(s) b (the table has a)"),
        ("t", pa.table({"a": ["x"]}), 53, "Type mismatch"),
        ("nope", pa.table({"a": [1]}), 60, "doesn't exist"),
        ("x; DROP TABLE t", pa.table({"a": [1]}), None, "not a table name"),
    ]
    for table, data, code, text in cases:
        with pytest.raises(StorageError, match=text.replace("(", r"\(").replace(")", r"\)")) as i:
            await storage.insert(table, data)
        assert (i.value.retryable, i.value.code) == (False, code), table
    await storage.insert("t", pa.table({"a": pa.array([7], pa.uint64())}))
    assert (await storage.query(f"SELECT a FROM {storage.database}.t")).to_pylist() == [{"a": 7}]


@integration
async def test_connection_refused_is_retryable(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gob_metrics.storage.clickhouse")
    port = free_port()
    s = ClickHouseStorage(
        f"clickhouse://127.0.0.1:{port}/gob", max_retries=2, retry_backoff=0.01, connect_timeout=1
    )
    try:
        with pytest.raises(StorageError) as info:
            await s.start()
        err = info.value
        assert err.retryable is True and err.code is None
        assert f"127.0.0.1:{port}" in str(err) and "refused" in str(err)
        assert "after 3 attempts" in str(err)
        assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 2
        with pytest.raises(StorageError, match="unreachable"):
            await s.query("SELECT 1")
        assert s.connections <= s.pool_size
    finally:
        await s.close()


@integration
async def test_parameters_refused_by_old_server(storage: ClickHouseStorage) -> None:
    for call in (storage.query, storage.execute):
        with pytest.raises(StorageError, match="cannot bind query parameters") as info:
            await call("SELECT {x:UInt8} AS x", {"x": 1})
        assert info.value.retryable is False
        assert "revision 54412 < 54459" in str(info.value)
    assert (await storage.query("SELECT 3 AS x")).to_pylist() == [{"x": 3}]


@integration
async def test_same_storage_works_after_restart(
    own_server: ClickHouseServer, make_storage: Callable[..., ClickHouseStorage]
) -> None:
    s = make_storage(own_server, pool_size=2)
    await s.start()
    await s.execute(f"CREATE TABLE {s.database}.t (a UInt64) ENGINE = MergeTree ORDER BY a")
    await s.insert("t", pa.table({"a": pa.array([1], pa.uint64())}))
    await asyncio.gather(s.ping(), s.ping())  # both pooled connections are open

    own_server.stop()
    own_server.start()

    await asyncio.gather(s.ping(), s.ping())  # both stale connections replaced
    await s.insert("t", pa.table({"a": pa.array([2], pa.uint64())}))
    got = await s.query(f"SELECT a FROM {s.database}.t ORDER BY a")
    assert got.column("a").to_pylist() == [1, 2]
    assert s.connections == 2


@integration
async def test_retries_until_server_is_back(
    own_server: ClickHouseServer,
    make_storage: Callable[..., ClickHouseStorage],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gob_metrics.storage.clickhouse")
    s = make_storage(own_server, max_retries=8, retry_backoff=0.05, connect_timeout=1)
    await s.start()
    own_server.stop()

    task = asyncio.create_task(s.query("SELECT 4 AS x"))
    await wait_until(
        lambda: any("retry 1 of 8" in r.getMessage() for r in caplog.records), "a first retry"
    )
    assert not task.done()
    own_server.start()
    assert (await asyncio.wait_for(task, 15)).to_pylist() == [{"x": 4}]


@integration
async def test_in_flight_query_fails_retryably_when_server_dies(
    own_server: ClickHouseServer, make_storage: Callable[..., ClickHouseStorage]
) -> None:
    s = make_storage(own_server, max_retries=1, retry_backoff=0.02, connect_timeout=1)
    await s.start()
    task = asyncio.create_task(s.query("SELECT count() AS inflight_probe FROM system.numbers"))
    side = side_client(own_server)
    probe = (
        "SELECT count() FROM system.processes WHERE query LIKE '%inflight_probe%' "
        "AND query NOT LIKE '%system.processes%'"
    )
    await wait_until(lambda: side.execute(probe) == [(1,)], "the query to be running")

    own_server.kill()
    with pytest.raises(StorageError) as info:
        await asyncio.wait_for(task, 10)
    assert info.value.retryable is True
    assert f"127.0.0.1:{own_server.tcp_port}" in str(info.value)

    own_server.start()
    await s.ping()


@integration
async def test_frozen_server_times_out_retryably(
    own_server: ClickHouseServer, make_storage: Callable[..., ClickHouseStorage]
) -> None:
    s = make_storage(own_server, max_retries=0, connect_timeout=0.5, send_receive_timeout=1)
    await s.start()
    own_server.freeze()
    try:
        with pytest.raises(StorageError) as info:
            await asyncio.wait_for(s.query("SELECT 1"), 10)
        assert info.value.retryable is True
        assert "unreachable" in str(info.value)
    finally:
        own_server.resume()
    await s.ping()


@integration
async def test_cancelled_call_returns_its_client_only_when_done(
    server: ClickHouseServer, make_storage: Callable[..., ClickHouseStorage]
) -> None:
    s = make_storage(server, pool_size=1)
    await s.start()
    task = asyncio.create_task(s.query("SELECT sleep(0.3) AS slow"))
    side = side_client(server)
    await wait_until(
        lambda: (
            side.execute(
                "SELECT count() FROM system.processes WHERE query LIKE '%AS slow%' "
                "AND query NOT LIKE '%system.processes%'"
            )
            == [(1,)]
        ),
        "the slow query to run",
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The only client is busy until the sleep ends: this waits for it, then succeeds.
    assert (await asyncio.wait_for(s.query("SELECT 5 AS x"), 10)).to_pylist() == [{"x": 5}]
    assert s.connections == 1


# -- against a newer server, when one is named -----------------------------------------------


@integration
@pytest.mark.skipif(not NEWER_URL, reason="GOB_TEST_CLICKHOUSE_URL names no ClickHouse >= 22.8")
async def test_newer_server_parameters_uint128_map_datetime64() -> None:
    db = f"gob_test_{uuid.uuid4().hex[:10]}"
    s = ClickHouseStorage(NEWER_URL, database=db)
    await s.start()
    try:
        tricky = "it's a \\ test\n\t'\"{x:String}"
        got = await s.query(
            "SELECT {s:String} AS s, {n:UInt64} AS n, {f:Float64} AS f, "
            "{a:Array(String)} AS a, {b:Bool} AS b, {big:UInt128} AS big",
            {"s": tricky, "n": 2**64 - 1, "f": 0.1, "a": ["x'y", ""], "b": True, "big": 2**100},
        )
        assert got.to_pylist() == [
            {"s": tricky, "n": 2**64 - 1, "f": 0.1, "a": ["x'y", ""], "b": True,
             "big": (2**100).to_bytes(16, "little")}
        ]  # fmt: skip

        await s.execute(
            f"CREATE TABLE {db}.t (id UInt128, labels Map(String, String), "
            "ts DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY id"
        )
        data = pa.table(
            {
                "id": pa.array([(2**127 + 1).to_bytes(16, "little"), bytes(16)], pa.binary(16)),
                "labels": pa.array(
                    [[("job", "api"), ("é", "")], []], pa.map_(pa.string(), pa.string())
                ),
                "ts": pa.array([TS_MS, 0], pa.timestamp("ms", tz="UTC")),
            }
        )
        await s.insert("t", data)
        back = await s.query(f"SELECT id, labels, ts FROM {db}.t ORDER BY id DESC")
        assert back.schema.types == [
            pa.binary(16), pa.map_(pa.string(), pa.string()), pa.timestamp("ms", tz="UTC"),
        ]  # fmt: skip
        assert back.to_pylist() == data.to_pylist()
        assert (
            await s.query(f"SELECT count() AS n FROM {db}.t WHERE id = {{id:UInt128}}",
                          {"id": 2**127 + 1})
        ).to_pylist() == [{"n": 1}]  # fmt: skip
    finally:
        await s.execute(f"DROP DATABASE IF EXISTS {db}")
        await s.close()
