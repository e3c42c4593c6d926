"""PromQL text -> this package's own syntax tree, with Prometheus 2.42's language.

``promql-parser`` (a Rust port that tracks newer Prometheus versions) does the parsing and
type checking; this module converts its tree into plain dataclasses (stable identities the
planner can key fetches on, durations and ``@`` times in milliseconds) and refuses, with
``bad_data`` like a Prometheus 2.42 parse error, what 2.42 does not have: functions and
aggregations added later, ``{a="b" or c="d"}`` selectors and ``fill`` modifiers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import promql_parser as pp

from gob_metrics.errors import BadRequest
from gob_metrics.read.matchers import METRIC_NAME, Matcher, MatchType, new_matcher

SCALAR, VECTOR, MATRIX, STRING = "scalar", "vector", "matrix", "string"

#: Prometheus 2.42's functions (promql/parser/functions.go at v2.42.0); the parser knows
#: more, and a query using one of those must fail as it does on 2.42.
FUNCTIONS_2_42 = frozenset([
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "days_in_month", "day_of_month", "day_of_week", "day_of_year", "deg",
    "delta", "deriv", "exp", "floor", "histogram_count", "histogram_sum", "histogram_fraction",
    "histogram_quantile", "holt_winters", "hour", "idelta", "increase", "irate", "label_replace",
    "label_join", "last_over_time", "ln", "log10", "log2", "max_over_time", "min_over_time",
    "minute", "month", "pi", "predict_linear", "present_over_time", "quantile_over_time", "rad",
    "rate", "resets", "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_desc", "sqrt",
    "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp",
    "vector", "year"
])

AGGREGATIONS_2_42 = frozenset([
    "sum", "avg", "count", "min", "max", "group", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values"
])

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OPS = {"MatchOp.Equal": MatchType.EQ, "MatchOp.NotEqual": MatchType.NEQ,
        "MatchOp.Re": MatchType.RE, "MatchOp.NotRe": MatchType.NRE}


def _register_holt_winters() -> None:
    # Prometheus 3 renamed holt_winters to double_exponential_smoothing; 2.42 has the old
    # name, which the parser no longer knows.
    fn = pp.Function("holt_winters", [pp.ValueType.Matrix, pp.ValueType.Scalar,
                                      pp.ValueType.Scalar], pp.ValueType.Vector)
    with contextlib.suppress(ValueError):  # already registered, or built in
        pp.register_extra_functions([fn])


_register_holt_winters()


# ----------------------------------------------------------------------------- nodes


@dataclass(eq=False)
class Node:
    """Base of every node; ``kind`` is the PromQL value type it evaluates to."""

    @property
    def kind(self) -> str:
        raise NotImplementedError


@dataclass(eq=False)
class Number(Node):
    value: float
    kind = SCALAR  # type: ignore[assignment]


@dataclass(eq=False)
class String(Node):
    value: str
    kind = STRING  # type: ignore[assignment]


@dataclass(eq=False)
class At:
    """An ``@`` modifier: a fixed time, or the query's start()/end()."""

    ms: int | None = None
    start: bool = False
    end: bool = False

    def resolve(self, start_ms: int, end_ms: int) -> int:
        if self.start:
            return start_ms
        if self.end:
            return end_ms
        assert self.ms is not None
        return self.ms


@dataclass(eq=False)
class VectorSelector(Node):
    matchers: tuple[Matcher, ...]
    offset: int = 0
    at: At | None = None
    text: str = ""
    kind = VECTOR  # type: ignore[assignment]


@dataclass(eq=False)
class MatrixSelector(Node):
    selector: VectorSelector
    range: int
    kind = MATRIX  # type: ignore[assignment]


@dataclass(eq=False)
class Subquery(Node):
    expr: Node
    range: int
    step: int  # 0: the default evaluation interval
    offset: int = 0
    at: At | None = None
    kind = MATRIX  # type: ignore[assignment]


@dataclass(eq=False)
class Paren(Node):
    expr: Node

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.expr.kind


@dataclass(eq=False)
class Negate(Node):
    expr: Node

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.expr.kind


@dataclass(eq=False)
class Binary(Node):
    op: str
    lhs: Node
    rhs: Node
    return_bool: bool = False
    #: "one-to-one", "many-to-one" (group_left), "one-to-many" (group_right), "many-to-many"
    card: str = "one-to-one"
    on: bool = False
    matching: tuple[str, ...] = ()
    include: tuple[str, ...] = ()

    @property
    def kind(self) -> str:  # type: ignore[override]
        if self.lhs.kind == SCALAR and self.rhs.kind == SCALAR:
            return SCALAR
        return VECTOR


@dataclass(eq=False)
class Aggregate(Node):
    op: str
    expr: Node
    param: Node | None = None
    without: bool = False
    grouping: tuple[str, ...] = ()
    kind = VECTOR  # type: ignore[assignment]


@dataclass(eq=False)
class Call(Node):
    name: str
    args: list[Node] = field(default_factory=list)
    return_kind: str = VECTOR

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.return_kind


COMPARISONS = frozenset(["==", "!=", "<", ">", "<=", ">="])
SET_OPS = frozenset(["and", "or", "unless"])


# ---------------------------------------------------------------------------- convert


def ms(delta: timedelta | None) -> int:
    """A parser duration in milliseconds (negative offsets stay negative)."""
    if delta is None:
        return 0
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _at(raw: pp.AtModifier | None) -> At | None:
    if raw is None:
        return None
    if raw.type == pp.AtModifierType.Start:
        return At(start=True)
    if raw.type == pp.AtModifierType.End:
        return At(end=True)
    try:
        when = raw.at
    except BaseException as exc:  # pyo3 panics (a BaseException) on times before 1970
        raise BadRequest("@ timestamps before 1970-01-01 are not supported") from exc
    assert when is not None
    return At(ms=(when - _EPOCH) // timedelta(milliseconds=1))


def _selector(raw: pp.VectorSelector) -> VectorSelector:
    if raw.matchers.or_matchers:
        raise BadRequest(f"parse error: `or` in a selector is not supported by PromQL 2.42: "
                         f"{raw}")
    matchers: list[Matcher] = []
    if raw.name is not None:
        matchers.append(new_matcher(MatchType.EQ, METRIC_NAME, raw.name))
    for m in raw.matchers.matchers:
        matchers.append(new_matcher(_OPS[str(m.op)], m.name, m.value))
    return VectorSelector(tuple(matchers), ms(raw.offset), _at(raw.at), str(raw))


def _kind(value_type: pp.ValueType) -> str:
    return {"Vector": VECTOR, "Scalar": SCALAR, "Matrix": MATRIX, "String": STRING}[
        str(value_type).rsplit(".", 1)[-1]]


def convert(raw: pp.Expr) -> Node:
    """Convert a promql-parser tree, refusing what Prometheus 2.42 cannot parse."""
    if isinstance(raw, pp.NumberLiteral):
        return Number(float(raw.val))
    if isinstance(raw, pp.StringLiteral):
        return String(raw.val)
    if isinstance(raw, pp.VectorSelector):
        return _selector(raw)
    if isinstance(raw, pp.MatrixSelector):
        return MatrixSelector(_selector(raw.vector_selector), ms(raw.range))
    if isinstance(raw, pp.SubqueryExpr):
        return Subquery(convert(raw.expr), ms(raw.range), ms(raw.step), ms(raw.offset),
                        _at(raw.at))
    if isinstance(raw, pp.ParenExpr):
        return Paren(convert(raw.expr))
    if isinstance(raw, pp.UnaryExpr):
        return Negate(convert(raw.expr))
    if isinstance(raw, pp.BinaryExpr):
        return _binary(raw)
    if isinstance(raw, pp.AggregateExpr):
        op = str(raw.op)
        if op not in AGGREGATIONS_2_42:
            raise BadRequest(f"parse error: unknown aggregation {op!r} (not in PromQL 2.42)")
        param = convert(raw.param) if raw.param is not None else None
        mod = raw.modifier
        without = mod is not None and mod.type == pp.AggModifierType.Without
        grouping = tuple(mod.labels) if mod is not None else ()
        return Aggregate(op, convert(raw.expr), param, without, grouping)
    if isinstance(raw, pp.Call):
        name = raw.func.name
        if name not in FUNCTIONS_2_42:
            raise BadRequest(f'parse error: unknown function with name "{name}"')
        return Call(name, [convert(a) for a in raw.args], _kind(raw.func.return_type))
    raise BadRequest(f"parse error: unsupported expression {raw}")  # pragma: no cover


def _binary(raw: pp.BinaryExpr) -> Binary:
    op = str(raw.op)
    node = Binary(op, convert(raw.lhs), convert(raw.rhs))
    mod = raw.modifier
    if mod is None:
        if op in SET_OPS:
            node.card = "many-to-many"
        return node
    fill = mod.fill_values
    if fill is not None and (fill.lhs is not None or fill.rhs is not None):
        raise BadRequest("parse error: fill modifiers are not supported by PromQL 2.42")
    node.return_bool = bool(mod.return_bool)
    node.card = {"OneToOne": "one-to-one", "ManyToOne": "many-to-one",
                 "OneToMany": "one-to-many", "ManyToMany": "many-to-many"}[
        str(mod.card).rsplit(".", 1)[-1]]
    if mod.matching is not None:
        node.on = mod.matching.type == pp.LabelModifierType.Include
        node.matching = tuple(mod.matching.labels)
    node.include = tuple(mod.group_labels or ())
    return node


def parse(query: str) -> Node:
    """Parse a PromQL query; syntax and type errors are BadRequest (bad_data, 400)."""
    try:
        raw = pp.parse(query)
    except ValueError as exc:
        raise BadRequest(f"parse error: {exc}") from None
    except BaseException as exc:  # a panic inside the Rust parser
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise BadRequest(f"parse error: {exc}") from None
    return convert(raw)


def unwrap(node: Node) -> Node:
    """The node under any parentheses."""
    while isinstance(node, Paren):
        node = node.expr
    return node
