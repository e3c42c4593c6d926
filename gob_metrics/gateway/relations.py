"""The relations a tenant's SQL may read, and the rewrite that confines every read of
them to the tenant.

A query names ``samples``, ``series``, ``metadata`` or ``samples_labeled``; each such table
reference, wherever it is (FROM, JOIN, a CTE body, a subquery in WHERE, IN or an array
function, any UNION branch), is replaced by a subquery over the stored table filtered on
``tenant = {gob_tenant:String}``. The tenant is a bound parameter, never text in the query,
and the subqueries do not select the tenant column, so no expression in the user's query
can see or compare it. The subqueries also deduplicate: the tables are
ReplacingMergeTree, which may hold a row twice until a merge, so they read with FINAL.

Names of CTEs are renamed to ``gob_cte_<n>`` (with the old name kept as the table alias),
so a reference the rewrite treats as a CTE can only ever resolve to that CTE: if
ClickHouse's scoping disagreed, it would find no such table, never a stored one.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field

from sqlglot import exp

from gob_metrics.gateway.validate import GatewayClickHouse, QueryRejected, reject_at
from gob_metrics.storage import schema

#: The bound parameter every relation is filtered on.
TENANT_PARAM = "gob_tenant"
_TENANT = f"tenant = {{{TENANT_PARAM}:String}}"
_CTE_PREFIX = "gob_cte_"

_SAMPLES = f"SELECT series_id, timestamp, value FROM {{db}}.{schema.SAMPLES} FINAL WHERE {_TENANT}"
_SERIES = (f"SELECT series_id, metric_name, labels FROM {{db}}.{schema.SERIES} FINAL "
           f"WHERE {_TENANT}")

#: Relation name -> the SELECT it stands for ({db} is the configured database).
RELATIONS: dict[str, str] = {
    "samples": _SAMPLES,
    "series": _SERIES,
    "metadata": (f"SELECT metric_family_name, type, help, unit, updated_at "
                 f"FROM {{db}}.{schema.METADATA} FINAL WHERE {_TENANT}"),
    "samples_labeled": (
        "SELECT s.series_id AS series_id, r.metric_name AS metric_name, r.labels AS labels, "
        "s.timestamp AS timestamp, s.value AS value "
        f"FROM ({_SAMPLES}) AS s INNER JOIN ({_SERIES}) AS r ON r.series_id = s.series_id"
    ),
}

#: Relation name -> its columns and ClickHouse types, as documented in docs/sql-gateway.md.
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "samples": [("series_id", "UInt128"), ("timestamp", "Int64"), ("value", "Float64")],
    "series": [("series_id", "UInt128"), ("metric_name", "LowCardinality(String)"),
               ("labels", "Map(LowCardinality(String), String)")],
    "metadata": [("metric_family_name", "String"), ("type", "LowCardinality(String)"),
                 ("help", "String"), ("unit", "String"), ("updated_at", "DateTime64(3)")],
    "samples_labeled": [("series_id", "UInt128"), ("metric_name", "LowCardinality(String)"),
                        ("labels", "Map(LowCardinality(String), String)"),
                        ("timestamp", "Int64"), ("value", "Float64")],
}


@functools.lru_cache(maxsize=8)
def _templates(database: str) -> dict[str, exp.Expression]:
    # database is validated as an identifier when the configuration loads.
    return {name: exp.maybe_parse(sql.replace("{db}", database), dialect=GatewayClickHouse)
            for name, sql in RELATIONS.items()}


@dataclass
class Scoped:
    """What the rewrite put into a query, for verify.py to hold ClickHouse's parse to."""

    #: qualified stored table (``gob.samples``) -> how many times the query now reads it.
    stored_tables: Counter[str] = field(default_factory=Counter)
    #: the renamed CTEs (``gob_cte_1``, ...).
    ctes: set[str] = field(default_factory=set)


def scope_to_tenant(tree: exp.Expression, database: str, text: str) -> Scoped:
    """Rewrite every relation reference of ``tree`` (in place) into its tenant subquery.

    Raises QueryRejected for a table that is neither a relation nor a CTE in scope.
    ``text`` is the original query, for error positions.
    """
    scoper = _Scoper(_templates(database), text)
    scoper.visit(tree, {})
    return scoper.scoped


class _Scoper:
    def __init__(self, templates: dict[str, exp.Expression], text: str) -> None:
        self.templates = templates
        self.text = text
        self.scoped = Scoped()

    def visit(self, node: exp.Expression, scope: dict[str, str]) -> None:
        if isinstance(node, exp.Table):
            self.table(node, scope)
            return
        with_ = node.args.get("with_")
        if isinstance(with_, exp.With):
            scope = dict(scope)
            for cte in with_.expressions:
                # A CTE's body sees the CTEs before it, not itself (ClickHouse's WITH is not
                # recursive: inside its own body the name is the table).
                self.visit(cte.this, scope)
                if not cte.args.get("scalar"):  # WITH <expr> AS x is an expression alias
                    new = f"{_CTE_PREFIX}{len(self.scoped.ctes) + 1}"
                    self.scoped.ctes.add(new)
                    scope[cte.alias] = new
                    cte.set("alias", exp.TableAlias(this=exp.to_identifier(new)))
        for child in list(node.iter_expressions()):
            if child is not with_:
                self.visit(child, scope)

    def table(self, node: exp.Table, scope: dict[str, str]) -> None:
        if isinstance(node.this, exp.Func):  # numbers(...), bounded by validate
            return
        if node.args.get("db") or node.args.get("catalog"):
            raise reject_at(f"table {node.sql(dialect=GatewayClickHouse)} is not allowed: "
                          f"only {_known()} (without a database)", node, self.text)
        name = node.name
        alias = node.args.get("alias")
        alias_ident = alias.this.copy() if isinstance(alias, exp.TableAlias) else node.this.copy()
        target: exp.Expression = node.parent if isinstance(node.parent, exp.Final) else node
        if name in scope:
            replacement: exp.Expression = exp.Table(
                this=exp.to_identifier(scope[name]), alias=exp.TableAlias(this=alias_ident))
        elif name in self.templates:
            template = self.templates[name]
            replacement = exp.Subquery(this=template.copy(),
                                       alias=exp.TableAlias(this=alias_ident))
            for stored in template.find_all(exp.Table):
                self.scoped.stored_tables[f"{stored.db}.{stored.name}"] += 1
        else:
            raise reject_at(f"unknown relation {name!r}: the relations are {_known()}", node,
                          self.text)
        target.replace(replacement)


def _known() -> str:
    return ", ".join(RELATIONS)


__all__ = ["COLUMNS", "RELATIONS", "TENANT_PARAM", "QueryRejected", "scope_to_tenant"]
