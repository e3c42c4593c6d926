"""Query results in Prometheus' JSON, formatted exactly as Prometheus 2.42 writes them.

Sample values are strings: Go's ``strconv.FormatFloat(v, 'f', -1, 64)``, switching to the
``'e'`` format for magnitudes below 1e-6 or from 1e21 up (web/api/v1's marshalPointJSON),
``NaN``, ``+Inf`` and ``-Inf``. Timestamps are seconds with the milliseconds as up to three
decimals (``1705286400``, ``1705286400.5`` written ``1705286400.500``).
"""

from __future__ import annotations

import json
import math
from decimal import Decimal

import numpy as np

from gob_metrics.promql.values import Labels, Vec


def _positional(v: float) -> str:
    """Go's 'f' format with the shortest round-trip digits."""
    text = repr(v)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_value(v: float) -> str:
    """A sample value as the Prometheus API writes it."""
    v = float(v)
    if v != v:
        return "NaN"
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    a = abs(v)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        return repr(v)  # Python's exponent form equals Go's 'e' format (two-digit minimum)
    return _positional(v)


def format_value_label(v: float) -> str:
    """``strconv.FormatFloat(v, 'f', -1, 64)`` as count_values uses it (never 'e')."""
    v = float(v)
    if v != v:
        return "NaN"
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    return _positional(v)


def format_time(ms: int) -> str:
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    whole, frac = divmod(ms, 1000)
    return f"{sign}{whole}.{frac:03d}" if frac else f"{sign}{whole}"


def format_values(values: np.ndarray) -> list[str]:
    """:func:`format_value` of every element, without a Python call per ordinary value:
    ``repr`` (shortest round-trip digits, like Go's -1 precision) is already Go's text
    for magnitudes in [1e-4, 1e16) except for the ``.0`` of integral values; everything
    else (zeros, NaN, infinities, the exponent ranges) goes through format_value."""
    v = np.asarray(values, np.float64)
    out = list(map(repr, v.tolist()))
    a = np.abs(v)
    with np.errstate(invalid="ignore"):
        plain = (a >= 1e-4) & (a < 1e16)
    for i in np.flatnonzero(plain & (v == np.trunc(v))).tolist():
        out[i] = out[i][:-2]
    for i in np.flatnonzero(~plain).tolist():
        out[i] = format_value(v[i])
    return out


def format_times(ms: np.ndarray) -> list[str]:
    """:func:`format_time` of every element."""
    t = np.asarray(ms, np.int64)
    if len(t) and not (t % 1000).any():
        return list(map(str, (t // 1000).tolist()))
    return [format_time(x) for x in t.tolist()]


def _metric(labels: Labels) -> str:
    return json.dumps(dict(labels), ensure_ascii=False, separators=(",", ":"))


def vector_json(vec: Vec, t_ms: int) -> str:
    t = format_time(t_ms)
    rows = np.flatnonzero(vec.present[:, 0])
    texts = format_values(vec.values[rows, 0])
    items = [f'{{"metric":{_metric(vec.labels[i])},"value":[{t},"{text}"]}}'
             for i, text in zip(rows.tolist(), texts, strict=True)]
    return '{"resultType":"vector","result":[' + ",".join(items) + "]}"


def matrix_json(series: list[tuple[Labels, np.ndarray, np.ndarray]]) -> str:
    """``series``: (labels, timestamps ms, values) in output order, none empty.

    Every point of every series is formatted in two vectorised passes (values, times)
    and assembled with list slicing and one join per series, not an f-string per
    point: the text is the same as formatting each point with format_time and
    format_value."""
    if not series:
        return '{"resultType":"matrix","result":[]}'
    times = format_times(np.concatenate([np.asarray(ts, np.int64) for _, ts, _ in series]))
    values = format_values(np.concatenate([np.asarray(v, np.float64) for _, _, v in series]))
    n = len(times)
    parts: list[str] = [""] * (4 * n)
    parts[0::4] = times
    parts[1::4] = [',"'] * n
    parts[2::4] = values
    parts[3::4] = ['"],['] * n
    items = []
    start = 0
    for lab, ts, _ in series:
        end = start + 4 * len(ts)
        points = "".join(parts[start:end])[:-2] if end > start else ""
        items.append(f'{{"metric":{_metric(lab)},"values":[[{points}]}}' if points
                     else f'{{"metric":{_metric(lab)},"values":[]}}')
        start = end
    return '{"resultType":"matrix","result":[' + ",".join(items) + "]}"


def scalar_json(t_ms: int, v: float) -> str:
    return f'{{"resultType":"scalar","result":[{format_time(t_ms)},"{format_value(v)}"]}}'


def string_json(t_ms: int, s: str) -> str:
    return f'{{"resultType":"string","result":[{format_time(t_ms)},{json.dumps(s)}]}}'
