"""Aggregation operators over instant vectors, for every step at once: rows are grouped
by their ``by``/``without`` labels, sorted by group and reduced with ``ufunc.reduceat``;
``topk``/``bottomk``/``quantile``/``count_values`` work per group on ``(rows, steps)``."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from gob_metrics.promql import ast
from gob_metrics.promql.encode import format_value_label
from gob_metrics.promql.values import (
    ExecutionError,
    Labels,
    Vec,
    keep_only,
    with_label,
    without,
)
from gob_metrics.read.matchers import METRIC_NAME

if TYPE_CHECKING:
    from gob_metrics.promql.engine import Evaluator

LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def group_labels(labels: Labels, node: ast.Aggregate) -> Labels:
    """``by`` keeps only the listed labels (``__name__`` too if listed); ``without`` drops
    them and always ``__name__``."""
    if node.without:
        return without(labels, (*node.grouping, METRIC_NAME))
    return keep_only(labels, node.grouping)


def _groups(vec: Vec, node: ast.Aggregate) -> tuple[list[Labels], np.ndarray]:
    ids: dict[Labels, int] = {}
    gid = np.empty(len(vec), np.int64)
    for i, lab in enumerate(vec.labels):
        gid[i] = ids.setdefault(group_labels(lab, node), len(ids))
    return list(ids), gid


def evaluate(ev: Evaluator, node: ast.Aggregate, ts: np.ndarray) -> Vec:
    # Not pushed down to ClickHouse (engine.py lists why): the input is an evaluated
    # instant vector (lookback, staleness markers per step), sum/avg/stddev depend on the
    # order floats are added in, topk/bottomk/quantile on Prometheus' NaN and tie order.
    vec = ev.eval(node.expr, ts)
    param = ev.eval(node.param, ts) if node.param is not None else None
    steps = len(ts)
    if node.op == "count_values":
        return _count_values(vec, node, str(param), steps)
    if len(vec) == 0:
        return Vec.empty(steps)
    if node.op in ("topk", "bottomk"):
        return _topk(vec, node, np.asarray(param), steps)
    keys, gid = _groups(vec, node)
    if node.op == "quantile":
        return _quantile(vec, keys, gid, np.asarray(param))
    order = np.argsort(gid, kind="stable")
    sgid = gid[order]
    starts = np.flatnonzero(np.r_[True, sgid[1:] != sgid[:-1]])
    values, present = vec.values[order], vec.present[order]
    count = np.add.reduceat(present.astype(np.int64), starts, axis=0)
    out_present = count > 0
    with np.errstate(all="ignore"):
        if node.op in ("sum", "avg"):
            total = np.add.reduceat(np.where(present, values, 0.0), starts, axis=0)
            out = total if node.op == "sum" else total / count
        elif node.op == "count":
            out = count.astype(np.float64)
        elif node.op == "group":
            out = np.ones(count.shape)
        elif node.op == "max":
            out = np.fmax.reduceat(np.where(present, values, np.nan), starts, axis=0)
        elif node.op == "min":
            out = np.fmin.reduceat(np.where(present, values, np.nan), starts, axis=0)
        elif node.op in ("stddev", "stdvar"):
            out = _variance(values, present, sgid, starts, count)
            if node.op == "stddev":
                out = np.sqrt(out)
        else:  # pragma: no cover - ast refuses unknown aggregations
            raise ExecutionError(f"unknown aggregation {node.op!r}")
    return Vec(keys, out, out_present).nonempty()


def _variance(values: np.ndarray, present: np.ndarray, sgid: np.ndarray,
              starts: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Population variance per group, two-pass around each group's first present value
    (so equal values give exactly 0, as Prometheus' running computation does)."""
    rows = np.arange(len(values))[:, None]
    first = np.minimum.reduceat(np.where(present, rows, len(values)), starts, axis=0)
    first = np.minimum(first, len(values) - 1)
    shift = values[first, np.arange(values.shape[1])[None, :]]
    d = np.where(present, values - shift[sgid], 0.0)
    mean = np.add.reduceat(d, starts, axis=0) / count
    dev = np.where(present, (d - mean[sgid]) ** 2, 0.0)
    return np.add.reduceat(dev, starts, axis=0) / count


def _rank_order(values: np.ndarray, present: np.ndarray, descending: bool) -> np.ndarray:
    """Row order per step: present numbers best first, then NaN, then absent rows."""
    cls = np.where(present, np.where(np.isnan(values), 1, 0), 2)
    key = np.where(np.isnan(values), 0.0, -values if descending else values)
    return np.lexsort((key, cls), axis=0)


def _topk(vec: Vec, node: ast.Aggregate, param: np.ndarray, steps: int) -> Vec:
    if not np.all(np.isfinite(param)) or np.any(np.abs(param) >= 2.0**63):
        bad = param[~np.isfinite(param) | (np.abs(param) >= 2.0**63)][0]
        raise ExecutionError(f"Scalar value {bad:g} overflows int64")
    k = np.trunc(param).astype(np.int64)
    _keys, gid = _groups(vec, node)
    selected = np.zeros(vec.present.shape, bool)
    for g in range(gid.max() + 1):
        rows = np.flatnonzero(gid == g)
        order = _rank_order(vec.values[rows], vec.present[rows], node.op == "topk")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(len(rows))[:, None].repeat(steps, 1), axis=0)
        selected[rows] = (rank < k[None, :]) & vec.present[rows]
    return Vec(vec.labels, vec.values, selected).nonempty()


def sorted_quantile(q: np.ndarray, values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Prometheus' quantile() over the present rows of each column (NaN sort first)."""
    n = present.sum(axis=0)
    cls = np.where(present, np.where(np.isnan(values), 0, 1), 2)
    order = np.lexsort((np.where(np.isnan(values), 0.0, values), cls), axis=0)
    srt = np.take_along_axis(values, order, axis=0)
    with np.errstate(all="ignore"):
        rank = q * (n - 1)
        lower = np.maximum(0, np.floor(rank))
        upper = np.minimum(n - 1, lower + 1)
        weight = rank - np.floor(rank)
        cols = np.arange(values.shape[1])
        lo_i = np.clip(np.nan_to_num(lower), 0, max(values.shape[0] - 1, 0)).astype(np.int64)
        up_i = np.clip(np.nan_to_num(upper), 0, max(values.shape[0] - 1, 0)).astype(np.int64)
        out = srt[lo_i, cols] * (1 - weight) + srt[up_i, cols] * weight
    out = np.where(q < 0, -np.inf, np.where(q > 1, np.inf, out))
    return np.where(n == 0, np.nan, out)


def _quantile(vec: Vec, keys: list[Labels], gid: np.ndarray, q: np.ndarray) -> Vec:
    steps = vec.values.shape[1]
    out = np.full((len(keys), steps), np.nan)
    present = np.zeros((len(keys), steps), bool)
    for g in range(len(keys)):
        rows = np.flatnonzero(gid == g)
        p = vec.present[rows]
        out[g] = sorted_quantile(q, vec.values[rows], p)
        present[g] = p.any(axis=0)
    return Vec(keys, out, present).nonempty()


def _count_values(vec: Vec, node: ast.Aggregate, label: str, steps: int) -> Vec:
    if not LABEL_NAME.fullmatch(label):
        raise ExecutionError(f'invalid label name "{label}"')
    counts: dict[Labels, np.ndarray] = {}
    for i, lab in enumerate(vec.labels):
        p = vec.present[i]
        if not p.any():
            continue
        vals = vec.values[i]
        for value in np.unique(vals[p]):  # NaNs collapse into one value
            hit = p & ((vals == value) | (np.isnan(vals) & np.isnan(value)))
            if not hit.any():
                continue
            text = format_value_label(float(value))
            # The value label joins the grouping labels (by) or stays (without).
            labelled = with_label(lab, label, text)
            if node.without:
                key = without(labelled, (*node.grouping, METRIC_NAME))
            else:
                key = keep_only(labelled, (*node.grouping, label))
            acc = counts.get(key)
            if acc is None:
                acc = counts[key] = np.zeros(steps, np.int64)
            acc += hit
    if not counts:
        return Vec.empty(steps)
    keys = list(counts)
    arr = np.stack([counts[k] for k in keys])
    return Vec(keys, arr.astype(np.float64), arr > 0)
