"""Functions over range vectors (``rate``, ``*_over_time``, ``deriv``, ...), evaluated for
every series and step at once from the windows located by ``values.windows``.

Most need only a window's first and last samples; counter resets and value changes are
found once over the whole block and counted per window by binary search; the rest gather
the window's samples into a ``(series, steps, width)`` array, a bounded number of series at
a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from gob_metrics.promql.aggregate import sorted_quantile
from gob_metrics.promql.values import ExecutionError, Windows

#: elements of one gathered (series, steps, width) chunk
_CHUNK = 1 << 21


def gather(w: Windows) -> Iterator[tuple[slice, np.ndarray, np.ndarray, np.ndarray]]:
    """Per chunk of series: (rows, values, times, mask), each (rows, steps, width)."""
    nser, steps = w.lo.shape
    count = w.hi - w.lo
    width = int(count.max()) if count.size else 0
    width = max(width, 1)
    per = max(1, _CHUNK // max(1, steps * width))
    ar = np.arange(width)
    top = max(len(w.block.ts) - 1, 0)
    for a in range(0, nser, per):
        rows = slice(a, min(nser, a + per))
        idx = w.lo[rows][..., None] + ar
        mask = ar < count[rows][..., None]
        idx = np.minimum(idx, top)
        if len(w.block.ts) == 0:
            vals = np.zeros(idx.shape)
            times = np.zeros(idx.shape, np.int64)
        else:
            vals = w.block.values[idx]
            times = w.block.ts[idx]
        yield rows, vals, times, mask


def _reduce(w: Windows, fn) -> np.ndarray:
    out = np.full(w.lo.shape, np.nan)
    with np.errstate(all="ignore"):
        for rows, vals, times, mask in gather(w):
            out[rows] = fn(vals, times, mask)
    return out


def _window_reduce(w: Windows, ufunc: np.ufunc) -> np.ndarray:
    """``ufunc`` over every window's samples in sample order (NaN where a window is empty),
    with one ``reduceat`` over the block: window ``[lo, hi)`` is the segment between two
    consecutive indices when its bounds are interleaved ``lo0, hi0, lo1, hi1, ...`` (the
    segments ``[hi, next lo)`` in between are discarded). No (series, steps, width) array
    is gathered; the work is still the sum of the windows' lengths, in one C loop."""
    v = w.block.values
    if len(v) == 0 or w.lo.size == 0:
        return np.full(w.lo.shape, np.nan)
    ext = np.append(v, 0.0)  # every index, an end == len(v) included, must be valid
    idx = np.empty(2 * w.lo.size, np.int64)
    idx[0::2] = w.lo.reshape(-1)
    idx[1::2] = w.hi.reshape(-1)
    with np.errstate(all="ignore"):
        out = ufunc.reduceat(ext, idx)[0::2].reshape(w.lo.shape)
    return np.where(w.hi > w.lo, out, np.nan)


def _at(w: Windows, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(w.block.ts) == 0:
        return np.zeros(idx.shape), np.zeros(idx.shape, np.int64)
    return w.block.values.take(idx, mode="clip"), w.block.ts.take(idx, mode="clip")


def over_time(name: str, w: Windows, q: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(values, present) of ``<name>_over_time`` for every series and step.

    Not pushed down to ClickHouse (engine.py lists why): sum/avg/stddev/stdvar because
    ClickHouse adds floats in another order; min/max/count/last, exact in SQL, because
    overlapping windows would make SQL repeat samples or pre-aggregate per step interval
    with Prometheus' closed window edges; quantile needs every value anyway."""
    count = w.count
    present = count > 0
    if name == "count":
        return count.astype(np.float64), present
    if name == "present":
        return np.ones(count.shape), present
    if name == "last":
        return _at(w, w.hi - 1)[0], present
    if name == "sum":
        out = _window_reduce(w, np.add)
    elif name == "avg":
        with np.errstate(all="ignore"):
            out = _window_reduce(w, np.add) / count
    elif name == "max":  # Prometheus keeps a NaN only while every value was NaN: fmax
        out = _window_reduce(w, np.fmax)
    elif name == "min":
        out = _window_reduce(w, np.fmin)
    elif name in ("stddev", "stdvar"):
        out = _reduce(w, _variance)
        if name == "stddev":
            out = np.sqrt(out)
    elif name == "quantile":
        assert q is not None
        out = _reduce(w, lambda v, t, m: _window_quantile(q, v, m))
    else:  # pragma: no cover
        raise ExecutionError(f"unknown function {name}_over_time")
    return out, present


def _variance(v: np.ndarray, t: np.ndarray, m: np.ndarray) -> np.ndarray:
    # Two-pass around the window's first value: equal values give exactly 0.
    n = m.sum(axis=-1)
    d = np.where(m, v - v[..., :1], 0.0)
    mean = d.sum(axis=-1) / n
    return np.where(m, (d - mean[..., None]) ** 2, 0.0).sum(axis=-1) / n


def _window_quantile(q: np.ndarray, v: np.ndarray, m: np.ndarray) -> np.ndarray:
    rows, steps, width = v.shape
    # (width, rows*steps) columns for sorted_quantile
    vv = v.reshape(rows * steps, width).T
    mm = m.reshape(rows * steps, width).T
    qq = np.broadcast_to(q[None, :], (rows, steps)).reshape(-1)
    return sorted_quantile(qq, vv, mm).reshape(rows, steps)


def _pair_hits(w: Windows, hit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``hit[i]`` flags the pair of samples ``(i, i + 1)`` of the block. Returns the sorted
    block indices ``i + 1`` of the flagged pairs and, per series and step, the range
    ``[start, stop)`` of them inside the window: a window ``[lo, hi)`` holds the pairs
    ending at ``lo + 1 .. hi - 1``, all within one series (pairs across two series never
    fall inside a window)."""
    pos = np.flatnonzero(hit) + 1
    start = np.searchsorted(pos, w.lo + 1, side="left")
    stop = np.maximum(np.searchsorted(pos, w.hi, side="left"), start)
    return pos, start, stop


def _counter_corrections(w: Windows) -> np.ndarray:
    """Per series and step, the sum of the values just before each counter reset in the
    window, added in sample order starting from 0 as Prometheus 2.42 does.

    O(samples + windows + resets in windows): the resets are found once over the whole
    block and located per window by binary search, rather than every window's samples
    being gathered (samples x window length)."""
    out = np.zeros(w.lo.shape)
    v = w.block.values
    if len(v) < 2 or out.size == 0:
        return out
    with np.errstate(all="ignore"):
        pos, start, stop = _pair_hits(w, v[1:] < v[:-1])
    if pos.size == 0:
        return out
    before = v[pos - 1]
    flat = out.reshape(-1)
    sel = np.flatnonzero((stop > start).reshape(-1))
    cur = start.reshape(-1)[sel]
    left = (stop - start).reshape(-1)[sel]
    acc = np.zeros(sel.size)
    with np.errstate(all="ignore"):
        # k-th reset of every window that has one, in order: sequential float summation,
        # only over the windows still holding resets
        while sel.size:
            acc += before[cur]
            cur += 1
            left -= 1
            done = left == 0
            flat[sel[done]] = acc[done]
            keep = ~done
            sel, cur, left, acc = sel[keep], cur[keep], left[keep], acc[keep]
    return out


def extrapolated_rate(w: Windows, is_counter: bool, is_rate: bool
                      ) -> tuple[np.ndarray, np.ndarray]:
    """rate/increase/delta with Prometheus 2.42's extrapolation to the window edges.

    Not pushed down to ClickHouse: it needs each window's exact first/last sample times
    and count, and the counter corrections added in sample order (bit-exact rates matter
    to histogram_quantile); see engine.py."""
    count = w.count
    present = count >= 2
    first_v, first_t = _at(w, w.lo)
    last_v, last_t = _at(w, w.hi - 1)
    with np.errstate(all="ignore"):
        result = last_v - first_v
        if is_counter:
            result = result + _counter_corrections(w)
        range_start = (w.end - w.range)[None, :]
        range_end = w.end[None, :]
        to_start = (first_t - range_start) / 1000.0
        to_end = (range_end - last_t) / 1000.0
        sampled = (last_t - first_t) / 1000.0
        avg_between = sampled / (count - 1)
        if is_counter:
            # Counters cannot go below zero: extrapolate at most to where it would be 0.
            to_zero = sampled * (first_v / result)
            shorten = (result > 0) & (first_v >= 0) & (to_zero < to_start)
            to_start = np.where(shorten, to_zero, to_start)
        threshold = avg_between * 1.1
        interval = sampled.copy()
        interval += np.where(to_start < threshold, to_start, avg_between / 2)
        interval += np.where(to_end < threshold, to_end, avg_between / 2)
        # Prometheus 2.42 scales once by a factor (the order matters to the last bit,
        # and histogram_quantile compares rates of neighbouring buckets exactly).
        factor = interval / sampled
        if is_rate:
            factor = factor / (w.range / 1000.0)
        result = result * factor
    return result, present


def instant_rate(w: Windows, is_rate: bool) -> tuple[np.ndarray, np.ndarray]:
    """irate/idelta: from the last two samples of the window."""
    count = w.count
    last_v, last_t = _at(w, w.hi - 1)
    prev_v, prev_t = _at(w, w.hi - 2)
    interval = last_t - prev_t
    present = (count >= 2) & (interval != 0)
    with np.errstate(all="ignore"):
        if is_rate:
            result = np.where(last_v < prev_v, last_v, last_v - prev_v)
            result = result / (interval / 1000.0)
        else:
            result = last_v - prev_v
    return result, present


def changes_resets(w: Windows, resets: bool) -> tuple[np.ndarray, np.ndarray]:
    """Count of value changes (NaN to NaN is none) or of drops in each window, from one
    pass over the block and binary searches per window."""
    v = w.block.values
    if len(v) < 2:
        return np.zeros(w.lo.shape), w.count > 0
    prev, cur = v[:-1], v[1:]
    with np.errstate(all="ignore"):
        hit = (cur < prev) if resets else ~((cur == prev) | (np.isnan(cur) & np.isnan(prev)))
    _, start, stop = _pair_hits(w, hit)
    return (stop - start).astype(np.float64), w.count > 0


def _regression(v: np.ndarray, t: np.ndarray, m: np.ndarray, intercept_t: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and intercept at ``intercept_t`` (ms, broadcastable to
    (rows, steps)); a window of equal values has slope 0 (NaN if they are infinite)."""
    n = m.sum(axis=-1)
    x = np.where(m, (t - intercept_t[..., None]) / 1000.0, 0.0)
    y = np.where(m, v, 0.0)
    xm = x.sum(axis=-1) / n
    ym = y.sum(axis=-1) / n
    dx = np.where(m, x - xm[..., None], 0.0)
    dy = np.where(m, y - ym[..., None], 0.0)
    slope = (dx * dy).sum(axis=-1) / (dx * dx).sum(axis=-1)
    intercept = ym - slope * xm
    first = v[..., 0]
    const = (np.where(m, v == first[..., None], True)).all(axis=-1)
    inf = np.isinf(first)
    slope = np.where(const, np.where(inf, np.nan, 0.0), slope)
    intercept = np.where(const, np.where(inf, np.nan, first), intercept)
    return slope, intercept


def deriv(w: Windows) -> tuple[np.ndarray, np.ndarray]:
    def fn(v, t, m):
        return _regression(v, t, m, t[..., 0])[0]

    return _reduce(w, fn), w.count >= 2


def predict_linear(w: Windows, duration: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    def fn(v, t, m):
        at = np.broadcast_to(w.step_ts[None, :], v.shape[:2])
        slope, intercept = _regression(v, t, m, at)
        return slope * duration[None, :] + intercept

    return _reduce(w, fn), w.count >= 2


def holt_winters(w: Windows, sf: np.ndarray, tf: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Double exponential smoothing; the factors must be strictly between 0 and 1."""
    for name, f in (("smoothing", sf), ("trend", tf)):
        bad = f[(f <= 0) | (f >= 1)]
        if bad.size:
            raise ExecutionError(f"invalid {name} factor. Expected: 0 < {name[0]}f < 1, "
                                 f"got: {bad[0]:f}")

    def fn(v, t, m):
        n = m.sum(axis=-1)
        s0 = v[..., 0].copy()
        b = v[..., 1] - v[..., 0] if v.shape[-1] > 1 else np.zeros_like(s0)
        s1 = s0.copy()
        for i in range(1, v.shape[-1]):
            active = m[..., i]
            if i > 1:
                b_new = tf[None, :] * (s1 - s0) + (1 - tf[None, :]) * b
                b = np.where(active, b_new, b)
            x = sf[None, :] * v[..., i] + (1 - sf[None, :]) * (s1 + b)
            s0 = np.where(active, s1, s0)
            s1 = np.where(active, x, s1)
        return np.where(n >= 2, s1, np.nan)

    return _reduce(w, fn), w.count >= 2
