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


def _metric(labels: Labels) -> str:
    return json.dumps(dict(labels), ensure_ascii=False, separators=(",", ":"))


def vector_json(vec: Vec, t_ms: int) -> str:
    t = format_time(t_ms)
    items = []
    for lab, v, p in zip(vec.labels, vec.values[:, 0], vec.present[:, 0], strict=True):
        if p:
            items.append(f'{{"metric":{_metric(lab)},"value":[{t},"{format_value(v)}"]}}')
    return '{"resultType":"vector","result":[' + ",".join(items) + "]}"


def matrix_json(series: list[tuple[Labels, np.ndarray, np.ndarray]]) -> str:
    """``series``: (labels, timestamps ms, values) in output order."""
    items = []
    for lab, ts, vals in series:
        points = ",".join(f'[{format_time(int(t))},"{format_value(float(v))}"]'
                          for t, v in zip(ts, vals, strict=True))
        items.append(f'{{"metric":{_metric(lab)},"values":[{points}]}}')
    return '{"resultType":"matrix","result":[' + ",".join(items) + "]}"


def scalar_json(t_ms: int, v: float) -> str:
    return f'{{"resultType":"scalar","result":[{format_time(t_ms)},"{format_value(v)}"]}}'


def string_json(t_ms: int, s: str) -> str:
    return f'{{"resultType":"string","result":[{format_time(t_ms)},{json.dumps(s)}]}}'
