"""A second opinion from ClickHouse's own parser on the SQL about to run.

validate.py checks the tree sqlglot parsed; ClickHouse runs what its parser makes of the
generated text. Where the two parsers disagree, a check on one tree says nothing about the
other (sqlglot once read ``FROM db.table`` inside an ARRAY JOIN subquery as a column, which
the rewrite then left alone). So before a query runs, ``EXPLAIN AST`` (parsing only,
nothing is read) shows ClickHouse's tree, and it must satisfy the same rules:

* every table it reads is one of the stored tables the rewrite inserted, exactly as many
  times as the rewrite inserted them, or a renamed CTE, or a subquery, or ``numbers``;
* every function it calls is on the allow-list, or is the function ClickHouse turns an
  operator into (``a = b`` is ``equals``, ``x[1]`` is ``arrayElement``, ...);
* the right side of IN is never a bare name (ClickHouse reads ``x IN name`` as a table).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gob_metrics.gateway import functions
from gob_metrics.gateway.validate import QueryRejected

#: Functions ClickHouse's parser writes for operators and syntax (never called by name in
#: an accepted query: validate.py rejects those names as calls).
OPERATOR_FUNCTIONS = frozenset({
    "CAST", "_CAST",  # CAST(x AS T), x::T
    "caseWithExpression",  # CASE x WHEN ...
    "exists", "lambda", "isDistinctFrom", "isNotDistinctFrom",
    "in", "notIn", "globalIn", "globalNotIn",
})
_IN_FUNCTIONS = frozenset({"in", "notIn", "globalIn", "globalNotIn", "nullIn", "notNullIn",
                           "globalNullIn", "globalNotNullIn"})


@dataclass
class _Node:
    kind: str
    name: str
    children: list[_Node] = field(default_factory=list)


def _parse_dump(dump: str) -> _Node:
    """EXPLAIN AST output (one node per line, indented one space per level) as a tree."""
    root = _Node("root", "")
    stack: list[tuple[int, _Node]] = [(-1, root)]
    for line in dump.splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip(" "))
        words = line.strip().split(" ")
        kind = words[0]
        name = words[1] if len(words) > 1 and not words[1].startswith("(") else ""
        node = _Node(kind, name)
        while stack[-1][0] >= depth:
            stack.pop()
        stack[-1][1].children.append(node)
        stack.append((depth, node))
    return root


def check_ast(dump: str, stored_tables: Mapping[str, int], ctes: frozenset[str]) -> None:
    """Raise QueryRejected unless ClickHouse's tree ``dump`` keeps the rules above.

    ``stored_tables`` maps each qualified stored table the rewrite inserted
    (``gob.samples``) to how many times; ``ctes`` are the renamed CTE names.
    """
    seen: Counter[str] = Counter()
    stack = [(_parse_dump(dump), "")]
    while stack:
        node, parent = stack.pop()
        if parent == "TableExpression":
            if node.kind == "TableIdentifier":
                if node.name in stored_tables:
                    seen[node.name] += 1
                elif node.name not in ctes:
                    raise _differ(f"it reads table {node.name}")
            elif node.kind == "Function" and node.name not in functions.TABLE_FUNCTIONS:
                raise _differ(f"it calls table function {node.name}")
        elif node.kind == "Function":
            if not (node.name in OPERATOR_FUNCTIONS or functions.is_allowed(node.name)):
                raise _differ(f"it calls function {node.name}")
            if node.name in _IN_FUNCTIONS and node.children:
                args = node.children[0].children
                if len(args) == 2 and args[1].kind in ("Identifier", "TableIdentifier"):
                    raise _differ("IN reads a table by name")
        elif node.kind == "TableIdentifier":
            raise _differ(f"it names table {node.name} outside FROM")
        stack.extend((child, node.kind) for child in node.children)
    extra = {t: n for t, n in seen.items() if n > stored_tables.get(t, 0)}
    if extra:
        raise _differ(f"it reads {', '.join(sorted(extra))} more often than the rewrite put "
                      "it there")


def _differ(what: str) -> QueryRejected:
    return QueryRejected(f"ClickHouse parses the query differently from the gateway: {what}")


def explain_sql(sql: str) -> str:
    return f"EXPLAIN AST {sql}"


__all__: list[Any] = ["OPERATOR_FUNCTIONS", "check_ast", "explain_sql"]
