"""Plan and evaluate a parsed PromQL query over every step at once.

Planning walks the tree with the time span each node is evaluated over (subqueries open a
new step grid, ``@`` pins a time, ``offset`` shifts it) and gives every selector the one
time range it needs: ``[first - lookback, last]`` for an instant selector, ``[first -
range, last]`` for a range selector. Each selector is then fetched with one SQL round trip
(``read.select``), all concurrently, before evaluation starts; evaluation itself is
numpy over ``(series, steps)`` arrays and never goes back to storage.

Push-down (what ClickHouse does, because the result is provably the same):

* series matching: the matchers become SQL over ``series`` (or the lookup cache's ids),
  and with the label cache a repeated selection reads no ``series`` row at all;
* time-range filtering: each selector's single range, widened for the lookback delta,
  ``offset``, ``@`` and subquery grids, is a ``timestamp`` range on the sort key, so
  only the granules of the selected series and times are read;
* deduplication (``FINAL``), grouping the samples per series, putting the series in
  label order, and one selection for selectors with the same matchers.

Refused, each for a reason that breaks "provably identical" (values are computed in
numpy from the exact samples instead):

* ``rate``/``increase``/``delta``: the extrapolation needs each window's exact first and
  last sample times and sample count, and counter-reset corrections are added one by one
  in sample order; histogram_quantile compares neighbouring buckets' rates exactly, so a
  differently rounded sum changes answers;
* ``sum_over_time``/``avg_over_time``/``stddev``/``stdvar_over_time`` and the ``sum``/
  ``avg``/``stddev`` aggregations: ClickHouse adds floats in its own (vectorised, per
  thread) order, Prometheus in sample or series order (avg as a running mean);
* ``min``/``max``/``count``/``last_over_time`` (exact in SQL): windows overlap whenever
  the range exceeds the step, so SQL would have to repeat every sample in range/step
  windows or pre-aggregate per step interval with Prometheus' closed ``[t - range, t]``
  edges and NaN rule (a NaN is kept only while every value is NaN); not done yet;
* instant selectors and every aggregation over them: each step takes the latest sample
  within the lookback delta unless it is a staleness marker (one NaN bit pattern), an
  as-of lookup per step that SQL would do per (series, step) row, not cheaper than numpy;
* ``topk``/``bottomk``/``sort``/``quantile``: NaN ordering and Prometheus' tie order;
  ``histogram_quantile``, ``label_*``, binary operators: they work on evaluated vectors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gob_metrics.errors import ExecutionError, QueryTimeout
from gob_metrics.promql import ast
from gob_metrics.promql.values import (
    Block,
    Vec,
    Windows,
    drop_name,
    is_stale,
    windows,
)
from gob_metrics.read import select
from gob_metrics.storage.base import Storage
from gob_metrics.tenants.lookup_cache import LookupCache

Value = Any  # np.ndarray (scalar per step) | Vec | Windows | str


class TooManySamples(ExecutionError):
    pass


@dataclass(frozen=True)
class Settings:
    """Evaluation settings, from the ``query`` configuration and request parameters."""

    lookback_ms: int = 300_000
    max_samples: int = 50_000_000
    default_step_ms: int = 60_000
    timeout: float = 120.0
    limits: select.Limits = field(default_factory=select.Limits)


@dataclass
class Query:
    node: ast.Node
    start_ms: int
    end_ms: int
    step_ms: int  # 0 for an instant query

    @property
    def steps(self) -> np.ndarray:
        if self.step_ms == 0:
            return np.array([self.start_ms], np.int64)
        return np.arange(self.start_ms, self.end_ms + 1, self.step_ms, dtype=np.int64)


def _go_div(a: int, b: int) -> int:
    """Go's integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def subquery_grid(node: ast.Subquery, first: int, last: int, default_step: int
                  ) -> tuple[int, int, int]:
    """(start, end, step) of the inner evaluation of a subquery whose outer evaluation
    spans [first, last]: Prometheus starts at the first multiple of the step after
    ``first - offset - range``."""
    step = node.step or default_step
    lower = first - node.offset - node.range
    start = step * _go_div(lower, step)
    if start < lower:
        start += step
    return start, last - node.offset, step


class Evaluator:
    """Evaluates one query: plan, fetch (async), then pure numpy evaluation."""

    def __init__(self, query: Query, settings: Settings):
        self.query = query
        self.settings = settings
        self.ranges: dict[ast.VectorSelector, list[int]] = {}
        self.data: dict[ast.VectorSelector, Block] = {}
        self.deadline = time.monotonic() + settings.timeout
        self.samples = 0

    # ------------------------------------------------------------------------- plan

    def _at(self, at: ast.At | None) -> int | None:
        return None if at is None else at.resolve(self.query.start_ms, self.query.end_ms)

    def _need(self, sel: ast.VectorSelector, lo: int, hi: int) -> None:
        cur = self.ranges.get(sel)
        if cur is None:
            self.ranges[sel] = [lo, hi]
        else:
            cur[0], cur[1] = min(cur[0], lo), max(cur[1], hi)

    def plan(self, node: ast.Node, first: int, last: int) -> None:
        """Record the time range every selector under ``node`` needs when ``node`` is
        evaluated at times in [first, last]."""
        if isinstance(node, ast.VectorSelector | ast.MatrixSelector):
            sel = node if isinstance(node, ast.VectorSelector) else node.selector
            at = self._at(sel.at)
            lo, hi = (at, at) if at is not None else (first, last)
            width = self.settings.lookback_ms if isinstance(node, ast.VectorSelector) \
                else node.range
            self._need(sel, lo - sel.offset - width, hi - sel.offset)
        elif isinstance(node, ast.Subquery):
            at = self._at(node.at)
            lo, hi = (at, at) if at is not None else (first, last)
            start, end, _ = subquery_grid(node, lo, hi, self.settings.default_step_ms)
            self.plan(node.expr, start, end)
        elif isinstance(node, ast.Paren | ast.Negate):
            self.plan(node.expr, first, last)
        elif isinstance(node, ast.Binary):
            self.plan(node.lhs, first, last)
            self.plan(node.rhs, first, last)
        elif isinstance(node, ast.Aggregate):
            self.plan(node.expr, first, last)
            if node.param is not None:
                self.plan(node.param, first, last)
        elif isinstance(node, ast.Call):
            for arg in node.args:
                self.plan(arg, first, last)

    async def fetch(self, storage: Storage, tenant: str,
                    lookups: LookupCache | None = None) -> None:
        """One selection per selector, all in flight at once (series ids from the label
        lookup cache when ``lookups`` is given)."""
        q = self.query
        self.plan(q.node, q.start_ms, q.end_ms)
        # Selectors with the same matchers (``rate(x[1m]) / sum(rate(x[1m]))``) are
        # fetched once over the union of their ranges and share the block: every use
        # locates its own windows by time, so samples outside its range are never read.
        shared: dict[tuple, list[ast.VectorSelector]] = {}
        for sel in self.ranges:
            key = tuple(sorted((m.name, m.type.value, m.value) for m in sel.matchers))
            shared.setdefault(key, []).append(sel)
        groups = list(shared.values())

        async def one(sels: list[ast.VectorSelector]) -> Block:
            lo = min(self.ranges[s][0] for s in sels)
            hi = max(self.ranges[s][1] for s in sels)
            found = await select.select_columns(
                storage, tenant, select.new_selector(sels[0].matchers, lo, hi),
                self.settings.limits, lookups)
            return Block(found.labels, found.timestamps, found.values, found.offsets)

        blocks = await asyncio.gather(*(one(g) for g in groups))
        for sels, block in zip(groups, blocks, strict=True):
            self.count_samples(len(block.ts))
            for sel in sels:
                self.data[sel] = block

    # ------------------------------------------------------------------------ limits

    def count_samples(self, n: int) -> None:
        self.samples += n
        limit = self.settings.max_samples
        if limit and self.samples > limit:
            raise TooManySamples(
                "query processing would load too many samples into memory in query "
                f"execution (query.max_samples={limit}): narrow the selectors, the time "
                "range or the resolution, or raise the limit")

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise QueryTimeout(
                f"query timed out in expression evaluation (query.timeout="
                f"{self.settings.timeout:g}s or the timeout parameter)")

    # ---------------------------------------------------------------------- evaluate

    def eval(self, node: ast.Node, ts: np.ndarray) -> Value:
        """Evaluate ``node`` at every time of ``ts`` (int64 ms)."""
        self.check_time()
        handler = _HANDLERS.get(type(node))
        if handler is None:  # pragma: no cover - every node type has one
            raise ExecutionError(f"unsupported expression {type(node).__name__}")
        out = handler(self, node, ts)
        if isinstance(out, Vec):
            self.count_points(out)
        return out

    def count_points(self, vec: Vec) -> None:
        limit = self.settings.max_samples
        if limit and int(vec.present.sum()) > limit:
            self.count_samples(limit + 1)

    def eval_vector_selector(self, node: ast.VectorSelector, ts: np.ndarray,
                             sample_times: bool = False) -> Vec:
        """Per series and step, the latest sample in ``[t - lookback, t]`` unless it is a
        staleness marker. With ``sample_times`` the values are the samples' timestamps
        in seconds (what ``timestamp(selector)`` returns)."""
        block = self.data[node]
        at = self._at(node.at)
        te = (np.full(len(ts), at, np.int64) if at is not None else ts) - node.offset
        w = windows(block, te, self.settings.lookback_ms, ts)
        last = np.maximum(w.hi - 1, 0)
        if len(block.ts) == 0:
            return Vec(list(block.labels), np.zeros(w.lo.shape), np.zeros(w.lo.shape, bool))
        values = block.values[last]
        present = (w.hi > w.lo) & ~is_stale(values)
        if sample_times:
            values = block.ts[last] / 1000.0
        return Vec(list(block.labels), values, present)

    def eval_range(self, node: ast.Node, ts: np.ndarray) -> Windows:
        """A range-vector argument: a matrix selector or a subquery, as windows."""
        node = ast.unwrap(node)
        if isinstance(node, ast.MatrixSelector):
            sel = node.selector
            at = self._at(sel.at)
            te = (np.full(len(ts), at, np.int64) if at is not None else ts) - sel.offset
            block = self.data[sel].without_stale()
            return windows(block, te, node.range, ts)
        if isinstance(node, ast.Subquery):
            at = self._at(node.at)
            outer = np.full(len(ts), at, np.int64) if at is not None else ts
            start, end, step = subquery_grid(node, int(outer.min()), int(outer.max()),
                                             self.settings.default_step_ms)
            inner_ts = np.arange(start, end + 1, step, dtype=np.int64)
            inner = self.eval(node.expr, inner_ts)
            if isinstance(inner, np.ndarray):  # pragma: no cover - the parser refuses
                raise ExecutionError("subqueries must be over instant vectors")
            inner = inner.nonempty()
            series = [(inner_ts[p], v[p]) for v, p in zip(inner.values, inner.present,
                                                        strict=True)]
            block = Block.build(list(inner.labels), series)
            self.count_samples(len(block.ts))
            return windows(block, outer - node.offset, node.range, ts)
        raise ExecutionError(f"expected a range vector, got {type(node).__name__}")


def _number(ev: Evaluator, node: ast.Number, ts: np.ndarray) -> np.ndarray:
    return np.full(len(ts), node.value)


def _string(ev: Evaluator, node: ast.String, ts: np.ndarray) -> str:
    return node.value


def _paren(ev: Evaluator, node: ast.Paren, ts: np.ndarray) -> Value:
    return ev.eval(node.expr, ts)


def _negate(ev: Evaluator, node: ast.Negate, ts: np.ndarray) -> Value:
    val = ev.eval(node.expr, ts)
    if isinstance(val, np.ndarray):
        return -val
    from gob_metrics.promql.values import collapse

    return collapse([drop_name(lab) for lab in val.labels], -val.values, val.present)


def _vector_selector(ev: Evaluator, node: ast.VectorSelector, ts: np.ndarray) -> Vec:
    return ev.eval_vector_selector(node, ts)


def _range(ev: Evaluator, node: ast.Node, ts: np.ndarray) -> Windows:
    return ev.eval_range(node, ts)


def _binary(ev: Evaluator, node: ast.Binary, ts: np.ndarray) -> Value:
    from gob_metrics.promql.binary import evaluate

    return evaluate(ev, node, ts)


def _aggregate(ev: Evaluator, node: ast.Aggregate, ts: np.ndarray) -> Vec:
    from gob_metrics.promql.aggregate import evaluate

    return evaluate(ev, node, ts)


def _call(ev: Evaluator, node: ast.Call, ts: np.ndarray) -> Value:
    from gob_metrics.promql.functions import call

    return call(ev, node, ts)


_HANDLERS: dict[type, Callable[[Evaluator, Any, np.ndarray], Value]] = {
    ast.Number: _number,
    ast.String: _string,
    ast.Paren: _paren,
    ast.Negate: _negate,
    ast.VectorSelector: _vector_selector,
    ast.MatrixSelector: _range,
    ast.Subquery: _range,
    ast.Binary: _binary,
    ast.Aggregate: _aggregate,
    ast.Call: _call,
}
