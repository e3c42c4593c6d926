"""Parse a gateway query and check every node of it against an allow-list.

The query is parsed with sqlglot's ClickHouse dialect, with one change: function calls are
not mapped onto sqlglot's generic function classes (``toStartOfHour`` would otherwise come
back as ``dateTrunc('HOUR', ...)``), so each call keeps its ClickHouse name, is checked by
that name, and is written back exactly as called. What is checked:

* exactly one statement, and it is a SELECT (with CTEs, subqueries, UNION/EXCEPT/INTERSECT,
  joins, window functions); no SETTINGS, FORMAT, INTO, SAMPLE, PREWHERE or WITH FILL;
* every node is of a kind this module knows, every function is on the allow-list of
  ``functions.py``, and the only table function is ``numbers``, with bounded arguments;
* the right side of IN is a subquery or a list of values, never a bare name: ClickHouse
  reads ``x IN name`` and ``x IN (name)`` as a table;
* regular expressions and LIKE patterns are constant strings of bounded length, and the
  arguments that size a generated value (``repeat``, ``range``, ``numbers``, ...) are
  bounded constants, because ClickHouse checks its limits between blocks and a single
  huge value is built within one;
* ``{name:Type}`` parameters are all supplied, none is left unused, and none uses the
  reserved ``gob_`` prefix.

Which relations a query may read, and how they are confined to the tenant, is
``relations.py``'s job; this module only rejects table references it cannot resolve.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import sqlglot
from sqlglot import exp
from sqlglot.dialects.clickhouse import ClickHouse
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from gob_metrics.errors import BadRequest, PayloadTooLarge
from gob_metrics.gateway import functions

#: Parameter names starting with this are the gateway's own (the tenant, ...).
RESERVED_PREFIX = "gob_"

# sqlglot logs a warning, with the statement in it, for every statement it can only keep
# as an opaque command (SYSTEM, KILL, ...); those are rejected here, and client text does
# not belong in the server log.
logging.getLogger("sqlglot").setLevel(logging.ERROR)


class GatewayClickHouse(ClickHouse):
    """ClickHouse dialect in which every ``name(args)`` call stays an Anonymous node."""

    class Parser(ClickHouse.Parser):
        FUNCTIONS: ClassVar[dict[str, Any]] = {}


class QueryRejected(BadRequest):
    """The query is not one the gateway runs: 400, with the reason and where it is."""

    def __init__(self, reason: str, line: int | None = None, column: int | None = None):
        where = f" (line {line}, column {column})" if line is not None else ""
        super().__init__(f"query rejected: {reason}{where}")
        self.reason = reason
        self.line = line
        self.column = column


@dataclass(frozen=True)
class Bounds:
    """The sizes a query is checked against before it reaches ClickHouse."""

    max_query_bytes: int = 65536
    max_regex_length: int = 1024
    max_generated_elements: int = 1_000_000
    max_parameters: int = 100


# Nodes that may appear anywhere; their children are checked on their own.
_PLAIN_NODES: tuple[type[exp.Expression], ...] = (
    exp.From, exp.Where, exp.Group, exp.Having, exp.Qualify, exp.Order, exp.Ordered,
    exp.Limit, exp.Offset, exp.Distinct, exp.With, exp.CTE, exp.TableAlias, exp.Alias,
    exp.Aliases, exp.Identifier, exp.Star, exp.Literal, exp.Null, exp.Boolean, exp.Var,
    exp.DataType, exp.DataTypeParam, exp.Paren, exp.Tuple, exp.Array, exp.Bracket, exp.Dot,
    exp.Lambda, exp.Window, exp.WindowSpec, exp.Interval, exp.Cast, exp.TryCast, exp.Case,
    exp.If, exp.Extract, exp.StrPosition, exp.Substring, exp.Trim, exp.Struct, exp.Quantile,
    exp.ArgMax, exp.ArgMin, exp.Floor, exp.Ceil, exp.Between, exp.Is, exp.Not, exp.Neg,
    exp.And, exp.Or, exp.Xor, exp.EQ, exp.NEQ, exp.NullSafeEQ, exp.NullSafeNEQ, exp.GT,
    exp.GTE, exp.LT, exp.LTE, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.IntDiv,
    exp.DPipe, exp.BitwiseAnd, exp.BitwiseOr, exp.BitwiseXor, exp.BitwiseNot,
    exp.BitwiseLeftShift, exp.BitwiseRightShift, exp.Exists, exp.Rollup, exp.Cube,
    exp.GroupingSets, exp.Escape, exp.Column, exp.Subquery, exp.Select, exp.Union,
    exp.Except, exp.Intersect, exp.Join, exp.Table, exp.In, exp.Placeholder, exp.Like,
    exp.ILike, exp.RegexpLike, exp.Final, exp.Anonymous, exp.AnonymousAggFunc,
    exp.CombinedAggFunc, exp.ParameterizedAgg, exp.CombinedParameterizedAgg,
)

# Arguments a clause may carry; anything else present (SETTINGS, FORMAT, INTO, PREWHERE,
# SAMPLE, hints, ...) is rejected by name.
_ALLOWED_ARGS: dict[type[exp.Expression], frozenset[str]] = {
    exp.Select: frozenset({"with_", "expressions", "distinct", "from_", "joins", "where",
                           "group", "having", "qualify", "windows", "order", "limit",
                           "offset"}),
    exp.Union: frozenset({"with_", "this", "expression", "distinct", "order", "limit",
                          "offset"}),
    exp.Subquery: frozenset({"this", "alias", "order", "limit", "offset"}),
    exp.Join: frozenset({"this", "on", "side", "kind", "using", "global_", "expressions",
                         "method"}),
    exp.Table: frozenset({"this", "alias"}),
    exp.With: frozenset({"expressions"}),
    exp.CTE: frozenset({"this", "alias", "scalar"}),
    exp.In: frozenset({"this", "expressions", "query", "is_global", "field"}),
    exp.Ordered: frozenset({"this", "desc", "nulls_first"}),
    exp.Placeholder: frozenset({"this", "kind"}),
    exp.Column: frozenset({"this", "table"}),
    exp.TableAlias: frozenset({"this"}),
}
_ALLOWED_ARGS[exp.Except] = _ALLOWED_ARGS[exp.Intersect] = _ALLOWED_ARGS[exp.Union]

_ARG_NAMES = {"with_": "WITH", "into": "INTO", "settings": "SETTINGS", "format": "FORMAT",
              "prewhere": "PREWHERE", "sample": "SAMPLE", "hint": "query hints",
              "with_fill": "WITH FILL", "recursive": "WITH RECURSIVE", "db": "a database",
              "catalog": "a catalog", "field": "IN with a bare name",
              "materialized": "MATERIALIZED", "columns": "column aliases on a table",
              "locks": "locking clauses", "laterals": "LATERAL", "pivots": "PIVOT",
              "exclude": "EXCEPT/EXCLUDE column lists", "options": "OPTION",
              "kind": "SELECT AS ..."}


def _position(node: exp.Expression | None, text: str) -> tuple[int | None, int | None]:
    """1-based line and column where ``node`` (or the first token under it) starts."""
    if node is None:
        return None, None
    starts = [n.meta["start"] for n in node.walk() if isinstance(n.meta.get("start"), int)]
    if not starts:
        return None, None
    start = min(starts)
    line = text.count("\n", 0, start) + 1
    return line, start - (text.rfind("\n", 0, start) + 1) + 1


def reject_at(reason: str, node: exp.Expression | None, text: str) -> QueryRejected:
    """A QueryRejected with the position of ``node`` in ``text``."""
    line, column = _position(node, text)
    return QueryRejected(reason, line, column)


def _offset_position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def parse(text: str, bounds: Bounds) -> exp.Expression:
    """Parse ``text`` into exactly one statement; raise QueryRejected saying why not."""
    size = len(text.encode())
    if size > bounds.max_query_bytes:
        raise PayloadTooLarge(f"query of {size} bytes exceeds sql.max_query_bytes="
                              f"{bounds.max_query_bytes}")
    for i, ch in enumerate(text):
        if ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf", "Cs"):
            raise QueryRejected(f"control or invisible character U+{ord(ch):04X} in the query",
                                *_offset_position(text, i))
    if not text.strip():
        raise QueryRejected("empty query")
    try:
        statements = [s for s in sqlglot.parse(text, dialect=GatewayClickHouse) if s is not None]
    except ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        reason = first.get("description") or str(exc)
        highlight = first.get("highlight")
        if highlight:
            reason += f" near {highlight!r}"
        raise QueryRejected(f"syntax error: {reason}", first.get("line"),
                            _start_column(first)) from exc
    except TokenError as exc:
        raise QueryRejected(f"syntax error: {exc}") from exc
    except RecursionError as exc:
        raise QueryRejected("query is nested too deeply") from exc
    if not statements:
        raise QueryRejected("empty query")
    if len(statements) > 1:
        line, column = _second_statement(text)
        raise QueryRejected(f"exactly one statement is allowed, found {len(statements)}",
                            line, column)
    tree = statements[0]
    root = tree.this if isinstance(tree, exp.Subquery) else tree
    if not isinstance(root, exp.Select | exp.SetOperation):
        kind = type(tree).__name__.upper()
        if isinstance(tree, exp.Command):
            kind = str(tree.this).upper()
        tokens = GatewayClickHouse().tokenize(text)
        line, column = _offset_position(text, tokens[0].start) if tokens else (None, None)
        raise QueryRejected(f"only SELECT queries are allowed, not {kind}", line, column)
    return tree


def _second_statement(text: str) -> tuple[int | None, int | None]:
    """Where the second statement of ``text`` starts: the first token after a semicolon."""
    seen_semicolon = False
    for token in GatewayClickHouse().tokenize(text):
        if token.token_type == TokenType.SEMICOLON:
            seen_semicolon = True
        elif seen_semicolon:
            return _offset_position(text, token.start)
    return None, None


def _start_column(error: Mapping[str, Any]) -> int | None:
    # sqlglot reports the column where the offending token ends.
    col, highlight = error.get("col"), error.get("highlight") or ""
    if isinstance(col, int):
        return max(1, col - len(highlight) + 1)
    return None


def check(tree: exp.Expression, text: str, bounds: Bounds,
          params: Mapping[str, Any]) -> None:
    """Raise QueryRejected unless every node of ``tree`` is allowed (see the module doc)."""
    used: set[str] = set()
    try:
        for node in _walk(tree):
            _check_node(node, text, bounds, params, used)
    except RecursionError as exc:
        raise QueryRejected("query is nested too deeply") from exc
    unused = sorted(set(params) - used)
    if unused:
        raise QueryRejected(f"parameter(s) {', '.join(unused)} not used by the query")


def _walk(tree: exp.Expression) -> Iterator[exp.Expression]:
    """Every node, except the call inside a table function (checked with its table)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        children = list(node.iter_expressions())
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Func):
            children = [c for c in children if c is not node.this]
            children.extend(node.this.expressions)
        stack.extend(reversed(children))


def _check_node(node: exp.Expression, text: str, bounds: Bounds,
                params: Mapping[str, Any], used: set[str]) -> None:
    if not isinstance(node, _PLAIN_NODES):
        if isinstance(node, exp.Func):
            name = node.sql_name() if not isinstance(node, exp.Anonymous) else node.name
            raise reject_at(f"function {name} is not allowed", node, text)
        raise reject_at(f"{_describe(node)} is not allowed", node, text)
    allowed = _ALLOWED_ARGS.get(type(node))
    if allowed is not None:
        for key, value in node.args.items():
            if key not in allowed and value not in (None, False, [], ""):
                what = _ARG_NAMES.get(key, key.upper())
                if isinstance(value, list) and isinstance(value[0], exp.Expression):
                    value = value[0]
                where = value if isinstance(value, exp.Expression) else node
                raise reject_at(f"{what} is not allowed here", where, text)
    if isinstance(node, exp.Identifier):
        _check_identifier(node, text)
    elif isinstance(node, exp.Placeholder):
        _check_placeholder(node, text, params, used)
    elif isinstance(node, exp.In):
        _check_in(node, text)
    elif isinstance(node, exp.Anonymous | exp.AnonymousAggFunc | exp.CombinedAggFunc
                    | exp.ParameterizedAgg | exp.CombinedParameterizedAgg):
        _check_call(node, text, bounds, params)
    elif isinstance(node, exp.Like | exp.ILike | exp.RegexpLike):
        _check_pattern(node.expression, "pattern", text, bounds, params)
    elif isinstance(node, exp.Table):
        _check_table_function(node, text, bounds, params)
    elif isinstance(node, exp.Join):
        kind = (node.args.get("kind") or "").upper()
        if kind not in ("", "INNER", "OUTER", "CROSS", "SEMI", "ANTI", "ANY", "ALL", "ASOF",
                        "ARRAY"):
            raise reject_at(f"{kind} JOIN is not allowed", node, text)
        if kind != "ARRAY":
            _check_table_expression(node.this, text)
    elif isinstance(node, exp.From):
        _check_table_expression(node.this, text)


def _check_table_expression(node: exp.Expression, text: str) -> None:
    """What FROM and JOIN read must have parsed as a table, a subquery or a table function.

    sqlglot parses some positions (a FROM inside a subquery of ARRAY JOIN) into a column,
    which the rewrite would not recognise as a table; ClickHouse reads it as one.
    """
    inner = node.this if isinstance(node, exp.Final) else node
    if not isinstance(inner, exp.Table | exp.Subquery):
        raise reject_at(f"cannot read from {type(inner).__name__.lower()} here", node, text)


def _describe(node: exp.Expression) -> str:
    names = {exp.Command: "statement", exp.Hint: "query hint", exp.WithFill: "WITH FILL",
             exp.TableSample: "SAMPLE", exp.Into: "INTO", exp.Prewhere: "PREWHERE"}
    for cls, label in names.items():
        if isinstance(node, cls):
            return label
    return f"syntax {type(node).__name__}"


def _check_identifier(node: exp.Identifier, text: str) -> None:
    name = node.name
    if not name or len(name) > 256:
        raise reject_at("identifiers must be 1 to 256 characters", node, text)
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            raise reject_at(f"identifier with control character U+{ord(ch):04X}", node, text)


def _check_placeholder(node: exp.Placeholder, text: str, params: Mapping[str, Any],
                       used: set[str]) -> None:
    name = node.name
    if not isinstance(node.args.get("kind"), exp.DataType) or not name:
        raise reject_at("parameters are written {name:Type}", node, text)
    if name.startswith(RESERVED_PREFIX):
        raise reject_at(f"parameter names starting with {RESERVED_PREFIX!r} are reserved",
                      node, text)
    if name not in params:
        raise reject_at(f"parameter {name} has no value", node, text)
    used.add(name)


def _check_in(node: exp.In, text: str) -> None:
    field = node.args.get("field")
    if field is not None and not isinstance(field, exp.Placeholder):  # x IN {ids:Array(T)}
        raise reject_at("IN needs a subquery or a list of values: ClickHouse reads "
                        "IN name as a table", node, text)
    if node.args.get("query") is not None:
        return
    items = node.expressions
    if len(items) == 1:
        item = items[0]
        while isinstance(item, exp.Paren):
            item = item.this
        if isinstance(item, exp.Column | exp.Dot | exp.Identifier):
            raise reject_at("IN needs a subquery or a list of values: ClickHouse reads "
                          "IN name as a table", node, text)


def _call_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Anonymous):
        return node.name
    return str(node.this) if isinstance(node.this, str) else node.name


def _check_call(node: exp.Expression, text: str, bounds: Bounds,
                params: Mapping[str, Any]) -> None:
    name = _call_name(node)
    aggregate = isinstance(node, exp.AnonymousAggFunc | exp.CombinedAggFunc
                           | exp.ParameterizedAgg | exp.CombinedParameterizedAgg)
    ok = (functions.aggregate_base(name) is not None if aggregate
          else functions.is_allowed(name))
    if not ok:
        raise reject_at(f"function {name} is not allowed", node, text)
    canonical = functions.canonical(name)
    args = node.expressions
    index = functions.REGEX_ARGUMENT.get(canonical)
    if index is not None and index < len(args):
        _check_pattern(args[index], f"the pattern of {name}", text, bounds, params)
    for index in functions.SIZE_ARGUMENTS.get(canonical, ()):
        if index < len(args):
            _check_size(args[index], f"argument {index + 1} of {name}", text, bounds, params)


def _constant(node: exp.Expression, params: Mapping[str, Any]) -> tuple[bool, Any]:
    """(True, value) when ``node`` is a literal, a negated number or a parameter."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Literal):
        if node.is_string:
            return True, node.this
        try:
            return True, float(node.this.replace("_", "")) if any(
                c in node.this for c in ".eE") else int(node.this.replace("_", ""), 0)
        except ValueError:
            return False, None
    if isinstance(node, exp.Neg):
        ok, value = _constant(node.this, params)
        return (True, -value) if ok and isinstance(value, int | float) else (False, None)
    if isinstance(node, exp.Placeholder) and node.name in params:
        return True, params[node.name]
    return False, None


def _check_pattern(node: exp.Expression | None, what: str, text: str, bounds: Bounds,
                   params: Mapping[str, Any]) -> None:
    if node is None:
        return
    ok, value = _constant(node, params)
    if not ok or not isinstance(value, str):
        raise reject_at(f"{what} must be a constant string", node, text)
    if len(value.encode()) > bounds.max_regex_length:
        raise reject_at(f"{what} has {len(value.encode())} bytes, more than "
                      f"sql.max_regex_length={bounds.max_regex_length}", node, text)


def _as_int(node: exp.Expression, params: Mapping[str, Any]) -> int | None:
    ok, value = _constant(node, params)
    if not ok or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _check_size(node: exp.Expression, what: str, text: str, bounds: Bounds,
                params: Mapping[str, Any]) -> None:
    number = _as_int(node, params)
    if number is None:
        raise reject_at(f"{what} must be a constant integer", node, text)
    if abs(number) > bounds.max_generated_elements:
        raise reject_at(f"{what} is {number}, more than sql.max_generated_elements="
                      f"{bounds.max_generated_elements}", node, text)


def _check_table_function(node: exp.Table, text: str, bounds: Bounds,
                          params: Mapping[str, Any]) -> None:
    call = node.this
    if not isinstance(call, exp.Func):
        return
    name = _call_name(call)
    if name not in functions.TABLE_FUNCTIONS:
        raise reject_at(f"table function {name} is not allowed (only numbers)", node, text)
    args = call.expressions
    if not 1 <= len(args) <= 3:
        raise reject_at("numbers takes 1 to 3 arguments", node, text)
    count = args[0] if len(args) == 1 else args[1]
    _check_size(count, "the row count of numbers", text, bounds, params)
    for arg in args:
        if _as_int(arg, params) is None:
            raise reject_at("the arguments of numbers must be constant integers", arg, text)
