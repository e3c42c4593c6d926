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
import pyarrow as pa
import pyarrow.compute as pc

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
    """A sample value as the Prometheus API writes it: like :func:`format_value_label`,
    but finite values below 1e-6 or from 1e21 in magnitude in exponent form."""
    v = float(v)
    a = abs(v)
    if a != 0 and (a < 1e-6 or 1e21 <= a < math.inf):
        return repr(v)  # Python's exponent form equals Go's 'e' format (two-digit minimum)
    return format_value_label(v)


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


def _value_texts(values: np.ndarray) -> pa.Array:
    """format_value of every element as an Arrow string array.

    Arrow's float-to-string cast writes the shortest round-trip digits (as Go and
    Python do), in positional notation for moderate magnitudes and with an exponent
    outside them (from about 1e15, and for many digits left of the point). Where it
    wrote no exponent its text is Go's; every other element (Arrow's exponent forms,
    NaN, infinities, Go's own exponent range) is formatted by format_value."""
    v = np.asarray(values, np.float64)
    texts = pc.cast(pa.array(v, pa.float64()), pa.string())
    if not len(v):
        return texts
    a = np.abs(v)
    with np.errstate(invalid="ignore"):
        odd = ~(((a >= 1e-6) & (a < 1e21)) | (a == 0))  # NaN is odd too
    odd |= pc.match_substring(texts, "e").to_numpy(zero_copy_only=False)
    if odd.any():
        fixed = pa.array([format_value(x) for x in v[odd].tolist()], pa.string())
        texts = pc.replace_with_mask(texts, pa.array(odd), fixed)
    return texts


def _time_texts(ms: np.ndarray) -> pa.Array:
    t = np.asarray(ms, np.int64)
    if not (t % 1000).any():
        return pc.cast(pa.array(t // 1000), pa.string())
    return pa.array([format_time(x) for x in t.tolist()], pa.string())


def format_values(values: np.ndarray) -> list[str]:
    """:func:`format_value` of every element (vectorised, see _value_texts)."""
    return _value_texts(values).to_pylist()


def format_times(ms: np.ndarray) -> list[str]:
    """:func:`format_time` of every element."""
    return _time_texts(ms).to_pylist()


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
    """``series``: (labels, timestamps ms, values) in output order.

    Points are formatted and joined in Arrow (one cast per column, one element-wise join
    into ``[t,"v"]``, one list join per series) rather than in Python per point; the text
    is the same as formatting each point with format_time and format_value."""
    if not series:
        return '{"resultType":"matrix","result":[]}'
    lengths = np.fromiter((len(ts) for _, ts, _ in series), np.int64, len(series))
    offsets = np.zeros(len(series) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    times = _time_texts(np.concatenate([np.asarray(ts, np.int64) for _, ts, _ in series]))
    values = _value_texts(np.concatenate([np.asarray(v, np.float64) for _, _, v in series]))
    lit = [pa.scalar(x, pa.large_string()) for x in ("[", ',"', '"]', "")]
    points = pc.binary_join_element_wise(lit[0], times.cast(pa.large_string()), lit[1],
                                         values.cast(pa.large_string()), lit[2], lit[3])
    joined = pc.binary_join(pa.LargeListArray.from_arrays(pa.array(offsets), points),
                            pa.scalar(",", pa.large_string()))
    items = [f'{{"metric":{_metric(lab)},"values":[{text}]}}'
             for (lab, _, _), text in zip(series, joined.to_pylist(), strict=True)]
    return '{"resultType":"matrix","result":[' + ",".join(items) + "]}"


def scalar_json(t_ms: int, v: float) -> str:
    return f'{{"resultType":"scalar","result":[{format_time(t_ms)},"{format_value(v)}"]}}'


def string_json(t_ms: int, s: str) -> str:
    return f'{{"resultType":"string","result":[{format_time(t_ms)},{json.dumps(s)}]}}'
