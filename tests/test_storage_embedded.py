"""Inserts on the embedded transport (Arrow IPC streamed into chdb): every Arrow type the
write path sends lands in its ClickHouse column type, and a failed insert is a clear
StorageError that leaves the engine clean for the next statement."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import pytest_asyncio

from gob_metrics.storage.base import StorageError
from gob_metrics.storage.embedded import EmbeddedStorage

DDL = ("CREATE TABLE gob.t (tenant LowCardinality(String), id UInt128, n Int64, s Int8, "
       "f Float64, labels Map(LowCardinality(String), String), at DateTime64(3)) "
       "ENGINE = MergeTree ORDER BY (tenant, id)")


@pytest_asyncio.fixture
async def storage(tmp_path: Path) -> AsyncIterator[EmbeddedStorage]:
    s = EmbeddedStorage(tmp_path / "data")
    await s.start()
    await s.execute(DDL)
    try:
        yield s
    finally:
        await s.close()


def rows(tenants: pa.Array, n: int = 3) -> pa.Table:
    ids = b"".join(((i + 1) << 100 | 7).to_bytes(16, "little") for i in range(n))
    return pa.table({
        "tenant": tenants,
        "id": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(ids)]),
        "n": pa.array(range(-1, n - 1), pa.int64()),
        "s": pa.array([-128, 0, 127][:n], pa.int8()),
        "f": pa.array([float("nan"), -0.0, 1.5][:n], pa.float64()),
        "labels": pa.array([[("job", "x")], [], [("a", "1"), ("b", "é")]][:n],
                           pa.map_(pa.string(), pa.string())),
        "at": pa.array(np.array([0, 1_795_600_000_123, -1], "datetime64[ms]")[:n],
                       pa.timestamp("ms")),
    })


async def test_every_type_lands_in_its_column(storage: EmbeddedStorage) -> None:
    dictionary = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()),
                                                pa.array(["t1", "t2"]))
    await storage.insert("t", rows(dictionary))
    await storage.insert("t", rows(pa.array(["t3"] * 3)))
    got = await storage.query(
        "SELECT tenant, toString(id) AS id, n, s, reinterpretAsUInt64(f) AS f, "
        "mapKeys(labels) AS k, mapValues(labels) AS v, toUnixTimestamp64Milli(at) AS at "
        "FROM gob.t ORDER BY tenant, id")
    out = got.to_pylist()
    assert [r["tenant"] for r in out] == ["t1", "t1", "t2", "t3", "t3", "t3"]
    assert {r["id"] for r in out} == {str((i + 1) << 100 | 7) for i in range(3)}
    t3 = [r for r in out if r["tenant"] == "t3"]
    assert [r["n"] for r in t3] == [-1, 0, 1] and [r["s"] for r in t3] == [-128, 0, 127]
    assert [r["f"] for r in t3] == [struct.unpack("<Q", struct.pack("<d", v))[0]
                                    for v in (float("nan"), -0.0, 1.5)]
    assert [(r["k"], r["v"]) for r in t3] == [(["job"], ["x"]), ([], []), (["a", "b"],
                                                                           ["1", "é"])]
    assert [r["at"] for r in t3] == [0, 1_795_600_000_123, -1]


@pytest.mark.parametrize(("table", "data", "needle"), [
    ("missing", pa.table({"n": pa.array([1], pa.int64())}), "missing"),
    ("t", pa.table({"nope": pa.array([1], pa.int64())}), "nope"),
    ("t", pa.table({"n": pa.array(["x"])}), "insert into t"),
])
async def test_a_failed_insert_is_clear_and_leaves_the_engine_clean(
        storage: EmbeddedStorage, table: str, data: pa.Table, needle: str) -> None:
    with pytest.raises(StorageError) as err:
        await storage.insert(table, data)
    assert not err.value.retryable
    assert f"insert into {table}" in str(err.value) and needle in str(err.value)
    await storage.insert("t", rows(pa.array(["ok"] * 3)))
    t = await storage.query("SELECT count() AS c FROM gob.t")
    assert t.column("c").to_pylist() == [3]
