"""Binary operators: arithmetic, comparisons (filtering or ``bool``), ``atan2`` and the set
operators, between scalars and instant vectors, with Prometheus 2.42's vector matching
(``on``/``ignoring``, ``group_left``/``group_right``) evaluated for every step at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gob_metrics.promql import ast
from gob_metrics.promql.values import (
    ExecutionError,
    Labels,
    Vec,
    collapse,
    drop_name,
    format_labels,
    get,
    keep_only,
    with_label,
    without,
)
from gob_metrics.read.matchers import METRIC_NAME

if TYPE_CHECKING:
    from gob_metrics.promql.engine import Evaluator

# Prometheus: shouldDropMetricName — only these arithmetic operators drop __name__
# (comparisons keep it unless `bool`; atan2 keeps it).
DROPS_NAME = frozenset(["+", "-", "*", "/", "%", "^"])


def arith(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Go float64 arithmetic: ``%`` is math.Mod (sign of the dividend), ``^`` math.Pow."""
    with np.errstate(all="ignore"):
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return np.divide(a, b)
        if op == "%":
            return np.fmod(a, b)
        if op == "^":
            return np.power(a, b)
        if op == "atan2":
            return np.arctan2(a, b)
    raise ExecutionError(f"operator {op!r} is not an arithmetic operator")


def compare(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        if op == "==":
            return a == b
        if op == "!=":
            return a != b
        if op == "<":
            return a < b
        if op == ">":
            return a > b
        if op == "<=":
            return a <= b
        if op == ">=":
            return a >= b
    raise ExecutionError(f"operator {op!r} is not a comparison")


def evaluate(ev: Evaluator, node: ast.Binary, ts: np.ndarray) -> np.ndarray | Vec:
    lhs = ev.eval(node.lhs, ts)
    rhs = ev.eval(node.rhs, ts)
    lscalar, rscalar = isinstance(lhs, np.ndarray), isinstance(rhs, np.ndarray)
    if lscalar and rscalar:
        if node.op in ast.COMPARISONS:
            return compare(node.op, lhs, rhs).astype(np.float64)
        return arith(node.op, lhs, rhs)
    if lscalar or rscalar:
        return _vector_scalar(node, rhs if lscalar else lhs, lhs if lscalar else rhs,
                              swapped=lscalar)
    if node.op in ast.SET_OPS:
        return _set_op(node, lhs, rhs)
    return _vector_vector(node, lhs, rhs)


def _vector_scalar(node: ast.Binary, vec: Vec, scalar: np.ndarray, swapped: bool) -> Vec:
    s = scalar[None, :]
    if node.op in ast.COMPARISONS:
        keep = compare(node.op, s, vec.values) if swapped else compare(node.op, vec.values, s)
        if node.return_bool:
            return collapse([drop_name(lab) for lab in vec.labels],
                            keep.astype(np.float64), vec.present)
        # The vector element's value is kept even when the scalar is on the left.
        return Vec(vec.labels, vec.values, vec.present & keep)
    values = arith(node.op, s, vec.values) if swapped else arith(node.op, vec.values, s)
    labels = [drop_name(lab) for lab in vec.labels] if node.op in DROPS_NAME else vec.labels
    return collapse(list(labels), values, vec.present)


def signature(labels: Labels, on: bool, names: tuple[str, ...]) -> Labels:
    """Matching labels: ``on(names)`` keeps only them (``__name__`` too if listed);
    ``ignoring(names)`` and no modifier drop them and always ``__name__``."""
    if on:
        return keep_only(labels, names)
    return without(labels, (*names, METRIC_NAME))


def _group(sigs: list[Labels]) -> tuple[np.ndarray, dict[Labels, int]]:
    ids: dict[Labels, int] = {}
    out = np.empty(len(sigs), np.int64)
    for i, s in enumerate(sigs):
        out[i] = ids.setdefault(s, len(ids))
    return out, ids


def _presence_by_sig(vec: Vec, sig_ids: np.ndarray, nsig: int) -> np.ndarray:
    counts = np.zeros((nsig, vec.present.shape[1]), np.int64)
    np.add.at(counts, sig_ids, vec.present.astype(np.int64))
    return counts


def _set_op(node: ast.Binary, lhs: Vec, rhs: Vec) -> Vec:
    lsig = [signature(lab, node.on, node.matching) for lab in lhs.labels]
    rsig = [signature(lab, node.on, node.matching) for lab in rhs.labels]
    steps = lhs.present.shape[1]
    if node.op in ("and", "unless"):
        rids, rmap = _group(rsig)
        rpres = _presence_by_sig(rhs, rids, len(rmap)) > 0
        matched = np.zeros((len(lhs), steps), bool)
        for i, s in enumerate(lsig):
            j = rmap.get(s)
            if j is not None:
                matched[i] = rpres[j]
        keep = matched if node.op == "and" else ~matched
        return Vec(lhs.labels, lhs.values, lhs.present & keep)
    lids, lmap = _group(lsig)
    lpres = _presence_by_sig(lhs, lids, len(lmap)) > 0
    covered = np.zeros((len(rhs), steps), bool)
    for i, s in enumerate(rsig):
        j = lmap.get(s)
        if j is not None:
            covered[i] = lpres[j]
    labels = list(lhs.labels) + list(rhs.labels)
    values = np.concatenate([lhs.values, rhs.values])
    present = np.concatenate([lhs.present, rhs.present & ~covered])
    return collapse(labels, values, present)


def result_labels(lhs: Labels, rhs: Labels, node: ast.Binary) -> Labels:
    """Prometheus' resultMetric: the output labels of one matched pair."""
    out = drop_name(lhs) if node.op in DROPS_NAME else lhs
    if node.card == "one-to-one":
        out = keep_only(out, node.matching) if node.on else without(out, node.matching)
    for name in node.include:  # taken from the "one" side, deleted when it has none
        out = with_label(out, name, get(rhs, name))
    if node.return_bool:
        out = drop_name(out)
    return out


def _vector_vector(node: ast.Binary, lhs: Vec, rhs: Vec) -> Vec:
    swap = node.card == "one-to-many"
    many, one = (rhs, lhs) if swap else (lhs, rhs)
    steps = many.present.shape[1]
    many_sig = [signature(lab, node.on, node.matching) for lab in many.labels]
    one_sig = [signature(lab, node.on, node.matching) for lab in one.labels]
    one_ids, one_map = _group(one_sig)
    any_many = many.present.any(axis=0)

    # The "one" side must be unique per match group at every step where both sides have
    # samples ("many-to-many matching not allowed").
    counts = _presence_by_sig(one, one_ids, len(one_map))
    bad = (counts > 1) & any_many[None, :]
    if bad.any():
        sig_idx, step = np.argwhere(bad)[0]
        rows = [i for i in range(len(one)) if one_ids[i] == sig_idx and one.present[i, step]]
        side = "left" if swap else "right"
        sig = next(s for s, j in one_map.items() if j == sig_idx)
        raise ExecutionError(
            f"found duplicate series for the match group {format_labels(sig)} on the {side} "
            f"hand-side of the operation: [{format_labels(one.labels[rows[0]])}, "
            f"{format_labels(one.labels[rows[1]])}];many-to-many matching not allowed: "
            "matching labels must be unique on one side")

    members: dict[int, list[int]] = {}
    for j, sid in enumerate(one_ids):
        members.setdefault(int(sid), []).append(j)
    mi: list[int] = []
    oj: list[int] = []
    for i, s in enumerate(many_sig):
        sid = one_map.get(s)
        if sid is None:
            continue
        for j in members[sid]:
            mi.append(i)
            oj.append(j)
    if not mi:
        return Vec.empty(steps)
    mi_a, oj_a = np.asarray(mi), np.asarray(oj)
    vm, vo = many.values[mi_a], one.values[oj_a]
    present = many.present[mi_a] & one.present[oj_a]
    vl, vr = (vo, vm) if swap else (vm, vo)
    if node.op in ast.COMPARISONS:
        keep = compare(node.op, vl, vr)
        if node.return_bool:
            values = keep.astype(np.float64)
        else:
            values = vl
            present = present & keep
    else:
        values = arith(node.op, vl, vr)
    cache: dict[tuple[int, int], Labels] = {}
    labels = []
    for i, j in zip(mi, oj, strict=True):
        key = (i, j)
        lab = cache.get(key)
        if lab is None:
            lab = cache[key] = result_labels(many.labels[i], one.labels[j], node)
        labels.append(lab)
    if node.card == "one-to-one":
        sig_of_pair = np.asarray([one_ids[j] for j in oj])
        per_sig = np.zeros((len(one_map), steps), np.int64)
        np.add.at(per_sig, sig_of_pair, present.astype(np.int64))
        if (per_sig > 1).any():
            raise ExecutionError("multiple matches for labels: many-to-one matching must be "
                                 "explicit (group_left/group_right)")
        return collapse(labels, values, present)
    try:
        return collapse(labels, values, present)
    except ExecutionError:
        raise ExecutionError("multiple matches for labels: grouping labels must ensure "
                             "unique matches") from None
