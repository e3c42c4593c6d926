"""Storage.query_stream on both transports: column types first, then Arrow batches; limits
sent as settings; an early exit or a failure leaves the transport clean for the next call."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from gob_metrics.storage.base import Storage, StorageError
from gob_metrics.storage.embedded import EmbeddedStorage
from tests.services.clickhouse_server import clickhouse_server

_ROWS = 200_000


@pytest_asyncio.fixture(params=["embedded", pytest.param("clickhouse",
                                                          marks=pytest.mark.integration)])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    if request.param == "embedded":
        s: Storage = EmbeddedStorage(tmp_path / "data")
        await s.start()
        try:
            yield s
        finally:
            await s.close()
        return
    from gob_metrics.storage.clickhouse import ClickHouseStorage

    with clickhouse_server(tmp_path / "clickhouse") as srv:
        s = ClickHouseStorage(srv.url(f"gob_test_{uuid.uuid4().hex[:10]}"), pool_size=2,
                              max_retries=0)
        await s.start()
        try:
            yield s
        finally:
            await s.close()


async def test_streams_types_and_every_row(storage: Storage) -> None:
    sql = f"SELECT number AS n, toString(number) AS s FROM system.numbers LIMIT {_ROWS}"
    async with storage.query_stream(sql, settings={"max_result_rows": _ROWS,
                                                   "result_overflow_mode": "throw",
                                                   "readonly": 1}) as result:
        assert result.columns == [("n", "UInt64"), ("s", "String")]
        count, batches, last = 0, 0, None
        async for batch in result.batches:
            count += batch.num_rows
            batches += 1
            last = batch.to_pylist()[-1]
    assert count == _ROWS and batches > 1
    assert last == {"n": _ROWS - 1, "s": str(_ROWS - 1)}


async def test_limit_error_and_clean_afterwards(storage: Storage) -> None:
    sql = f"SELECT number FROM system.numbers LIMIT {_ROWS}"
    with pytest.raises(StorageError) as info:
        async with storage.query_stream(sql, settings={"max_result_rows": 1000,
                                                       "result_overflow_mode": "throw"}) as r:
            async for _ in r.batches:
                pass
    assert info.value.code == 396
    table = await storage.query("SELECT 'next' AS x")
    assert table.to_pylist() == [{"x": "next"}]


async def test_early_exit_frees_the_transport(storage: Storage) -> None:
    sql = f"SELECT number FROM system.numbers LIMIT {10 * _ROWS}"
    for _ in range(3):  # more often than the ClickHouse pool has clients
        async with storage.query_stream(sql) as result:
            async for _batch in result.batches:
                break
    table = await storage.query("SELECT 'next' AS x")
    assert table.to_pylist() == [{"x": "next"}]


async def test_failed_query_leaves_nothing_for_the_next(storage: Storage) -> None:
    # chdb 4.4 hands the output a failed query produced to the next query's result.
    if storage.engine != "embedded":
        pytest.skip("an embedded engine quirk (and 18.16 has no SETTINGS clause)")
    with pytest.raises(StorageError):
        await storage.query("SELECT 'leak' AS x, number FROM system.numbers LIMIT 200000 "
                            "SETTINGS max_result_rows = 100000, result_overflow_mode = 'throw',"
                            " max_block_size = 1000")
    table = await storage.query("SELECT 'next' AS x")
    assert table.to_pylist() == [{"x": "next"}]
