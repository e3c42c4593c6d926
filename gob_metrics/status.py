"""GET /api/v1/status/tsdb: cardinality statistics in Prometheus' JSON shape, answered
from the series table (and the samples' time range)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gob_metrics.errors import BadRequest
from gob_metrics.keys import STORAGE
from gob_metrics.storage import schema
from gob_metrics.storage.base import Storage
from gob_metrics.tenancy import request_tenant

_MAX_LIMIT = 10_000

# Distinct series of one tenant: the series table may hold a re-registered series twice
# until ReplacingMergeTree merges, so every statistic reads through this.
_SERIES = ("(SELECT series_id, metric_name, labels FROM {db}.{series} "
           "WHERE tenant = {{tenant:String}} LIMIT 1 BY series_id)")


def _pairs(table: Any, name_col: str, value_col: str) -> list[dict[str, Any]]:
    return [{"name": n, "value": int(v)} for n, v in
            zip(table.column(name_col).to_pylist(), table.column(value_col).to_pylist(),
                strict=True)]


async def tsdb_stats(storage: Storage, tenant: str, limit: int) -> dict[str, Any]:
    db = storage.database
    src = _SERIES.format(db=db, series=schema.SERIES)
    p = {"tenant": tenant, "limit": limit}
    head = await storage.query(
        f"SELECT count() AS n FROM {src}", p)
    times = await storage.query(
        f"SELECT count() AS c, min(timestamp) AS lo, max(timestamp) AS hi "
        f"FROM {db}.{schema.SAMPLES} WHERE tenant = {{tenant:String}}", p)
    by_metric = await storage.query(
        f"SELECT metric_name AS name, count() AS value FROM {src} GROUP BY name "
        f"ORDER BY value DESC, name LIMIT {{limit:UInt32}}", p)
    # Label pairs including __name__, which the series table keeps in metric_name.
    pairs_src = (f"(SELECT series_id, arrayJoin(arrayPushFront(CAST(labels, 'Array(Tuple("
                 f"String, String))'), ('__name__', metric_name))) AS kv FROM {src})")
    by_pair = await storage.query(
        f"SELECT concat(kv.1, '=', kv.2) AS name, count() AS value FROM {pairs_src} "
        f"GROUP BY name ORDER BY value DESC, name LIMIT {{limit:UInt32}}", p)
    by_name = await storage.query(
        f"SELECT kv.1 AS name, count() AS value FROM (SELECT DISTINCT kv FROM {pairs_src}) "
        f"GROUP BY name ORDER BY value DESC, name LIMIT {{limit:UInt32}}", p)
    mem = await storage.query(
        f"SELECT kv.1 AS name, sum(length(kv.2)) AS value "
        f"FROM (SELECT DISTINCT kv FROM {pairs_src}) "
        f"GROUP BY name ORDER BY value DESC, name LIMIT {{limit:UInt32}}", p)
    num_pairs = await storage.query(
        f"SELECT uniqExact(kv) AS n FROM {pairs_src}", p)
    has_samples = times.column("c")[0].as_py() > 0
    return {
        "headStats": {
            "numSeries": int(head.column("n")[0].as_py()),
            "numLabelPairs": int(num_pairs.column("n")[0].as_py()),
            "chunkCount": 0,
            # Prometheus reports an empty head as MaxInt64 / MinInt64.
            "minTime": int(times.column("lo")[0].as_py()) if has_samples else 2**63 - 1,
            "maxTime": int(times.column("hi")[0].as_py()) if has_samples else -(2**63),
        },
        "seriesCountByMetricName": _pairs(by_metric, "name", "value"),
        "labelValueCountByLabelName": _pairs(by_name, "name", "value"),
        "memoryInBytesByLabelName": _pairs(mem, "name", "value"),
        "seriesCountByLabelValuePair": _pairs(by_pair, "name", "value"),
    }


def parse_limit(text: str | None) -> int:
    if text is None or text == "":
        return 10
    try:
        limit = int(text)
    except ValueError:
        raise BadRequest(f"invalid limit {text!r}: expected an integer") from None
    if not 1 <= limit <= _MAX_LIMIT:
        raise BadRequest(f"invalid limit {limit}: expected 1..{_MAX_LIMIT}")
    return limit


async def tsdb_status_handler(request: web.Request) -> web.Response:
    limit = parse_limit(request.query.get("limit"))
    tenant = request_tenant(request)
    data = await tsdb_stats(request.app[STORAGE], tenant, limit)
    return web.json_response({"status": "success", "data": data})
