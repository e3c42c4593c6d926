"""Queries behind the Prometheus metadata API: series, label names, label values and
metric metadata of one tenant, as SQL with bound parameters.

Series come from the ``series`` table (one row per series_id taken, as it may hold a
series twice). When the request names a time range, a series counts only if it has a
sample in that range, as in Prometheus: the check is a semi-join on ``samples`` whose
candidate ids are the matching series, so the primary key (tenant, series_id, timestamp)
limits it to those series' granules in the range's day partitions. Without match[] it
reads the series_id column of every sample in the range: the price of an exact answer.

A selector whose series ids the label-lookup cache gave (``SeriesQuery.ids``) is matched
by those ids (``select.ids_condition``) instead of scanning ``series`` with its matchers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gob_metrics.read.matchers import METRIC_NAME, Matcher
from gob_metrics.read.select import ids_condition, series_condition
from gob_metrics.storage import schema
from gob_metrics.storage.base import Storage


@dataclass(frozen=True)
class SeriesQuery:
    """Which series of a tenant: the union of selectors (none = every series) with
    samples in [start_ms, end_ms] when a bound is given."""

    tenant: str
    selectors: Sequence[Sequence[Matcher]] = ()
    start_ms: int | None = None
    end_ms: int | None = None
    #: per selector, its series ids from the lookup cache, or None (match in SQL).
    ids: Sequence[Sequence[bytes] | None] = ()


def _selector_condition(q: SeriesQuery, j: int, params: dict[str, Any]) -> str:
    ms = q.selectors[j]
    ids = q.ids[j] if j < len(q.ids) else None
    if ids is None:
        return series_condition(ms, params, prefix=f"s{j}m")
    if not ids:
        return "0"
    return ids_condition(ms, ids, params, key=f"s{j}ids")


def _condition(q: SeriesQuery, params: dict[str, Any]) -> str:
    if not q.selectors:
        return "1"
    return " OR ".join(f"({_selector_condition(q, j, params)})"
                       for j in range(len(q.selectors)))


def series_source(storage: Storage, q: SeriesQuery) -> tuple[str, dict[str, Any]]:
    """A subquery of (series_id, metric_name, labels), one row per selected series."""
    db = storage.database
    params: dict[str, Any] = {"tenant": q.tenant}
    cond = _condition(q, params)
    where = f"tenant = {{tenant:String}} AND ({cond})"
    if q.start_ms is not None or q.end_ms is not None:
        params["start"] = q.start_ms if q.start_ms is not None else -(2**63)
        params["end"] = q.end_ms if q.end_ms is not None else 2**63 - 1
        candidates = ("" if not q.selectors else
                      f" AND series_id IN (SELECT series_id FROM {db}.{schema.SERIES} "
                      f"WHERE {where})")
        where += (f" AND series_id IN (SELECT series_id FROM {db}.{schema.SAMPLES} "
                  "WHERE tenant = {tenant:String} AND timestamp >= {start:Int64} "
                  f"AND timestamp <= {{end:Int64}}{candidates})")
    sql = (f"(SELECT series_id, metric_name, labels FROM {db}.{schema.SERIES} "
           f"WHERE {where} LIMIT 1 BY series_id)")
    return sql, params


async def find_series(storage: Storage, q: SeriesQuery, cap: int) -> list[dict[str, str]]:
    """Label sets of the selected series, sorted by labels, at most ``cap`` of them."""
    src, params = series_source(storage, q)
    params["cap"] = cap
    table = await storage.query(
        "SELECT metric_name, labels FROM " + src + " ORDER BY arraySort(arrayPushFront("
        "CAST(labels, 'Array(Tuple(String, String))'), ('__name__', metric_name))) "
        "LIMIT {cap:UInt64}", params)
    out = []
    for name, labels in zip(table.column("metric_name").to_pylist(),
                            table.column("labels").to_pylist(), strict=True):
        out.append(dict(sorted([(METRIC_NAME, name), *labels])))
    return out


async def label_names(storage: Storage, q: SeriesQuery, cap: int) -> list[str]:
    """Sorted distinct label names (``__name__`` included) of the selected series."""
    src, params = series_source(storage, q)
    params["cap"] = cap
    table = await storage.query(
        "SELECT DISTINCT arrayJoin(arrayPushFront(mapKeys(labels), '__name__')) AS name "
        f"FROM {src} ORDER BY name LIMIT {{cap:UInt64}}", params)
    return [str(n) for n in table.column("name").to_pylist()]


async def label_values(storage: Storage, q: SeriesQuery, name: str, cap: int) -> list[str]:
    """Sorted distinct non-empty values of label ``name`` over the selected series."""
    src, params = series_source(storage, q)
    params["cap"] = cap
    if name == METRIC_NAME:
        sql = (f"SELECT DISTINCT metric_name AS v FROM {src} "
               "ORDER BY v LIMIT {cap:UInt64}")
    else:
        params["label"] = name
        sql = (f"SELECT DISTINCT labels[{{label:String}}] AS v FROM {src} "
               "WHERE mapContains(labels, {label:String}) ORDER BY v LIMIT {cap:UInt64}")
    table = await storage.query(sql, params)
    return [str(v) for v in table.column("v").to_pylist()]


async def metric_metadata(storage: Storage, tenant: str, metric: str | None
                          ) -> list[tuple[str, str, str, str]]:
    """Distinct (metric, type, help, unit) of a tenant, by metric, newest first."""
    params: dict[str, Any] = {"tenant": tenant}
    where = "tenant = {tenant:String}"
    if metric:
        params["metric"] = metric
        where += " AND metric_family_name = {metric:String}"
    table = await storage.query(
        "SELECT metric_family_name AS metric, type AS mtype, help AS mhelp, unit AS munit, "
        f"max(updated_at) AS updated FROM {storage.database}.{schema.METADATA} "
        f"WHERE {where} GROUP BY metric, mtype, mhelp, munit "
        "ORDER BY metric, updated DESC, mtype, mhelp, munit", params)
    return list(zip(*(table.column(c).to_pylist() for c in ("metric", "mtype", "mhelp", "munit")),
                    strict=True))
