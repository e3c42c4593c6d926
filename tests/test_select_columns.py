"""The columnar selection (read.select.select_columns): the Native and the Arrow result
paths agree, and rows that arrive out of order are put in order."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from gob_metrics.keys import LOOKUP_CACHE, STORAGE
from gob_metrics.read import native, select
from gob_metrics.read.matchers import MatchType, new_matcher
from tests.writes import HEADERS, STALE_NAN, body

SERIES = [
    ({"__name__": "m", "job": "b", "i": "2"}, [(t * 15_000, float(t)) for t in range(50)]),
    ({"__name__": "m", "job": "a"}, [(t * 10_000, -0.5 * t) for t in range(3, 80)]),
    ({"__name__": "m", "job": "c", "x": 'q"ü'}, [(0, math.nan), (5, STALE_NAN), (9, math.inf)]),
    ({"__name__": "other", "job": "a"}, [(0, 1.0)]),
]


async def _select(storage: Any, start: int, end: int) -> select.Selection:
    sel = select.new_selector([new_matcher(MatchType.EQ, "__name__", "m")], start, end)
    return await select.select_columns(storage, "anonymous", sel, select.Limits())


@pytest.mark.parametrize(("start", "end"), [(0, 10**7), (100_000, 400_000), (10**8, 10**9),
                                           (0, 2**32)])
async def test_native_and_arrow_agree(gob_client: Any, start: int, end: int) -> None:
    resp = await gob_client.post("/api/v1/write", data=body(SERIES), headers=HEADERS)
    assert resp.status == 204
    storage = gob_client.app[STORAGE]
    assert storage.native_results
    native = await _select(storage, start, end)
    storage.native_results = False  # the Arrow path, as a ClickHouse server answers
    try:
        arrow = await _select(storage, start, end)
    finally:
        del storage.native_results
    expected = []
    for labels, samples in SERIES:
        kept = [(t, v) for t, v in samples if start <= t <= end]
        if labels["__name__"] == "m" and kept:
            expected.append((tuple(sorted(labels.items())), kept))
    expected.sort()
    for got in (native, arrow):
        assert got.labels == [lab for lab, _ in expected]
        series = got.series()
        for s, (_, kept) in zip(series, expected, strict=True):
            assert s.timestamps.tolist() == [t for t, _ in kept]
            assert s.values.view(np.uint64).tolist() == np.array(
                [v for _, v in kept]).view(np.uint64).tolist()


def test_out_of_order_rows_are_sorted() -> None:
    labels = [(("k", "c"),), (("k", "a"),), (("k", "b"),)]
    ts = np.array([5, 1, 3, 2, 1, 7, 9, 8], np.int64)
    vals = ts.astype(np.float64) * 10
    offsets = np.array([0, 3, 5, 8], np.int64)
    got = select._selection(labels, select._slices(ts, offsets),
                            select._slices(vals, offsets), None, select.Limits())
    assert [dict(lab)["k"] for lab in got.labels] == ["a", "b", "c"]
    assert got.offsets.tolist() == [0, 2, 5, 8]
    assert got.timestamps.tolist() == [1, 2, 7, 8, 9, 1, 3, 5]
    assert got.values.tolist() == [10, 20, 70, 80, 90, 10, 30, 50]


def test_rows_in_label_order_are_used_as_they_are() -> None:
    ts = np.array([3, 1, 2, 5, 6], np.int32)  # offsets from ts_base; series a unsorted
    vals = np.array([30.0, 10.0, 20.0, 50.0, 60.0])
    vals.flags.writeable = False  # as read from a result buffer
    offsets = np.array([0, 3, 5], np.int64)
    got = select._selection([(("k", "a"),), (("k", "b"),)],
                            select._slices(ts, offsets), select._slices(vals, offsets),
                            (ts, vals), select.Limits(), ts_base=1000)
    assert got.timestamps.dtype == np.int64
    assert got.timestamps.tolist() == [1001, 1002, 1003, 1005, 1006]
    assert got.values.tolist() == [10.0, 20.0, 30.0, 50.0, 60.0]
    assert got.offsets.tolist() == [0, 3, 5]


def test_limits_hold() -> None:
    ts = np.arange(4, dtype=np.int64)
    offsets = np.array([0, 2, 4], np.int64)
    args = ([(("k", "a"),), (("k", "b"),)], select._slices(ts, offsets),
            select._slices(ts * 1.0, offsets), None)
    with pytest.raises(select.LimitExceeded, match="max_fetched_series_per_query"):
        select._selection(*args, select.Limits(max_series=1))
    with pytest.raises(select.LimitExceeded, match="max_fetched_chunks_per_query"):
        select._selection(*args, select.Limits(max_samples=3))


async def test_native_result_of_several_blocks(gob_client: Any) -> None:
    storage = gob_client.app[STORAGE]
    buf = await storage.query_native(
        "SELECT toUInt128(number) AS series_id, 'm' AS metric_name, "
        "CAST([('k', toString(number))], 'Array(Tuple(String, String))') AS labels, "
        "CAST([10 - number, 20 - number], 'Array(Int64)') AS ts, "
        "CAST([number * 0.5, nan], 'Array(Float64)') AS vals "
        "FROM numbers(5) SETTINGS max_block_size = 2")
    assert len(native.read_blocks(buf)) > 1
    ids, labels, ts, vals, whole = select._from_native(buf)
    assert ids == [i.to_bytes(16, "little") for i in range(5)]
    got = select._selection(labels, ts, vals, whole, select.Limits())
    assert [dict(lab)["k"] for lab in got.labels] == ["0", "1", "2", "3", "4"]
    assert got.labels[0] == (("__name__", "m"), ("k", "0"))
    assert got.offsets.tolist() == [0, 2, 4, 6, 8, 10]
    assert got.timestamps.tolist() == [10, 20, 9, 19, 8, 18, 7, 17, 6, 16]
    assert got.values[0::2].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert np.isnan(got.values[1::2]).all()
    rows, cols = native.read(buf)
    assert rows == 5 and cols["ts"].offsets.tolist() == [0, 2, 4, 6, 8, 10]


@pytest.mark.parametrize("native_results", [True, False])
async def test_labels_from_the_label_cache(gob_client: Any, native_results: bool) -> None:
    """Ids from the lookup cache whose labels are all known: the series table is not
    read and the answer is the same; a new series sends the selection back to the join."""
    storage = gob_client.app[STORAGE]
    lookups = gob_client.app[LOOKUP_CACHE]
    storage.native_results = native_results
    seen: list[str] = []
    query, query_native = storage.query, storage.query_native

    async def record(sql: str, params: Any = None) -> Any:
        seen.append(sql)
        return await query(sql, params)

    async def record_native(sql: str, params: Any = None) -> Any:
        seen.append(sql)
        return await query_native(sql, params)

    storage.query, storage.query_native = record, record_native
    try:
        resp = await gob_client.post("/api/v1/write", data=body(SERIES), headers=HEADERS)
        assert resp.status == 204
        sel = select.new_selector([new_matcher(MatchType.EQ, "__name__", "m")], 0, 10**7)
        first = await select.select_columns(storage, "anonymous", sel, select.Limits(), lookups)
        assert "JOIN" in seen[-1]
        second = await select.select_columns(storage, "anonymous", sel, select.Limits(),
                                             lookups)
        assert "JOIN" not in seen[-1] and "gob.series " not in seen[-1]
        assert second.labels == first.labels == sorted(second.labels)
        assert second.offsets.tolist() == first.offsets.tolist()
        assert second.timestamps.tolist() == first.timestamps.tolist()
        assert second.values.view(np.uint64).tolist() == first.values.view(np.uint64).tolist()
        new = [({"__name__": "m", "job": "d"}, [(1000, 4.0)])]
        resp = await gob_client.post("/api/v1/write", data=body(new), headers=HEADERS)
        assert resp.status == 204
        third = await select.select_columns(storage, "anonymous", sel, select.Limits(), lookups)
        assert "JOIN" in seen[-1]
        assert len(third.labels) == len(first.labels) + 1
        assert (("__name__", "m"), ("job", "d")) in third.labels
    finally:
        del storage.query, storage.query_native, storage.native_results
