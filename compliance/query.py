"""Run a range or instant query against a Prometheus-compatible HTTP API and decode the
answer.

Requests are what client_golang's ``QueryRange`` and ``Query`` send (POST form ``query``,
``start``, ``end``, ``step``; ``query``, ``time``); errors are reported with the text that
client would give, because the tester's *unsupported* rule looks for ``501`` in it.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import aiohttp

from compliance.compare import Answer, QueryError, QueryResult, Series

# Status codes with which the Prometheus API answers its own JSON errors; any other
# non-2xx is reported by client_golang as "client error: <code>" / "server error: <code>".
_API_ERROR_CODES = {400, 422, 503}


def _ms(ts: Any) -> int:
    """A JSON timestamp (seconds, up to ms precision) as integer ms, truncated like
    prometheus/common ``model.Time`` does."""
    return int(Decimal(str(ts)) * 1000)


def _series(item: dict[str, Any]) -> Series:
    points = [(_ms(t), float(v)) for t, v in item.get("values") or ()]
    return Series(dict(item.get("metric") or {}), points)


def decode(status: int, body: bytes) -> Answer:
    """Turn an HTTP answer of /api/v1/query_range or /api/v1/query into a result or an
    error."""
    try:
        doc = json.loads(body, parse_float=Decimal)
    except ValueError:
        doc = None
    if status // 100 != 2 and status not in _API_ERROR_CODES:
        kind = "server" if status >= 500 else "client"
        excerpt = body[:300].decode(errors="replace").strip()
        return QueryError(f"{kind}_error: {kind} error: {status}: {excerpt}")
    if not isinstance(doc, dict):
        return QueryError(f"bad_response: HTTP {status}: not a JSON object: {body[:200]!r}")
    if doc.get("status") != "success":
        return QueryError(f"{doc.get('errorType', 'unknown')}: {doc.get('error', '')}")
    data = doc.get("data") or {}
    rtype, result = data.get("resultType"), data.get("result")
    warnings = tuple(str(w) for w in doc.get("warnings") or ())
    try:
        if result is None:
            return QueryResult(str(rtype), None, warnings)
        if rtype == "matrix":
            return QueryResult(rtype, [_series(item) for item in result], warnings)
        if rtype == "vector":
            return QueryResult(rtype, [
                Series(dict(item.get("metric") or {}),
                       [(_ms(item["value"][0]), float(item["value"][1]))]) for item in result],
                warnings)
        if rtype == "scalar":
            return QueryResult(rtype, [Series({}, [(_ms(result[0]), float(result[1]))])],
                               warnings)
        if rtype == "string":
            return QueryResult(rtype, [Series({}, [(_ms(result[0]), float("nan"))])],
                               warnings, string_value=str(result[1]))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        return QueryError(f"bad_response: cannot decode {rtype} result: {exc}")
    return QueryError(f"bad_response: unknown resultType {rtype!r}")


async def _post(session: aiohttp.ClientSession, url: str, form: dict[str, str]) -> Answer:
    """POST a form and decode; transport failures become a QueryError too."""
    try:
        async with session.post(url, data=form) as resp:
            return decode(resp.status, await resp.read())
    except (TimeoutError, aiohttp.ClientError) as exc:
        return QueryError(f"request failed: {type(exc).__name__}: {exc}")


async def query_range(session: aiohttp.ClientSession, base_url: str, query: str, *,
                      start: Decimal, end: Decimal, step: Decimal) -> Answer:
    """POST /api/v1/query_range."""
    form = {"query": query, "start": str(start), "end": str(end), "step": str(step)}
    return await _post(session, base_url.rstrip("/") + "/api/v1/query_range", form)


async def query_instant(session: aiohttp.ClientSession, base_url: str, query: str, *,
                        time: Decimal) -> Answer:
    """POST /api/v1/query at ``time`` (Unix seconds)."""
    form = {"query": query, "time": str(time)}
    return await _post(session, base_url.rstrip("/") + "/api/v1/query", form)
