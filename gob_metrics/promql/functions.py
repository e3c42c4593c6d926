"""PromQL functions of Prometheus 2.42 over float samples, each evaluated for every step
at once. Range-vector functions live in ``rangefuncs.py``; this module dispatches."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import re2

from gob_metrics.promql import ast, rangefuncs
from gob_metrics.promql.aggregate import LABEL_NAME
from gob_metrics.promql.values import (
    ExecutionError,
    Labels,
    Vec,
    collapse,
    drop_name,
    get,
    with_label,
    without,
)
from gob_metrics.read.matchers import METRIC_NAME, MatchType

if TYPE_CHECKING:
    from gob_metrics.promql.engine import Evaluator

_MATH: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "abs": np.abs, "ceil": np.ceil, "floor": np.floor, "exp": np.exp, "sqrt": np.sqrt,
    "ln": np.log, "log2": np.log2, "log10": np.log10, "sgn": np.sign,
    "deg": np.degrees, "rad": np.radians,
    "sin": np.sin, "cos": np.cos, "tan": np.tan, "asin": np.arcsin, "acos": np.arccos,
    "atan": np.arctan, "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh,
    "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh,
}
_DATE = frozenset(["day_of_month", "day_of_week", "day_of_year", "days_in_month", "hour",
                   "minute", "month", "year"])
_OVER_TIME = {f"{n}_over_time": n for n in
              ("avg", "min", "max", "sum", "count", "stddev", "stdvar", "last", "present",
               "quantile")}
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def call(ev: Evaluator, node: ast.Call, ts: np.ndarray) -> np.ndarray | Vec:
    name = node.name
    if name in _MATH:
        vec = ev.eval(node.args[0], ts)
        with np.errstate(all="ignore"):
            return _map(vec, _MATH[name](vec.values))
    if name in _DATE:
        return _date(ev, node, ts)
    if name in _OVER_TIME or name in _RANGE:
        return _range_function(ev, node, ts)
    handler = _OTHER.get(name)
    if handler is None:
        raise ExecutionError(f"function {name!r} is not implemented")
    return handler(ev, node, ts)


def _map(vec: Vec, values: np.ndarray) -> Vec:
    """An element-wise function's result: same rows, metric name dropped."""
    return collapse([drop_name(lab) for lab in vec.labels], values, vec.present)


def _scalar_arg(ev: Evaluator, node: ast.Call, i: int, ts: np.ndarray,
                default: float) -> np.ndarray:
    if len(node.args) <= i:
        return np.full(len(ts), default)
    return np.asarray(ev.eval(node.args[i], ts), np.float64)


# ---------------------------------------------------------------------- range vectors

_RANGE = frozenset(["rate", "increase", "delta", "irate", "idelta", "changes", "resets",
                    "deriv", "predict_linear", "holt_winters", "absent_over_time"])


def _range_function(ev: Evaluator, node: ast.Call, ts: np.ndarray) -> Vec:
    name = node.name
    if name == "quantile_over_time":
        q = _scalar_arg(ev, node, 0, ts, math.nan)
        w = ev.eval_range(node.args[1], ts)
    else:
        w = ev.eval_range(node.args[0], ts)
    if name == "absent_over_time":
        return _absent(node.args[0], (w.count > 0).any(axis=0) if len(w.block) else
                       np.zeros(len(ts), bool))
    if name in _OVER_TIME:
        values, present = rangefuncs.over_time(
            _OVER_TIME[name], w, q if name == "quantile_over_time" else None)
    elif name in ("rate", "increase", "delta"):
        values, present = rangefuncs.extrapolated_rate(w, name != "delta", name == "rate")
    elif name in ("irate", "idelta"):
        values, present = rangefuncs.instant_rate(w, name == "irate")
    elif name in ("changes", "resets"):
        values, present = rangefuncs.changes_resets(w, name == "resets")
    elif name == "deriv":
        values, present = rangefuncs.deriv(w)
    elif name == "predict_linear":
        values, present = rangefuncs.predict_linear(w, _scalar_arg(ev, node, 1, ts, 0.0))
    else:  # holt_winters
        sf = _scalar_arg(ev, node, 1, ts, math.nan)
        tf = _scalar_arg(ev, node, 2, ts, math.nan)
        values, present = rangefuncs.holt_winters(w, sf, tf)
    # Range functions drop the metric name, except last_over_time (Prometheus 2.42).
    labels = w.block.labels if name == "last_over_time" else [
        drop_name(lab) for lab in w.block.labels]
    return collapse(list(labels), values, present).nonempty()


# ----------------------------------------------------------------------- misc / time


def _time(ev: Evaluator, node: ast.Call, ts: np.ndarray) -> np.ndarray:
    return ts / 1000.0


def _pi(ev: Evaluator, node: ast.Call, ts: np.ndarray) -> np.ndarray:
    return np.full(len(ts), math.pi)


def _vector(ev: Evaluator, node: ast.Call, ts: np.ndarray) -> Vec:
    s = np.asarray(ev.eval(node.args[0], ts), np.float64)
    return Vec([()], s[None, :].copy(), np.ones((1, len(ts)), bool))


def _scalar(ev: Evaluator, node: ast.Call, ts: np.ndarray) -> np.ndarray:
    vec = ev.eval(node.args[0], ts)
    one = vec.present.sum(axis=0) == 1
    if len(vec) == 0:
        return np.full(len(ts), np.nan)
    idx = np.argmax(vec.present, axis=0)
    return np.where(one, vec.values[idx, np.arange(len(ts))], np.nan)


def _timestamp(ev: Evaluator, node: ast.Call, ts: np.ndarray) -> Vec:
    arg = ast.unwrap(node.args[0])
    if isinstance(arg, ast.VectorSelector):
        # Directly on a selector, the sample's own timestamp; otherwise the step's.
        vec = ev.eval_vector_selector(arg, ts, sample_times=True)
        return _map(vec, vec.values)
    vec = ev.eval(node.args[0], ts)
    return _map(vec, np.broadcast_to(ts / 1000.0, vec.values.shape).copy())


_GO_MIN_TIME = {"year": 292277026596.0, "month": 12.0, "day_of_month": 4.0,
                "day_of_week": 0.0, "day_of_year": 339.0, "days_in_month": 31.0,
                "hour": 15.0, "minute": 30.0}


def _date(ev: Evaluator, node: ast.Call, ts: np.ndarray) -> Vec:
    if node.args:
        vec = ev.eval(node.args[0], ts)
        vec = Vec([drop_name(lab) for lab in vec.labels], vec.values, vec.present)
    else:
        vec = Vec([()], (ts // 1000).astype(np.float64)[None, :], np.ones((1, len(ts)), bool))
    v = vec.values
    # Go converts NaN, ±Inf and out-of-range floats to int64 as math.MinInt64, and
    # time.Unix(math.MinInt64, 0) is one fixed (wrapped) instant: its fields below.
    finite = np.isfinite(v) & (np.abs(np.where(np.isfinite(v), v, 0)) < 2.0**63)
    secs = np.where(finite, np.trunc(np.where(finite, v, 0)), 0).astype(np.int64)
    dt = secs.astype("datetime64[s]")
    days = dt.astype("datetime64[D]")
    months = dt.astype("datetime64[M]")
    name = node.name
    if name == "year":
        out = dt.astype("datetime64[Y]").astype(np.int64) + 1970
    elif name == "month":
        out = months.astype(np.int64) % 12 + 1
    elif name == "day_of_month":
        out = (days - months.astype("datetime64[D]")).astype(np.int64) + 1
    elif name == "day_of_year":
        out = (days - dt.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64) + 1
    elif name == "day_of_week":
        out = (days.astype(np.int64) + 4) % 7
    elif name == "days_in_month":
        out = ((months + 1).astype("datetime64[D]") - months.astype("datetime64[D]")
               ).astype(np.int64)
    elif name == "hour":
        out = secs // 3600 % 24
    else:  # minute
        out = secs // 60 % 60
    values = np.where(finite, out.astype(np.float64), _GO_MIN_TIME[name])
    return collapse(list(vec.labels), values, vec.present)


def _clamp(ev: Evaluator, node: ast.Call, ts: np.ndarray) -> Vec:
    vec = ev.eval(node.args[0], ts)
    name = node.name
    with np.errstate(all="ignore"):
        if name == "clamp_min":
            values = np.maximum(vec.values, _scalar_arg(ev, node, 1, ts, 0)[None, :])
            return _map(vec, values)
        if name == "clamp_max":
            values = np.minimum(vec.values, _scalar_arg(ev, node, 1, ts, 0)[None, :])
            return _map(vec, values)
        lo = _scalar_arg(ev, node, 1, ts, 0)
        hi = _scalar_arg(ev, node, 2, ts, 0)
        values = np.maximum(lo[None, :], np.minimum(hi[None, :], vec.values))
    out = _map(vec, values)
    # clamp with max < min returns nothing at that step.
    out.present = out.present & ~(hi < lo)[None, :]
    return out


def _round(ev: Evaluator, node: ast.Call, ts: np.ndarray) -> Vec:
    vec = ev.eval(node.args[0], ts)
    to = _scalar_arg(ev, node, 1, ts, 1.0)
    with np.errstate(all="ignore"):
        inv = 1.0 / to
        values = np.floor(vec.values * inv[None, :] + 0.5) / inv[None, :]
    return _map(vec, values)


def _sort(ev: Evaluator, node: ast.Call, ts: np.ndarray) -> Vec:
    vec = ev.eval(node.args[0], ts)
    if len(ts) != 1 or len(vec) == 0:
        return vec  # order only matters for instant queries
    v = vec.values[:, 0]
    nan = np.isnan(v)
    key = np.where(nan, 0.0, -v if node.name == "sort_desc" else v)
    return vec.select(np.lexsort((key, ~nan)))  # NaN first, as Prometheus' heap order


# ------------------------------------------------------------------------------ labels


def _compile(regex: str, func: str):
    try:
        return re2.compile("(?-s)^(?:" + regex + ")$", _RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise ExecutionError(f"invalid regular expression in {func}(): {detail}") from None


def _is_name_char(c: str) -> bool:
    return c == "_" or (c.isascii() and c.isalnum())


def go_expand(template: str, match) -> str:
    """Go's Regexp.ExpandString: ``$1``, ``${1}``, ``$name``, ``${name}``, ``$$``; a name
    takes the longest run of letters, digits and ``_``; unknown groups expand to ""."""
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        c = template[i]
        if c != "$" or i + 1 == n:
            out.append(c)
            i += 1
            continue
        nxt = template[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
            continue
        if nxt == "{":
            end = template.find("}", i + 2)
            name = template[i + 2:end] if end >= 0 else ""
            if not name or not all(_is_name_char(ch) for ch in name):
                out.append("$")
                i += 1
                continue
            i = end + 1
        else:
            j = i + 1
            while j < n and _is_name_char(template[j]):
                j += 1
            name = template[i + 1:j]
            if not name:
                out.append("$")
                i += 1
                continue
            i = j
        try:
            group = match.group(int(name)) if name.isdigit() else match.group(name)
        except (IndexError, KeyError, ValueError):
            group = None
        out.append(group or "")
    return "".join(out)


def _label_replace(ev: Evaluator, node: ast.Call, ts: np.ndarray) -> Vec:
    vec = ev.eval(node.args[0], ts)
    dst, repl, src, regex = (ev.eval(a, ts) for a in node.args[1:5])
    pattern = _compile(regex, "label_replace")
    if not LABEL_NAME.fullmatch(dst):
        raise ExecutionError(f"invalid destination label name in label_replace(): {dst}")
    labels = []
    for lab in vec.labels:
        m = pattern.search(get(lab, src))
        labels.append(lab if m is None else with_label(lab, dst, go_expand(repl, m)))
    return collapse(labels, vec.values, vec.present).nonempty()


def _label_join(ev: Evaluator, node: ast.Call, ts: np.ndarray) -> Vec:
    vec = ev.eval(node.args[0], ts)
    dst, sep = ev.eval(node.args[1], ts), ev.eval(node.args[2], ts)
    srcs = [ev.eval(a, ts) for a in node.args[3:]]
    if not LABEL_NAME.fullmatch(dst):
        raise ExecutionError(f"invalid destination label name in label_join(): {dst}")
    for s in srcs:
        if not LABEL_NAME.fullmatch(s):
            raise ExecutionError(f"invalid source label name in label_join(): {s}")
    labels = [with_label(lab, dst, sep.join(get(lab, s) for s in srcs)) for lab in vec.labels]
    return collapse(labels, vec.values, vec.present).nonempty()


# ------------------------------------------------------------------------------ absent


def absent_labels(arg: ast.Node) -> Labels:
    """Labels of absent()'s answer: the selector's equality matchers, except names
    matched more than once or otherwise (Prometheus' createLabelsForAbsentFunction)."""
    if isinstance(arg, ast.MatrixSelector):
        arg = arg.selector
    if not isinstance(arg, ast.VectorSelector):
        return ()
    out: Labels = ()
    empty = []
    for m in arg.matchers:
        if m.name == METRIC_NAME:
            continue
        if m.type is MatchType.EQ and not any(k == m.name for k, _ in out):
            out = with_label(out, m.name, m.value)
        else:
            empty.append(m.name)
    return without(out, empty)


def _absent(arg: ast.Node, any_present: np.ndarray) -> Vec:
    steps = len(any_present)
    return Vec([absent_labels(arg)], np.ones((1, steps)), ~any_present[None, :]).nonempty()


def _absent_fn(ev: Evaluator, node: ast.Call, ts: np.ndarray) -> Vec:
    vec = ev.eval(node.args[0], ts)
    return _absent(node.args[0], vec.present.any(axis=0) if len(vec) else
                   np.zeros(len(ts), bool))


# ------------------------------------------------------------------------- histograms


def bucket_quantile(q: np.ndarray, bounds: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Prometheus' bucketQuantile for buckets sorted by upper bound: ``counts`` is
    (buckets, steps), every bucket present; ``q`` per step."""
    steps = counts.shape[1]
    if not np.isposinf(bounds[-1]):
        out = np.full(steps, np.nan)
    else:
        # Buckets with the same upper bound are added up.
        uniq, start = np.unique(bounds, return_index=True)
        counts = np.add.reduceat(counts, np.sort(start), axis=0)
        bounds = uniq
        counts = np.fmax.accumulate(counts, axis=0)  # ensureMonotonic
        nb = len(bounds)
        if nb < 2:
            out = np.full(steps, np.nan)
        else:
            with np.errstate(all="ignore"):
                obs = counts[-1]
                rank = q * obs
                ge = counts[:-1] >= rank[None, :]
                b = np.where(ge.any(axis=0), np.argmax(ge, axis=0), nb - 1)
                cols = np.arange(steps)
                end = bounds[b]
                start = np.where(b > 0, bounds[np.maximum(b - 1, 0)], 0.0)
                prev = np.where(b > 0, counts[np.maximum(b - 1, 0), cols], 0.0)
                count = counts[b, cols] - prev
                interp = start + (end - start) * ((rank - prev) / count)
                out = np.where(b == nb - 1, bounds[nb - 2], interp)
                out = np.where((b == 0) & (bounds[0] <= 0), bounds[0], out)
                out = np.where(obs == 0, np.nan, out)
    out = np.where(q < 0, -np.inf, np.where(q > 1, np.inf, out))
    return np.where(np.isnan(q), np.nan, out)


def _parse_le(text: str) -> float | None:
    try:
        return float(text) if "_" not in text else None
    except ValueError:
        return None


def _histogram_quantile(ev: Evaluator, node: ast.Call, ts: np.ndarray) -> Vec:
    q = _scalar_arg(ev, node, 0, ts, math.nan)
    vec = ev.eval(node.args[1], ts)
    steps = len(ts)
    groups: dict[Labels, list[tuple[float, int]]] = {}
    for i, lab in enumerate(vec.labels):
        le = _parse_le(get(lab, "le"))
        if le is None:
            continue  # no or a malformed bucket label: skipped
        groups.setdefault(without(lab, ("le", METRIC_NAME)), []).append((le, i))
    out_l, out_v, out_p = [], [], []
    for key, buckets in groups.items():
        buckets.sort(key=lambda b: b[0])
        rows = np.asarray([i for _, i in buckets])
        bounds = np.asarray([b for b, _ in buckets])
        present = vec.present[rows]
        values = np.full(steps, np.nan)
        any_present = present.any(axis=0)
        # Steps sharing one pattern of present buckets are computed together.
        patterns: dict[bytes, list[int]] = {}
        for s in np.flatnonzero(any_present):
            patterns.setdefault(present[:, s].tobytes(), []).append(s)
        for cols in patterns.values():
            sel = present[:, cols[0]]
            c = np.asarray(cols)
            values[c] = bucket_quantile(q[c], bounds[sel], vec.values[rows[sel]][:, c])
        out_l.append(key)
        out_v.append(values)
        out_p.append(any_present)
    if not out_l:
        return Vec.empty(steps)
    return collapse(out_l, np.stack(out_v), np.stack(out_p))


def _native_only(ev: Evaluator, node: ast.Call, ts: np.ndarray) -> Vec:
    # histogram_count/sum/fraction read native histograms; float samples give nothing.
    for arg in node.args:
        ev.eval(arg, ts)
    return Vec.empty(len(ts))


_OTHER: dict[str, Callable[[Evaluator, ast.Call, np.ndarray], np.ndarray | Vec]] = {
    "time": _time,
    "pi": _pi,
    "vector": _vector,
    "scalar": _scalar,
    "timestamp": _timestamp,
    "clamp": _clamp,
    "clamp_min": _clamp,
    "clamp_max": _clamp,
    "round": _round,
    "sort": _sort,
    "sort_desc": _sort,
    "label_replace": _label_replace,
    "label_join": _label_join,
    "absent": _absent_fn,
    "histogram_quantile": _histogram_quantile,
    "histogram_count": _native_only,
    "histogram_sum": _native_only,
    "histogram_fraction": _native_only,
}
