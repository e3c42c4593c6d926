"""The vectorised JSON encoders give the same text as formatting point by point."""

from __future__ import annotations

import json
import math
import struct

import numpy as np

from gob_metrics.promql.encode import (
    format_time,
    format_times,
    format_value,
    format_values,
    matrix_json,
    vector_json,
)
from gob_metrics.promql.values import Vec

STALE = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]


def _values() -> np.ndarray:
    rng = np.random.default_rng(7)
    edges = [0.0, -0.0, 1.0, -1.0, 0.1, 1e-4, 9.999999999999999e-05, 1e-6, 9.99e-7, 1e-7,
             1e16, 9999999999999998.0, 1e21, 9.999999999999999e20, 1e22, 2.0**53, 2.0**63,
             -2.0**70, 5e-324, 1.7976931348623157e308, math.nan, math.inf, -math.inf, STALE,
             123456789.125, 0.30000000000000004, 1 / 3]
    randoms = [rng.standard_normal(2000) * 10.0 ** rng.integers(-12, 25, 2000),
               rng.integers(-10**6, 10**6, 2000).astype(np.float64),
               rng.random(2000).round(3)]
    bits = rng.integers(0, 2**63, 2000, dtype=np.int64).view(np.float64)
    return np.concatenate([np.array(edges), *randoms, bits])


def test_format_values_equals_format_value() -> None:
    values = _values()
    assert format_values(values) == [format_value(float(v)) for v in values]


def test_format_times_equals_format_time() -> None:
    for ms in ([0, 1500, 1005, -1500, 1705286400000, -1], [1000, 2000, -3000],
               list(range(-5000, 5000, 7))):
        assert format_times(np.array(ms, np.int64)) == [format_time(t) for t in ms]


def _matrix_reference(series: list) -> str:
    items = []
    for lab, ts, vals in series:
        points = ",".join(f'[{format_time(int(t))},"{format_value(float(v))}"]'
                          for t, v in zip(ts, vals, strict=True))
        metric = json.dumps(dict(lab), ensure_ascii=False, separators=(",", ":"))
        items.append(f'{{"metric":{metric},"values":[{points}]}}')
    return '{"resultType":"matrix","result":[' + ",".join(items) + "]}"


def test_matrix_json_equals_point_by_point() -> None:
    values = _values()
    rng = np.random.default_rng(3)
    series, start = [], 0
    for i, n in enumerate([1, 0, 5, 300, 2, len(values) - 308]):
        ts = np.sort(rng.integers(-10**6, 10**13, n)) if i % 2 else np.arange(n) * 15_000
        series.append(((("__name__", "m"), ("i", str(i)), ("q", 'a"b\\ü')), ts,
                       values[start:start + n]))
        start += n
    assert matrix_json(series) == _matrix_reference(series)
    assert json.loads(matrix_json(series))["result"][1]["values"] == []
    assert matrix_json([]) == _matrix_reference([])


def test_vector_json_skips_absent_rows() -> None:
    vec = Vec([(("a", "1"),), (("a", "2"),), (("a", "3"),)],
              np.array([[1.0], [math.nan], [2.5e-7]]), np.array([[True], [False], [True]]))
    assert vector_json(vec, 1500) == (
        '{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1.500,"1"]},'
        '{"metric":{"a":"3"},"value":[1.500,"2.5e-07"]}]}')
